/// Ids of forces, datasets and use cases: `^[a-z0-9][a-z0-9-]{1,62}$` (DESIGN section 5).
///
/// Validated on construction, so a value of this type is always safe to put in a path, a KEK id or an AAD.
public struct ResourceID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: String

    /// The kind of id, named in error messages ("force id", "dataset id", "use case id").
    public init(_ rawValue: String, kind: String = "id") throws {
        guard Self.isValid(rawValue) else {
            throw CustodyError(
                .invalidIdentifier,
                "invalid \(kind) \(Self.quoted(rawValue)): use 2 to 63 characters of a-z, 0-9 and '-', "
                    + "starting with a letter or digit")
        }
        self.rawValue = rawValue
    }

    public static func isValid(_ text: String) -> Bool {
        let utf8 = Array(text.utf8)
        guard (2...63).contains(utf8.count) else { return false }
        for (index, c) in utf8.enumerated() {
            let alnum = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(c)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c)
            if index == 0 { guard alnum else { return false } } else { guard alnum || c == UInt8(ascii: "-") else { return false } }
        }
        return true
    }

    /// Shows an invalid id safely in a message: printable ASCII only, at most 80 characters.
    static func quoted(_ text: String) -> String {
        var shown = ""
        for scalar in text.unicodeScalars.prefix(80) {
            shown += (0x20..<0x7F).contains(scalar.value) && scalar != "\"" ? String(scalar) : "?"
        }
        if text.unicodeScalars.count > 80 { shown += "..." }
        return "\"\(shown)\""
    }

    public var description: String { rawValue }
    public static func < (lhs: ResourceID, rhs: ResourceID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A force (tenant) id.
public typealias ForceID = ResourceID
/// A dataset id, unique within a force.
public typealias DatasetID = ResourceID

extension ResourceID {
    public init(force: String) throws { try self.init(force, kind: "force id") }
    public init(dataset: String) throws { try self.init(dataset, kind: "dataset id") }
}

/// An extract id: a 26-character ULID in upper-case Crockford base32 (48-bit millisecond time, 80 random bits).
public struct ExtractID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: String

    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    public init(_ rawValue: String) throws {
        let utf8 = Array(rawValue.utf8)
        guard utf8.count == 26, utf8.allSatisfy({ Self.alphabet.contains($0) }),
            utf8[0] <= UInt8(ascii: "7")
        else {
            throw CustodyError(
                .invalidIdentifier,
                "invalid extract id \(ResourceID.quoted(rawValue)): expected a 26-character ULID "
                    + "(upper-case Crockford base32)")
        }
        self.rawValue = rawValue
    }

    /// A new ULID for the current time.
    public static func generate(millisecondsSinceEpoch: UInt64 = currentMilliseconds()) -> ExtractID {
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: millisecondsSinceEpoch >> (8 * (5 - i))) }
        let random = SecureRandom.bytes(count: 10)
        bytes.replaceSubrange(6..<16, with: random)
        // 128 bits as 26 base32 digits: the first digit carries the top 3 bits.
        var text = [UInt8]()
        text.reserveCapacity(26)
        var value = (UInt64(0), UInt64(0))
        for i in 0..<8 { value.0 = value.0 << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { value.1 = value.1 << 8 | UInt64(bytes[i]) }
        for digit in 0..<26 {
            let shift = 125 - 5 * digit  // bit position of this digit's lowest bit in the 128-bit value
            let index: UInt64
            if shift >= 64 {
                index = (value.0 >> UInt64(shift - 64)) & 0x1F
            } else if shift > 59 {
                index = ((value.0 << UInt64(64 - shift)) | (value.1 >> UInt64(shift))) & 0x1F
            } else {
                index = (value.1 >> UInt64(shift)) & 0x1F
            }
            text.append(alphabet[Int(index)])
        }
        return try! ExtractID(String(decoding: text, as: UTF8.self))
    }

    public static func currentMilliseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1000 + UInt64(spec.tv_nsec) / 1_000_000
    }

    /// When the id was made: the ULID's 48-bit time, in milliseconds since the epoch (its first 10 characters).
    public var millisecondsSinceEpoch: UInt64 {
        rawValue.utf8.prefix(10).reduce(0) { value, digit in
            value << 5 | UInt64(Self.alphabet.firstIndex(of: digit) ?? 0)
        }
    }

    public var description: String { rawValue }
    public static func < (lhs: ExtractID, rhs: ExtractID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The id of a key-encryption key: `fmk:<force>:<version>` for a force master key version, `ak:<force>:<extract>`
/// for an archive key (DESIGN 5.2).
public enum KEKID: Hashable, Sendable, CustomStringConvertible, Comparable {
    case master(force: ForceID, version: Int)
    case archive(force: ForceID, extract: ExtractID)

    public init(_ text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        let invalid = CustodyError(
            .invalidIdentifier,
            "invalid KEK id \(ResourceID.quoted(text)): expected fmk:<force>:<version> or ak:<force>:<extract>")
        guard parts.count == 3 else { throw invalid }
        guard let force = try? ForceID(force: parts[1]) else { throw invalid }
        switch parts[0] {
        case "fmk":
            guard let version = Int(parts[2]), version >= 1, String(version) == parts[2] else { throw invalid }
            self = .master(force: force, version: version)
        case "ak":
            guard let extract = try? ExtractID(parts[2]) else { throw invalid }
            self = .archive(force: force, extract: extract)
        default:
            throw invalid
        }
    }

    public var force: ForceID {
        switch self {
        case .master(let force, _), .archive(let force, _): force
        }
    }

    public var isMaster: Bool { if case .master = self { return true } else { return false } }

    public var description: String {
        switch self {
        // Concatenation, not interpolation through each part's description: a keyring write names every key.
        case .master(let force, let version): "fmk:" + force.rawValue + ":" + String(version)
        case .archive(let force, let extract): "ak:" + force.rawValue + ":" + extract.rawValue
        }
    }

    public static func < (lhs: KEKID, rhs: KEKID) -> Bool {
        switch (lhs, rhs) {
        case (.master(_, let a), .master(_, let b)): a < b
        case (.master, .archive): true
        case (.archive, .master): false
        case (.archive(_, let a), .archive(_, let b)): a < b
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
