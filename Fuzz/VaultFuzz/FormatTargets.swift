import KeyCustody
import Vault

/// The small formats: the JSON parser itself, sealed file headers, wrapped keys and HTTP ranges.
enum FormatTargets {
    // MARK: JSON

    /// First byte: bit 0 parses `key` and `private_key` as secret members (as keyrings and principal key files
    /// are read), bit 1 takes the maximum depth from the other bits. The canonical writer's output must parse
    /// again to the same value and the same bytes, and the secure-memory writer must write exactly those bytes.
    static func json(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let mode = input.byte()
        let text = input.rest()
        let secrets: Set<String> = mode & 1 == 1 ? ["key", "private_key"] : []
        let depth = mode & 2 == 2 ? Int(mode >> 2) : 32
        func parse(_ bytes: [UInt8]) throws -> JSONValue {
            try bytes.withUnsafeBytes { try JSONParser.parse($0, secretMembers: secrets, maximumDepth: depth) }
        }
        let value = try? parse(text)
        if secrets.isEmpty, depth == 32, let string = String(validating: text, as: UTF8.self) {
            let fromString = try? JSONParser.parse(string)
            guard fromString == value else { violated("parsing the bytes and parsing the String disagree") }
        }
        guard let value else { return }
        let canonical = value.canonicalBytes()
        let secure = value.canonicalSecureBytes().withUnsafeBytes { Array($0) }
        guard secure == canonical else { violated("canonicalSecureBytes and canonicalBytes differ") }
        guard let again = try? parse(canonical) else {
            violated("canonical JSON does not parse again: \(String(decoding: canonical.prefix(200), as: UTF8.self))")
        }
        guard again == value, again.canonicalBytes() == canonical else {
            violated("canonical JSON does not survive a parse")
        }
        if canonical == text {
            // A canonical document has one spelling: its own.
            guard value.canonicalString.utf8.elementsEqual(text) else { violated("canonicalString differs") }
        }
    }

    // MARK: Sealed files

    /// The input is a sealed file (header line, newline, ciphertext). A header line that parses is its own canonical
    /// line and parses again to the same header; `SealedFile.readHeader` reading the file from disk agrees with
    /// parsing the first line.
    static func sealedFile(_ data: [UInt8]) {
        let newline = data.firstIndex(of: 0x0A)
        let line = Array(data[..<(newline ?? data.count)])
        let parsed = try? SealedFileHeader(line: line)
        if let header = parsed {
            guard header.line == line + [0x0A] else { violated("a header that parses is not its own canonical line") }
            guard (try? SealedFileHeader(line: Array(header.line.dropLast()))) == header else {
                violated("a header does not parse again from its own line")
            }
            guard header.wrappedKey.kek.force == header.identity.force else {
                violated("a header with a wrapped key of another force was accepted")
            }
            let maximumPlaintext = UInt64(1) << 52
            if header.plaintextSize < maximumPlaintext {
                guard (try? Cobblestone.plaintextSize(ciphertextSize: header.ciphertextSize)) == header.plaintextSize
                else { violated("the header's ciphertextSize does not invert") }
            }
        }
        let path = ScratchFile.shared.write(data)
        do {
            let file = try InputFile(path: path)
            let (header, length) = try SealedFile.readHeader(file)
            guard let newline, length == newline + 1, header == parsed else {
                violated("SealedFile.readHeader and SealedFileHeader(line:) disagree")
            }
        } catch {
            if parsed != nil, newline != nil { violated("readHeader refused a file whose first line parses: \(error)") }
        }
    }

    // MARK: Wrapped keys

    /// A table with one key of each kind and state, for the unwrap and rewrap checks.
    static let table: KeyTable = {
        let force = Fixtures.force
        let created = "2026-04-01T00:00:00Z"
        let states: [KeyState] = [.destroyed, .retired, .retiring, .active]
        let entries = states.enumerated().map { index, state in
            KeyInfo(id: .master(force: force, version: index + 1), kind: .master, state: state, created: created)
        } + [KeyInfo(id: .archive(force: force, extract: Fixtures.extract), kind: .archive, state: .active,
                     created: created)]
        return try! KeyTable(force: force, entries: entries) { CustodyError(.keyringInconsistent, $0) }
    }()

