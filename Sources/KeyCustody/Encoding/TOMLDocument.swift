import TOMLKit

/// The vault's TOML files (vaultd.toml, the custody file, the S3 credentials file, the custody service's
/// configuration) through TOMLKit, with the malformed shapes its bundled parser cannot take refused first.
///
/// TOMLKit 0.6.0 bundles toml++ 3.4.0, which asserts preconditions its callers do not check: a table header whose key
/// does not start with a key character (`[=`, `[[ &`, `[` at the end of a line), a `}` or a non-ASCII line separator
/// where an array expects a value (`[}`, `[1, }`), and a local date followed by `T` and no hour (`1979-05-27T:`).
/// SwiftPM builds C++ dependencies without `NDEBUG` even in release builds, so each of these aborted vaultd, the CLI or
/// the custody service instead of naming the mistake (the first is marzer/tomlplusplus#294, fixed upstream by #301,
/// in no TOMLKit release yet). Found by the `config` fuzz target (scripts/fuzz.sh).
public enum TOMLDocument {
    /// Parses `text`; `invalid` words the error, which names the line or toml++'s position.
    public static func parse(_ text: String, invalid: (String) -> CustodyError) throws -> TOMLTable {
        if let problem = unparseableShape(in: text) {
            throw invalid("not valid TOML at line \(problem.line): \(problem.reason)")
        }
        do { return try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw invalid("not valid TOML \(error.source.debugDescription): \(error.description)")
        }
    }

    /// The first place (its line, from 1) where toml++ 3.4.0 would fail an assertion. Follows the parser's contexts as
    /// far as the document is valid TOML: past its first error toml++ stops, so what comes after cannot reach it, and
    /// a document flagged there is refused by toml++ anyway.
    static func unparseableShape(in text: String) -> (line: Int, reason: String)? {
        enum Context { case header, array, inlineTable }
        let bytes = Array(text.utf8)
        var stack: [Context] = []
        var line = 1
        var index = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        var statementStart = true  // only spaces and tabs since the last line break, outside any value
        var expectingValue = false  // after `=`, or after `[` or `,` in an array
        func byte(_ at: Int) -> UInt8? { at < bytes.count ? bytes[at] : nil }
        func isDigit(_ at: Int) -> Bool { byte(at).map { (0x30...0x39).contains($0) } ?? false }

        while index < bytes.count {
            let current = bytes[index]
            switch current {
            case 0x0A:
                line += 1
                if stack.isEmpty {
                    statementStart = true
                    expectingValue = false
                }
                index += 1
                continue
            case 0x20, 0x09, 0x0D:
                index += 1
                continue
            case UInt8(ascii: "#"):
                while index < bytes.count, bytes[index] != 0x0A { index += 1 }
                continue
            default:
                break
            }
            if statementStart, stack.isEmpty, current == UInt8(ascii: "[") {
                var next = index + 1
                if byte(next) == UInt8(ascii: "[") { next += 1 }
                while byte(next) == 0x20 || byte(next) == 0x09 { next += 1 }
                if let first = byte(next), !isKeyStart(first), first != UInt8(ascii: "]") {
                    return (line, "a table header starts with a key, as in [name] or [[name]]")
                }
                stack.append(.header)
                statementStart = false
                index += byte(index + 1) == UInt8(ascii: "[") ? 2 : 1
                continue
            }
            statementStart = false
            if expectingValue {
                expectingValue = false
                // U+0085, U+2028 and U+2029 end a value for toml++ without being a line break it skips.
                let lineSeparator = (current == 0xC2 && byte(index + 1) == 0x85)
                    || (current == 0xE2 && byte(index + 1) == 0x80 && [0xA8, 0xA9].contains(byte(index + 2)))
                if stack.last == .array, current == UInt8(ascii: "}") || lineSeparator {
                    return (line, "an array holds values separated by commas, not a '}' or a line separator")
                }
                if (0..<4).allSatisfy({ isDigit(index + $0) }), byte(index + 4) == UInt8(ascii: "-"),
                    isDigit(index + 5), isDigit(index + 6), byte(index + 7) == UInt8(ascii: "-"), isDigit(index + 8),
                    isDigit(index + 9), byte(index + 10) == UInt8(ascii: "T") || byte(index + 10) == UInt8(ascii: "t"),
                    !isDigit(index + 11)
                {
                    return (line, "a date followed by T is followed by a time, as in 1979-05-27T07:32:00Z")
                }
                if spaceSeparatedDateWithOneDigit(bytes, at: index) {
                    return (line, "a date followed by a space and a time has a 2-digit hour, as in 1979-05-27 07:32:00")
                }
            }
            switch current {
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                index = endOfString(bytes, from: index, line: &line)
                continue
            case UInt8(ascii: "="):
                expectingValue = stack.last != .array
            case UInt8(ascii: "["):
                stack.append(.array)
                expectingValue = true
            case UInt8(ascii: "{"):
                stack.append(.inlineTable)
            case UInt8(ascii: ","):
                expectingValue = stack.last == .array
            case UInt8(ascii: "]"):
                if stack.popLast() == .header, byte(index + 1) == UInt8(ascii: "]") { index += 1 }
            case UInt8(ascii: "}"):
                _ = stack.popLast()
            default:
                break
            }
            index += 1
        }
        return nil
    }

