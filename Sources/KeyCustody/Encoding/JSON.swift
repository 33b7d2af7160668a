/// A JSON value as the vault's formats use it: integers only (no fractions or exponents), strings, arrays, objects.
///
/// `secret` is a base64 string whose decoded bytes are key material: the parser produces it for the member names it
/// is told are secret, decoding straight into `SecureBytes`, and the canonical writer writes it back as base64
/// without the bytes ever living in an ordinary `String`.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case integer(Int64)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
    case secret(SecureBytes)

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var integerValue: Int64? { if case .integer(let i) = self { return i } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o } else { return nil } }
}

// MARK: - Canonical writer

/// Where canonical JSON bytes go.
public protocol JSONSink {
    mutating func append(_ bytes: UnsafeRawBufferPointer)
    /// Appends the base64 of secret bytes (a sink that only counts need not encode them).
    mutating func appendBase64(secret: SecureBytes)
}

extension JSONSink {
    public mutating func appendBase64(secret: SecureBytes) { Base64.encode(secret: secret, to: &self) }
    mutating func append(_ byte: UInt8) { withUnsafeBytes(of: byte) { append($0) } }
    mutating func append(_ text: StaticString) {
        append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }
}

/// Collects bytes in an ordinary array (for JSON without secrets).
public struct ByteArraySink: JSONSink {
    public var bytes: [UInt8] = []
    public init() {}
    public mutating func append(_ bytes: UnsafeRawBufferPointer) { self.bytes.append(contentsOf: bytes) }
}

/// Counts bytes without storing them (first pass of writing secret-bearing JSON into secure memory).
struct CountingSink: JSONSink {
    var count = 0
    mutating func append(_ bytes: UnsafeRawBufferPointer) { count += bytes.count }
    mutating func appendBase64(secret: SecureBytes) { count += Base64.encodedLength(secret.count) }
}

/// Writes into a preallocated buffer (second pass, into `SecureBytes`).
struct BufferSink: JSONSink {
    let buffer: UnsafeMutableRawBufferPointer
    var offset = 0
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        precondition(offset + bytes.count <= buffer.count, "BufferSink overflow")
        if let base = bytes.baseAddress, bytes.count > 0 {
            buffer.baseAddress!.advanced(by: offset).copyMemory(from: base, byteCount: bytes.count)
        }
        offset += bytes.count
    }
}

extension JSONValue {
    /// The canonical form: object keys sorted by UTF-16 code units, no insignificant whitespace, minimal string
    /// escapes (as RFC 8785 / ECMAScript `JSON.stringify`). Must not contain `secret` values.
    public func canonicalBytes() -> [UInt8] {
        var sink = ByteArraySink()
        writeCanonical(to: &sink)
        return sink.bytes
    }

    public var canonicalString: String { String(decoding: canonicalBytes(), as: UTF8.self) }

    /// The canonical form written into secure memory; `secret` values appear as base64.
    public func canonicalSecureBytes() -> SecureBytes {
        var counter = CountingSink()
        writeCanonical(to: &counter)
        return SecureBytes(count: counter.count) { buffer in
            var sink = BufferSink(buffer: buffer)
            writeCanonical(to: &sink)
        }
    }

    public func writeCanonical<Sink: JSONSink>(to sink: inout Sink) {
        switch self {
        case .null: sink.append("null")
        case .bool(let value): value ? sink.append("true") : sink.append("false")
        case .integer(let value):
            var text = String(value)
            text.withUTF8 { sink.append(UnsafeRawBufferPointer($0)) }
        case .string(let value): Self.writeString(value, to: &sink)
        case .secret(let bytes):
            sink.append(UInt8(ascii: "\""))
            sink.appendBase64(secret: bytes)
            sink.append(UInt8(ascii: "\""))
        case .array(let values):
            sink.append(UInt8(ascii: "["))
            for (index, value) in values.enumerated() {
                if index > 0 { sink.append(UInt8(ascii: ",")) }
                value.writeCanonical(to: &sink)
            }
            sink.append(UInt8(ascii: "]"))
        case .object(let members):
            sink.append(UInt8(ascii: "{"))
            for (index, key) in Self.canonicalOrder(members.keys).enumerated() {
                if index > 0 { sink.append(UInt8(ascii: ",")) }
                Self.writeString(key, to: &sink)
                sink.append(UInt8(ascii: ":"))
                members[key]!.writeCanonical(to: &sink)
            }
            sink.append(UInt8(ascii: "}"))
        }
    }

    private static let hexDigits: StaticString = "0123456789abcdef"