    /// First byte: which purpose and use case the unwrap claims. The rest is the wrapped key's JSON. One that parses
    /// has a canonical text equal to its canonical JSON, parses again from it, and binds the AAD of DESIGN 5.2.
    static func wrappedKey(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let mode = input.byte()
        guard let json = try? JSONParser.parse(input.rest()), let key = try? WrappedKey(json: json) else { return }
        guard key.canonicalText == key.json.canonicalString else {
            violated("WrappedKey.canonicalText differs from its canonical JSON")
        }
        guard let again = try? WrappedKey(json: JSONParser.parse(key.canonicalText)), again == key else {
            violated("a wrapped key does not parse again from its canonical text")
        }
        guard (try? KEKID(key.kek.description)) == key.kek else { violated("a KEK id does not parse again") }
        let context = WrapContext(force: key.kek.force, dataset: Fixtures.dataset, extract: Fixtures.extract)
        var aad = Array("vault.wrap.v1".utf8)
        let parts = [key.kek.description, key.kek.force.rawValue, Fixtures.dataset.rawValue, Fixtures.extract.rawValue]
        for part in parts {
            aad += [0] + Array(part.utf8)
        }
        guard context.additionalData(kek: key.kek) == aad else { violated("the wrap AAD is not DESIGN 5.2's") }
        let purposes = Justification.Purpose.allCases
        let justification = Justification(
            principal: "analyst-wmp", useCase: mode & 0x80 == 0 ? "serious-violence" : nil,
            purpose: purposes[Int(mode & 0x7F) % purposes.count], requestID: "fuzz")
        let allowed = (try? justification.check(unwrapUnder: key.kek)) != nil
        if allowed, key.kek.isMaster != [.useCaseRead, .export, .ingestVerification].contains(justification.purpose) {
            violated("purpose \(justification.purpose) may unwrap under \(key.kek)")
        }
        if let source = try? table.unwrapSource(key, context: context) {
            guard source.id == key.kek, source.state != .destroyed, key.kek.force == table.force else {
                violated("unwrapSource answered \(source.id) for \(key.kek)")
            }
        }
        if let target = try? table.wrapTarget(key.kek), target.state != .active {
            violated("wrapped under a non-active key")
        }
        let active = KEKID.master(force: key.kek.force, version: 4)
        _ = try? KeyTable.checkRewrapRoute(from: key.kek, to: active, context: context)
    }

    // MARK: HTTP ranges

    /// The first 8 bytes are the body size (at most Cobblestone's largest message), the rest the `Range` header.
    /// `ByteRange.parse` must agree with a byte-level reading of the one grammar vaultd accepts, its result must
    /// survive being spelled out again, and `resolve` must select a non-empty range inside the body.
    /// A form body the console reads: whatever parses re-encodes (every name and value escaped) to the same fields.
    static func consoleForm(_ data: [UInt8]) {
        guard let form = try? ConsoleForm(urlEncoded: data) else { return }
        let encoded = form.lists.flatMap { name, values in
            values.map { Console.queryEscape(name) + "=" + Console.queryEscape($0) }
        }.joined(separator: "&")
        guard let again = try? ConsoleForm(urlEncoded: Array(encoded.utf8)), again == form else {
            violated("the form \(form.lists) does not parse back from \(encoded.debugDescription)")
        }
    }

    static func byteRange(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let size = input.integer(UInt64.self) % ((UInt64(1) << 52) + 1)
        let header = String(decoding: input.rest(), as: UTF8.self)
        let range = ByteRange.parse(header)
        guard range == reference(Array(header.utf8)) else {
            violated("ByteRange.parse(\(header.debugDescription)) = \(String(describing: range)), the grammar says "
                        + "\(String(describing: reference(Array(header.utf8))))")
        }
        guard let range else { return }
        let spelled = switch range {
        case .closed(let a, let b): "bytes=\(a)-\(b)"
        case .from(let a): "bytes=\(a)-"
        case .suffix(let n): "bytes=-\(n)"
        }
        guard ByteRange.parse(spelled) == range else { violated("\(spelled) does not parse back to \(range)") }
        guard let resolved = range.resolve(size: size) else {
            switch range {
            case .closed(let a, _), .from(let a): if a < size { violated("\(range) of \(size) bytes is satisfiable") }
            case .suffix: if size > 0 { violated("\(range) of \(size) bytes is satisfiable") }
            }
            return
        }
        guard !resolved.isEmpty, resolved.upperBound <= size else {
            violated("\(range) of \(size) bytes resolved to \(resolved)")
        }
        let expected: Range<UInt64> = switch range {
        case .closed(let a, let b): a..<min(b + 1, size)
        case .from(let a): a..<size
        case .suffix(let n): (size - min(n, size))..<size
        }
        guard resolved == expected else { violated("\(range) of \(size) bytes resolved to \(resolved)") }
        // What the route then sends: Content-Length and Content-Range.
        _ = Int(resolved.count)
        _ = "bytes \(resolved.lowerBound)-\(resolved.upperBound - 1)/\(size)"
    }

    /// `bytes=` then `a-b`, `a-` or `-n` (n > 0), each number 1 to 19 ASCII digits, a <= b, at most 100 bytes.
    static func reference(_ bytes: [UInt8]) -> ByteRange? {
        let prefix = Array("bytes=".utf8)
        guard bytes.count <= 100, bytes.starts(with: prefix) else { return nil }
        let spec = bytes.dropFirst(prefix.count)
        guard let dash = spec.firstIndex(of: UInt8(ascii: "-")) else { return nil }
        func number(_ digits: ArraySlice<UInt8>) -> UInt64?? {
            if digits.isEmpty { return .some(nil) }
            guard digits.count <= 19, digits.allSatisfy({ (48...57).contains($0) }) else { return nil }
            return .some(digits.reduce(UInt64(0)) { $0 * 10 + UInt64($1 - 48) })
        }
        guard let first = number(spec[..<dash]), let last = number(spec[(dash + 1)...]) else { return nil }
        switch (first, last) {
        case (let a?, let b?): return a <= b ? .closed(a, b) : nil
        case (let a?, nil): return .from(a)
        case (nil, let n?): return n > 0 ? .suffix(n) : nil
        case (nil, nil): return nil
        }
    }
}
