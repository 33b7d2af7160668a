import KeyCustody

/// The first line of a sealed extract file (DESIGN 5.4): canonical JSON, then `\n`, then exactly the
/// Cobblestone-256 ciphertext.
///
/// ```
/// {"ciphertext_sha256":"<hex>","context":"<b64>","dataset":"...","extract":"<ULID>","force":"...",
///  "format":"vault-sealed-v1","plaintext_size":N,"wrapped_key":{...}}
/// ```
public struct SealedFileHeader: Sendable, Equatable {
    public static let format = "vault-sealed-v1"
    /// Headers are a few hundred bytes; a longer first line is not a sealed file.
    public static let maximumLineLength = 64 * 1024

    public let identity: ExtractIdentity
    public let plaintextSize: UInt64
    public let ciphertextSHA256: [UInt8]
    public let wrappedKey: WrappedKey

    public init(identity: ExtractIdentity, plaintextSize: UInt64, ciphertextSHA256: [UInt8], wrappedKey: WrappedKey) {
        self.identity = identity
        self.plaintextSize = plaintextSize
        self.ciphertextSHA256 = ciphertextSHA256
        self.wrappedKey = wrappedKey
    }

    /// The ciphertext length this header promises.
    public var ciphertextSize: UInt64 { Cobblestone.ciphertextSize(plaintextSize: plaintextSize) }

    /// The canonical header line, newline included.
    public var line: [UInt8] {
        let json = JSONValue.object([
            "ciphertext_sha256": .string(Hex.encode(ciphertextSHA256)),
            "context": .string(Base64.encode(identity.payloadContext)),
            "dataset": .string(identity.dataset.rawValue),
            "extract": .string(identity.extract.rawValue),
            "force": .string(identity.force.rawValue),
            "format": .string(Self.format),
            "plaintext_size": .integer(Int64(plaintextSize)),
            "wrapped_key": wrappedKey.json,
        ])
        return json.canonicalBytes() + [0x0A]
    }

    /// Byte offset of the hash's hex digits within `line` (the first member, as keys are sorted).
    static let hashOffset = Array("{\"ciphertext_sha256\":\"".utf8).count

    /// Parses and checks a header line (without its newline).
    public init(line: [UInt8]) throws {
        let malformed = { (reason: String) in VaultError(.malformedHeader, "not a valid sealed file header: \(reason)") }
        do {
            let json = try JSONParser.parse(line)
            guard json.canonicalBytes() == line else {
                throw malformed("the header line is not canonical JSON (keys sorted, no whitespace; DESIGN 5.4)")
            }
            let fields = try JSONFields(json, context: "header")
            let known: Set<String> = ["ciphertext_sha256", "context", "dataset", "extract", "force", "format",
                                      "plaintext_size", "wrapped_key"]
            if let unknown = fields.members.keys.sorted().first(where: { !known.contains($0) }) {
                throw malformed("unknown member \"\(unknown)\"")
            }
            let format = try fields.string("format")
            guard format == Self.format else { throw malformed("format is \"\(format)\", expected \"\(Self.format)\"") }
            identity = ExtractIdentity(
                force: try ForceID(force: try fields.string("force")),
                dataset: try DatasetID(dataset: try fields.string("dataset")),
                extract: try ExtractID(try fields.string("extract")))
            let context = try fields.base64("context")
            guard context == identity.payloadContext else {
                throw malformed("context does not match force, dataset and extract")
            }
            let size = try fields.integer("plaintext_size")
            guard size >= 0 else { throw malformed("plaintext_size is negative") }
            plaintextSize = UInt64(size)
            let hash = try fields.string("ciphertext_sha256")
            guard hash.utf8.count == 64, let digest = Hex.decode(hash), hash == Hex.encode(digest) else {
                throw malformed("ciphertext_sha256 must be 64 lower-case hex digits")
            }
            ciphertextSHA256 = digest
            guard let wrapped = fields.members["wrapped_key"] else { throw malformed("field \"wrapped_key\" is missing") }
            wrappedKey = try WrappedKey(json: wrapped)
            guard wrappedKey.kek.force == identity.force else {
                throw malformed("wrapped key is under \(wrappedKey.kek), a key of another force")
            }
        } catch let error as CustodyError {
            throw malformed(error.message)
        }
    }
}

/// Writing and reading sealed extract files: client-side encryption (`vault encrypt`) and portable exports
/// (`vault decrypt`).
public enum SealedFile {
    static let ioBlockSize = 1 << 20

    /// What a seal or unseal did.
    public struct Summary: Sendable {
        public let header: SealedFileHeader
        public let path: String
    }