    /// Writes `value` quoted, escaping only what must be: runs of bytes that need no escape (nearly all of them) go
    /// to the sink as they are, without a copy.
    static func writeString<Sink: JSONSink>(_ value: String, to sink: inout Sink) {
        sink.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            let all = UnsafeRawBufferPointer(utf8)
            var start = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                if index > start { sink.append(UnsafeRawBufferPointer(rebasing: all[start..<index])) }
                start = index + 1
                switch byte {
                case UInt8(ascii: "\""): sink.append("\\\"")
                case UInt8(ascii: "\\"): sink.append("\\\\")
                case 0x08: sink.append("\\b")
                case 0x0C: sink.append("\\f")
                case 0x0A: sink.append("\\n")
                case 0x0D: sink.append("\\r")
                case 0x09: sink.append("\\t")
                default:
                    sink.append("\\u00")
                    hexDigits.withUTF8Buffer { digits in
                        sink.append(digits[Int(byte >> 4)])
                        sink.append(digits[Int(byte & 0xF)])
                    }
                }
            }
            if utf8.count > start { sink.append(UnsafeRawBufferPointer(rebasing: all[start..<utf8.count])) }
        }
        sink.append(UInt8(ascii: "\""))
    }

    /// Object keys in canonical order: by UTF-16 code units, which for keys of ASCII alone (all of the vault's own)
    /// is the order of their bytes, compared without decoding.
    static func canonicalOrder(_ keys: some Collection<String>) -> [String] {
        if keys.allSatisfy({ $0.utf8.allSatisfy { $0 < 0x80 } }) {
            return keys.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        }
        return keys.sorted { $0.utf16.lexicographicallyPrecedes($1.utf16) }
    }
}

// MARK: - Parser

/// A strict RFC 8259 parser: no trailing data, no duplicate keys, no unescaped control characters, valid UTF-8,
/// bounded nesting; numbers must be integers that fit in 64 bits.
public struct JSONParser {
    private let bytes: UnsafeRawBufferPointer
    private var index = 0
    private let secretMembers: Set<String>
    private let maximumDepth: Int

    private init(bytes: UnsafeRawBufferPointer, secretMembers: Set<String>, maximumDepth: Int) {
        self.bytes = bytes
        self.secretMembers = secretMembers
        self.maximumDepth = maximumDepth
    }