    /// A value of ten characters (underscores aside, as toml++ counts them) starting with a digit, with dashes at 4
    /// and 7, then a space, one digit and no second one: toml++ takes it for a date-time with a space before the time,
    /// looks for the time and asserts on the end of the value. Never valid TOML: only a date has that shape.
    static func spaceSeparatedDateWithOneDigit(_ bytes: [UInt8], at start: Int) -> Bool {
        var characters: [UInt8] = []  // the first byte of each character
        var index = start
        scan: while index < bytes.count {
            let current = bytes[index]
            switch current {
            case 0x20, 0x09, 0x0A, 0x0D, UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: ","), UInt8(ascii: "#"):
                break scan
            case UInt8(ascii: "_"), 0x80...0xBF:
                break
            default:
                characters.append(current)
            }
            index += 1
        }
        guard characters.count == 10, (0x30...0x39).contains(characters[0]), characters[4] == UInt8(ascii: "-"),
            characters[7] == UInt8(ascii: "-"), index + 1 < bytes.count, bytes[index] == 0x20,
            (0x30...0x39).contains(bytes[index + 1])
        else { return false }
        return index + 2 >= bytes.count || !(0x30...0x39).contains(bytes[index + 2])
    }

    /// A bare key character, or a quote that starts a quoted key.
    static func isKeyStart(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "\""),
            UInt8(ascii: "'"):
            return true
        default:
            return false
        }
    }

    /// The index just past the string that starts at `start` (basic or literal, single- or multi-line); a
    /// single-line string also ends at a line break, as toml++ refuses it there.
    static func endOfString(_ bytes: [UInt8], from start: Int, line: inout Int) -> Int {
        let quote = bytes[start]
        let basic = quote == UInt8(ascii: "\"")
        let multiLine = start + 2 < bytes.count && bytes[start + 1] == quote && bytes[start + 2] == quote
        var index = start + (multiLine ? 3 : 1)
        while index < bytes.count {
            let current = bytes[index]
            if basic, current == UInt8(ascii: "\\") {
                if index + 1 < bytes.count, bytes[index + 1] == 0x0A { line += 1 }
                index += 2
                continue
            }
            if current == 0x0A {
                guard multiLine else { return index }
                line += 1
            }
            if current == quote {
                guard multiLine else { return index + 1 }
                if index + 2 < bytes.count, bytes[index + 1] == quote, bytes[index + 2] == quote {
                    // Up to two more quotes belong to the string before the closing three.
                    var end = index + 3
                    while end < bytes.count, end < index + 5, bytes[end] == quote { end += 1 }
                    return end
                }
            }
            index += 1
        }
        return index
    }
}