    /// Encrypts the regular file at `inputPath` into a new sealed file at `outputPath`, under a fresh extract id and
    /// extract key wrapped by `custody`'s active master key. Reads the input once; never holds more than a block.
    public static func seal(
        inputPath: String, outputPath: String, dataset: DatasetID, custody: any KeyCustodian,
        extract: ExtractID = .generate(), overwrite: Bool = false
    ) async throws -> Summary {
        let input = try InputFile(path: inputPath)
        guard input.isRegularFile else {
            throw VaultError(.invalidParameter, "\(inputPath) is not a regular file; sealing needs its size up front")
        }
        let identity = ExtractIdentity(force: custody.force, dataset: dataset, extract: extract)
        let dataKey = try await custody.generateDataKey(for: identity.wrapContext)
        let placeholder = SealedFileHeader(identity: identity, plaintextSize: input.size,
                                           ciphertextSHA256: [UInt8](repeating: 0, count: 32),
                                           wrappedKey: dataKey.wrapped)
        let output = try AtomicOutputFile(path: outputPath, replacing: overwrite)
        try output.write(placeholder.line)

        let encryptor = try CobblestoneEncryptor(key: dataKey.key, context: identity.payloadContext)
        let digest = Digest(.sha256)
        let inBuffer = ScratchBuffer(count: ioBlockSize)
        let outBuffer = ScratchBuffer(count: encryptor.maximumOutputSize(forInputSize: ioBlockSize) + 64)
        while true {
            let count = try input.read(into: inBuffer.buffer)
            if count == 0 { break }
            let produced = try encryptor.update(UnsafeRawBufferPointer(rebasing: inBuffer.buffer[0..<count]),
                                                into: outBuffer.buffer)
            let piece = UnsafeRawBufferPointer(rebasing: outBuffer.buffer[0..<produced])
            digest.update(piece)
            try output.write(piece)
        }
        let produced = try encryptor.finish(into: outBuffer.buffer)
        let piece = UnsafeRawBufferPointer(rebasing: outBuffer.buffer[0..<produced])
        digest.update(piece)
        try output.write(piece)
        guard encryptor.plaintextCount == input.size else {
            throw VaultError(.io, "\(inputPath) changed size while it was being sealed; nothing was written")
        }
        let header = SealedFileHeader(identity: identity, plaintextSize: input.size,
                                      ciphertextSHA256: digest.finalize(), wrappedKey: dataKey.wrapped)
        try output.overwrite(at: UInt64(SealedFileHeader.hashOffset),
                             with: Array(Hex.encode(header.ciphertextSHA256).utf8))
        try output.commit()
        return Summary(header: header, path: outputPath)
    }

    /// Reads the header line of an open sealed file and leaves the file positioned at the ciphertext.
    public static func readHeader(_ input: InputFile) throws -> (header: SealedFileHeader, length: Int) {
        var line: [UInt8] = []
        var byte = [UInt8](repeating: 0, count: 4096)
        var offset: UInt64 = 0
        while true {
            let want = Int(min(UInt64(byte.count), input.size > offset ? input.size - offset : 0))
            guard want > 0 else {
                throw VaultError(.malformedHeader, "\(input.path) has no complete header line (empty or truncated)")
            }
            try byte.withUnsafeMutableBytes {
                try input.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]))
            }
            if let newline = byte[0..<want].firstIndex(of: 0x0A) {
                line.append(contentsOf: byte[0..<newline])
                break
            }
            line.append(contentsOf: byte[0..<want])
            offset += UInt64(want)
            guard line.count <= SealedFileHeader.maximumLineLength else {
                throw VaultError(.malformedHeader, "\(input.path) does not start with a sealed file header")
            }
        }
        let header = try SealedFileHeader(line: line)
        try input.seek(to: UInt64(line.count + 1))
        return (header, line.count + 1)
    }

    /// Checks a sealed file's header against its length and the custody's force, and unwraps its extract key.
    public static func open(
        _ input: InputFile, custody: any KeyCustodian, justification: Justification
    ) async throws -> (header: SealedFileHeader, headerLength: Int, key: SecureBytes) {
        let (header, headerLength) = try readHeader(input)
        guard header.identity.force == custody.force else {
            throw VaultError(.wrongForce, "\(input.path) belongs to force \(header.identity.force), "
                + "but the keyring is for force \(custody.force)")
        }
        let actual = input.size - UInt64(headerLength)
        guard actual == header.ciphertextSize else {
            let how = actual < header.ciphertextSize ? "truncated" : "extended"
            throw VaultError(.truncated, "\(input.path) is \(how): the header promises \(header.ciphertextSize) "
                + "bytes of ciphertext, the file holds \(actual)")
        }
        let key = try await custody.unwrap(header.wrappedKey, context: header.identity.wrapContext,
                                           justification: justification)
        return (header, headerLength, key)
    }

    /// Decrypts the sealed file at `inputPath` into `outputPath`. The output appears only when the commitment,
    /// every chunk, the length and the ciphertext's SHA-256 have all verified; otherwise nothing is created.
    public static func unseal(
        inputPath: String, outputPath: String, custody: any KeyCustodian, justification: Justification,
        overwrite: Bool = false
    ) async throws -> Summary {
        let input = try InputFile(path: inputPath)
        let (header, _, key) = try await open(input, custody: custody, justification: justification)
        let output = try AtomicOutputFile(path: outputPath, replacing: overwrite)
        let decryptor = try CobblestoneDecryptor(key: key, context: header.identity.payloadContext)
        let digest = Digest(.sha256)
        let inBuffer = ScratchBuffer(count: ioBlockSize)
        let outBuffer = ScratchBuffer(count: decryptor.maximumOutputSize(forInputSize: ioBlockSize)
                                          + Cobblestone.chunkByteCount)
        while true {
            let count = try input.read(into: inBuffer.buffer)
            if count == 0 { break }
            let piece = UnsafeRawBufferPointer(rebasing: inBuffer.buffer[0..<count])
            digest.update(piece)
            let produced = try decryptor.update(piece, into: outBuffer.buffer)
            try output.write(UnsafeRawBufferPointer(rebasing: outBuffer.buffer[0..<produced]))
        }
        let produced = try decryptor.finish(into: outBuffer.buffer)
        try output.write(UnsafeRawBufferPointer(rebasing: outBuffer.buffer[0..<produced]))
        guard constantTimeEquals(digest.finalize(), header.ciphertextSHA256) else {
            throw VaultError(.integrityFailure, "\(inputPath): ciphertext SHA-256 does not match its header")
        }
        guard decryptor.plaintextCount == header.plaintextSize else {
            throw VaultError(.integrityFailure, "\(inputPath): plaintext size does not match its header")
        }
        try output.commit()
        return Summary(header: header, path: outputPath)
    }
}