    /// Parses one JSON document. Members named in `secretMembers` must hold base64 strings and come back as
    /// `.secret`.
    public static func parse(
        _ bytes: UnsafeRawBufferPointer, secretMembers: Set<String> = [], maximumDepth: Int = 32
    ) throws -> JSONValue {
        var parser = JSONParser(bytes: bytes, secretMembers: secretMembers, maximumDepth: maximumDepth)
        parser.skipWhitespace()
        let value = try parser.parseValue(depth: 0, memberName: nil)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw parser.error("unexpected data after the JSON value") }
        return value
    }

    public static func parse(_ bytes: [UInt8], secretMembers: Set<String> = []) throws -> JSONValue {
        try bytes.withUnsafeBytes { try parse($0, secretMembers: secretMembers) }
    }

    public static func parse(_ text: String) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { try parse(UnsafeRawBufferPointer($0)) }
    }

    private func error(_ reason: String) -> CustodyError {
        CustodyError(.malformedEncoding, "invalid JSON at byte \(index): \(reason)")
    }

    private var atEnd: Bool { index >= bytes.count }
    private var current: UInt8 { bytes[index] }

    private mutating func skipWhitespace() {
        while !atEnd, current == 0x20 || current == 0x0A || current == 0x0D || current == 0x09 { index += 1 }
    }

    private mutating func expect(_ literal: StaticString) throws {
        let text = UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount)
        guard index + text.count <= bytes.count,
            UnsafeRawBufferPointer(rebasing: bytes[index..<index + text.count]).elementsEqual(text)
        else { throw error("expected \(literal)") }
        index += text.count
    }

    private mutating func parseValue(depth: Int, memberName: String?) throws -> JSONValue {
        guard !atEnd else { throw error("unexpected end of input (truncated?)") }
        switch current {
        case UInt8(ascii: "{"):
            return try parseObject(depth: depth + 1)
        case UInt8(ascii: "["):
            return try parseArray(depth: depth + 1)
        case UInt8(ascii: "\""):
            if let memberName, secretMembers.contains(memberName) { return try parseSecret() }
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try parseInteger()
        default:
            throw error("unexpected character")
        }
    }

    private mutating func parseObject(depth: Int) throws -> JSONValue {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if !atEnd, current == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            guard !atEnd, current == UInt8(ascii: "\"") else { throw error("expected a member name") }
            let key = try parseString()
            skipWhitespace()
            guard !atEnd, current == UInt8(ascii: ":") else { throw error("expected ':'") }
            index += 1
            skipWhitespace()
            let value = try parseValue(depth: depth, memberName: key)
            guard members.updateValue(value, forKey: key) == nil else { throw error("duplicate member \"\(key)\"") }
            skipWhitespace()
            guard !atEnd else { throw error("unexpected end of input (truncated?)") }
            if current == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard current == UInt8(ascii: "}") else { throw error("expected ',' or '}'") }
            index += 1
            return .object(members)
        }
    }

    private mutating func parseArray(depth: Int) throws -> JSONValue {
        guard depth <= maximumDepth else { throw error("nesting deeper than \(maximumDepth)") }
        index += 1
        var values: [JSONValue] = []
        skipWhitespace()
        if !atEnd, current == UInt8(ascii: "]") {
            index += 1
            return .array(values)
        }
        while true {
            skipWhitespace()
            values.append(try parseValue(depth: depth, memberName: nil))
            skipWhitespace()
            guard !atEnd else { throw error("unexpected end of input (truncated?)") }
            if current == UInt8(ascii: ",") {
                index += 1
                continue
            }
            guard current == UInt8(ascii: "]") else { throw error("expected ',' or ']'") }
            index += 1
            return .array(values)
        }
    }

    private mutating func parseInteger() throws -> JSONValue {
        let start = index
        if current == UInt8(ascii: "-") { index += 1 }
        guard !atEnd, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(current) else { throw error("bad number") }
        if current == UInt8(ascii: "0") {
            index += 1
        } else {
            while !atEnd, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(current) { index += 1 }
        }
        if !atEnd, current == UInt8(ascii: ".") || current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
            throw error("only integers are used in vault formats")
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let value = Int64(text) else { throw error("integer out of range") }
        return .integer(value)
    }

    private mutating func parseString() throws -> String {
        index += 1
        var output: [UInt8] = []
        while true {
            guard !atEnd else { throw error("unterminated string (truncated?)") }
            let byte = current
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                guard let string = String(validating: output, as: UTF8.self) else {
                    throw error("string is not valid UTF-8")
                }
                return string
            case UInt8(ascii: "\\"):
                guard !atEnd else { throw error("unterminated escape") }
                let escape = current
                index += 1
                switch escape {
                case UInt8(ascii: "\""): output.append(0x22)
                case UInt8(ascii: "\\"): output.append(0x5C)
                case UInt8(ascii: "/"): output.append(0x2F)
                case UInt8(ascii: "b"): output.append(0x08)
                case UInt8(ascii: "f"): output.append(0x0C)
                case UInt8(ascii: "n"): output.append(0x0A)
                case UInt8(ascii: "r"): output.append(0x0D)
                case UInt8(ascii: "t"): output.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try parseHex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        try expect("\\u")
                        let low = try parseHex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw error("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        throw error("unpaired surrogate")
                    }
                    output.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
                default:
                    throw error("invalid escape")
                }
            case 0x00..<0x20:
                throw error("unescaped control character in string")
            default:
                output.append(byte)
            }
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = current
            index += 1
            let digit: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("bad \\u escape")
            }
            value = value << 4 | digit
        }
        return value
    }

    /// A secret member: the base64 text is decoded in place into secure memory. Escapes are not allowed there.
    private mutating func parseSecret() throws -> JSONValue {
        index += 1
        let start = index
        while !atEnd, current != UInt8(ascii: "\"") {
            guard current != UInt8(ascii: "\\") else { throw error("escape inside a key field") }
            index += 1
        }
        guard !atEnd else { throw error("unterminated string (truncated?)") }
        let text = UnsafeRawBufferPointer(rebasing: bytes[start..<index])
        index += 1
        guard let secret = Base64.decodeSecret(text) else { throw error("key field is not padded base64") }
        return .secret(secret)
    }
}

// MARK: - Field access with precise errors

/// Reads the members of a JSON object, naming the field and the document in every error.
public struct JSONFields {
    public let members: [String: JSONValue]
    public let context: String

    public init(_ value: JSONValue, context: String) throws {
        guard case .object(let members) = value else {
            throw CustodyError(.malformedEncoding, "\(context) is not a JSON object")
        }
        self.members = members
        self.context = context
    }

    private func missing(_ key: String, _ type: String) -> CustodyError {
        members[key] == nil
            ? CustodyError(.malformedEncoding, "\(context): field \"\(key)\" is missing")
            : CustodyError(.malformedEncoding, "\(context): field \"\(key)\" must be \(type)")
    }

    public func string(_ key: String) throws -> String {
        guard let value = members[key]?.stringValue else { throw missing(key, "a string") }
        return value
    }

    public func integer(_ key: String) throws -> Int64 {
        guard let value = members[key]?.integerValue else { throw missing(key, "an integer") }
        return value
    }

    public func object(_ key: String) throws -> JSONFields {
        guard let value = members[key], case .object = value else { throw missing(key, "an object") }
        return try JSONFields(value, context: "\(context).\(key)")
    }

    public func array(_ key: String) throws -> [JSONValue] {
        guard let value = members[key]?.arrayValue else { throw missing(key, "an array") }
        return value
    }

    public func base64(_ key: String) throws -> [UInt8] {
        guard let bytes = Base64.decode(try string(key)) else {
            throw CustodyError(.malformedEncoding, "\(context): field \"\(key)\" is not padded base64")
        }
        return bytes
    }

    public func secret(_ key: String) throws -> SecureBytes {
        guard let value = members[key], case .secret(let bytes) = value else { throw missing(key, "base64 key bytes") }
        return bytes
    }
}
