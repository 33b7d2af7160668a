import KeyCustody
import NIOCore

/// Cobblestone-256: c2sp.org/chunked-encryption instantiated with HKDF-Expand(SHA-512) and AES-256-GCM (DESIGN 5.1).
///
/// ```
/// key || base nonce || commitment = HKDF-Expand(prk = EK,
///     info = "c2sp.org/chunked-encryption@v1+" || "AEAD_AES_256_GCM" || 0x00 || salt || context)
/// ciphertext = salt (24) || commitment (32) || AES-GCM(chunk 0) || ... || AES-GCM(short final chunk)
/// ```
/// Chunks are 16 KiB of plaintext; the last one is always shorter (possibly empty), which authenticates the length.
/// Chunk `i` uses nonce `base nonce XOR i` (big-endian) and no AAD.
public enum Cobblestone {
    public static let saltByteCount = 24
    public static let commitmentByteCount = 32
    public static let headerByteCount = saltByteCount + commitmentByteCount
    public static let chunkByteCount = 16384
    public static let tagByteCount = 16
    public static let encryptedChunkByteCount = chunkByteCount + tagByteCount
    public static let keyByteCount = 32
    static let nonceByteCount = 12
    /// The spec's hard limit: the chunk counter must stay below 2^38.
    static let maximumChunkCount: UInt64 = 1 << 38
    static let infoPrefix = Array("c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM".utf8) + [0]

    /// The ciphertext length for a plaintext length.
    public static func ciphertextSize(plaintextSize: UInt64) -> UInt64 {
        let fullChunks = plaintextSize / UInt64(chunkByteCount)
        let rest = plaintextSize % UInt64(chunkByteCount)
        return UInt64(headerByteCount) + fullChunks * UInt64(encryptedChunkByteCount) + rest + UInt64(tagByteCount)
    }

    /// The plaintext length for a ciphertext length, or an error if no message has that ciphertext length.
    public static func plaintextSize(ciphertextSize: UInt64) throws -> UInt64 {
        guard ciphertextSize >= UInt64(headerByteCount + tagByteCount) else {
            throw VaultError(.truncated, "ciphertext of \(ciphertextSize) bytes is shorter than the smallest message")
        }
        let body = ciphertextSize - UInt64(headerByteCount)
        let fullChunks = body / UInt64(encryptedChunkByteCount)
        let rest = body % UInt64(encryptedChunkByteCount)
        guard rest >= UInt64(tagByteCount) else {
            throw VaultError(.truncated,
                             "ciphertext of \(ciphertextSize) bytes does not end in a short final chunk (truncated?)")
        }
        guard fullChunks < maximumChunkCount else { throw VaultError(.invalidParameter, "message is too long") }
        return fullChunks * UInt64(chunkByteCount) + rest - UInt64(tagByteCount)
    }

    /// The derived per-message values.
    struct MessageKeys {
        let cipherKey: SecureBytes
        let baseNonce: [UInt8]
        let commitment: [UInt8]
    }

    static func checkKey(_ key: SecureBytes) throws {
        guard key.count == keyByteCount else {
            throw VaultError(.invalidParameter, "Cobblestone-256 input key must be \(keyByteCount) bytes, not \(key.count)")
        }
    }

    static func deriveKeys(inputKey: SecureBytes, salt: UnsafeRawBufferPointer, context: [UInt8]) throws -> MessageKeys {
        let info = infoPrefix + Array(salt) + context
        let derived: SecureBytes
        do {
            derived = try HKDF.expand(.sha512, pseudoRandomKey: inputKey, info: info,
                                      outputByteCount: keyByteCount + nonceByteCount + commitmentByteCount)
        } catch {
            throw VaultError(.invalidParameter, "Cobblestone key derivation failed: \(error)")
        }
        return derived.withUnsafeBytes { bytes in
            MessageKeys(
                cipherKey: SecureBytes(copying: UnsafeRawBufferPointer(rebasing: bytes[0..<keyByteCount])),
                baseNonce: Array(bytes[keyByteCount..<keyByteCount + nonceByteCount]),
                commitment: Array(bytes[(keyByteCount + nonceByteCount)...]))
        }
    }

    /// `base nonce XOR counter` with the counter as a big-endian integer as wide as the nonce.
    static func nonce(base: [UInt8], chunk: UInt64, into nonce: inout [UInt8]) {
        for i in 0..<nonceByteCount { nonce[i] = base[i] }
        for i in 0..<8 { nonce[nonceByteCount - 1 - i] ^= UInt8(truncatingIfNeeded: chunk >> (8 * UInt64(i))) }
    }
}

/// A heap buffer of plaintext or ciphertext that is zeroed when released (it may hold decrypted personal data).
final class ScratchBuffer {
    let buffer: UnsafeMutableRawBufferPointer

    init(count: Int) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit {
        secureZero(buffer)
        buffer.deallocate()
    }

    var pointer: UnsafeMutableRawPointer { buffer.baseAddress! }
}

/// Streaming Cobblestone-256 encryption: input arrives in pieces of any size; at most one chunk is buffered.
///
/// The header (salt and commitment) is emitted with the first output. Write into your own buffers with
/// `update(_:into:)`/`finish(into:)` (no copies), or hand each piece of ciphertext to a closure.
public final class CobblestoneEncryptor: CobblestoneStream {
    private let cipher: AESGCMContext
    private let keys: Cobblestone.MessageKeys
    private let header: [UInt8]
    private var headerEmitted = false
    private let pending = ScratchBuffer(count: Cobblestone.chunkByteCount)
    private var pendingCount = 0
    private var chunkIndex: UInt64 = 0
    private var nonce = [UInt8](repeating: 0, count: Cobblestone.nonceByteCount)
    private var finished = false
    private var failure: (any Error)?
    /// Plaintext bytes consumed so far.
    public private(set) var plaintextCount: UInt64 = 0

    public convenience init(key: SecureBytes, context: [UInt8]) throws {
        try self.init(key: key, context: context, salt: SecureRandom.bytes(count: Cobblestone.saltByteCount))
    }

    /// With an explicit salt: for known-answer tests only. A salt must never repeat under one key.
    init(key: SecureBytes, context: [UInt8], salt: [UInt8]) throws {
        try Cobblestone.checkKey(key)
        precondition(salt.count == Cobblestone.saltByteCount)
        keys = try salt.withUnsafeBytes { try Cobblestone.deriveKeys(inputKey: key, salt: $0, context: context) }
        cipher = try AESGCMContext(key: keys.cipherKey, direction: .seal)
        header = salt + keys.commitment
    }

    /// The most bytes `update` can write for `inputCount` bytes of input (header included).
    public func maximumOutputSize(forInputSize inputCount: Int) -> Int {
        let chunks = (pendingCount + inputCount) / Cobblestone.chunkByteCount
        return Cobblestone.headerByteCount + chunks * Cobblestone.encryptedChunkByteCount
    }

    /// The most bytes `finish` can write, whatever state the stream is in.
    public static let maximumFinishSize = Cobblestone.headerByteCount + Cobblestone.encryptedChunkByteCount

    /// Exactly the bytes `finish` will write now.
    public var finishOutputSize: Int {
        (headerEmitted ? 0 : Cobblestone.headerByteCount) + pendingCount + Cobblestone.tagByteCount
    }

    /// Encrypts as many whole chunks as the input completes, writing them to `output`; returns bytes written.
    public func update(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failure { throw failure }
        precondition(!finished, "CobblestoneEncryptor used after finish")
        precondition(output.count >= maximumOutputSize(forInputSize: input.count), "output buffer too small")
        do {
            return try encrypt(input, into: output)
        } catch {
            // A half-processed stream must never be finished into a valid-looking message.
            failure = error
            throw error
        }
    }

    private func encrypt(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        var written = emitHeader(into: output)
        var consumed = 0
        plaintextCount += UInt64(input.count)
        // Top up a partly filled chunk first.
        if pendingCount > 0 {
            let take = min(Cobblestone.chunkByteCount - pendingCount, input.count)
            if take > 0 {
                pending.pointer.advanced(by: pendingCount).copyMemory(from: input.baseAddress!, byteCount: take)
            }
            pendingCount += take
            consumed = take
            // A full chunk can never be the final one (the final chunk is always short), so seal it now.
            if pendingCount == Cobblestone.chunkByteCount {
                try seal(UnsafeRawBufferPointer(pending.buffer), into: output.baseAddress!.advanced(by: written))
                written += Cobblestone.encryptedChunkByteCount
                pendingCount = 0
            }
        }
        // Whole chunks straight from the input, without copying.
        while input.count - consumed >= Cobblestone.chunkByteCount {
            let chunk = UnsafeRawBufferPointer(rebasing: input[consumed..<consumed + Cobblestone.chunkByteCount])
            try seal(chunk, into: output.baseAddress!.advanced(by: written))
            written += Cobblestone.encryptedChunkByteCount
            consumed += Cobblestone.chunkByteCount
        }
        let rest = input.count - consumed
        if rest > 0 {
            pending.pointer.advanced(by: pendingCount).copyMemory(from: input.baseAddress!.advanced(by: consumed),
                                                                 byteCount: rest)
            pendingCount += rest
        }
        return written
    }

    /// Seals the short final chunk (possibly empty); returns bytes written (at most `maximumFinishSize`).
    public func finish(into output: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failure { throw failure }
        precondition(!finished, "CobblestoneEncryptor finished twice")
        precondition(output.count >= finishOutputSize, "output buffer too small")
        var written = emitHeader(into: output)
        do {
            try seal(UnsafeRawBufferPointer(rebasing: pending.buffer[0..<pendingCount]),
                     into: output.baseAddress!.advanced(by: written))
        } catch {
            failure = error
            throw error
        }
        written += pendingCount + Cobblestone.tagByteCount
        pendingCount = 0
        finished = true
        return written
    }

    private func emitHeader(into output: UnsafeMutableRawBufferPointer) -> Int {
        guard !headerEmitted else { return 0 }
        headerEmitted = true
        header.withUnsafeBytes { output.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return header.count
    }

    private func seal(_ chunk: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer) throws {
        guard chunkIndex < Cobblestone.maximumChunkCount else {
            throw VaultError(.invalidParameter, "message exceeds the Cobblestone limit of 2^38 chunks")
        }
        Cobblestone.nonce(base: keys.baseNonce, chunk: chunkIndex, into: &nonce)
        do {
            try nonce.withUnsafeBytes { n in
                try cipher.seal(nonce: n, aad: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: chunk,
                                ciphertext: output, tag: output.advanced(by: chunk.count))
            }
        } catch {
            throw VaultError(.invalidParameter, "chunk encryption failed: \(error)")
        }
        chunkIndex += 1
    }
}

/// Streaming Cobblestone-256 decryption.
///
/// The commitment is checked before any chunk is decrypted; a chunk's plaintext is released only after its tag
/// verifies; the length is authenticated by the short final chunk at `finish`. After the first error every later
/// call fails with the same error, so a caller can never mistake a broken stream for a complete one.
public final class CobblestoneDecryptor: CobblestoneStream {
    private let inputKey: SecureBytes
    private let context: [UInt8]
    private var cipher: AESGCMContext?
    private var baseNonce: [UInt8] = []
    private let pending = ScratchBuffer(count: Cobblestone.encryptedChunkByteCount)
    private var pendingCount = 0
    private var chunkIndex: UInt64 = 0
    private var nonce = [UInt8](repeating: 0, count: Cobblestone.nonceByteCount)
    private var failure: VaultError?
    private var finished = false
    /// Plaintext bytes released so far.
    public private(set) var plaintextCount: UInt64 = 0

    public init(key: SecureBytes, context: [UInt8]) throws {
        try Cobblestone.checkKey(key)
        inputKey = key
        self.context = context
    }

    /// The most plaintext bytes `update` can write for `inputCount` bytes of ciphertext.
    public func maximumOutputSize(forInputSize inputCount: Int) -> Int {
        (pendingCount + inputCount) / Cobblestone.encryptedChunkByteCount * Cobblestone.chunkByteCount
    }

    public static let maximumFinishSize = Cobblestone.chunkByteCount

    /// Exactly the plaintext bytes a successful `finish` will write now.
    public var finishOutputSize: Int { max(0, pendingCount - Cobblestone.tagByteCount) }

    /// Decrypts every whole chunk the input completes into `output`; returns the plaintext bytes written.
    public func update(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failure { throw failure }
        precondition(!finished, "CobblestoneDecryptor used after finish")
        precondition(output.count >= maximumOutputSize(forInputSize: input.count), "output buffer too small")
        do {
            return try process(input, into: output)
        } catch let error as VaultError {
            failure = error
            throw error
        }
    }

    /// Ends the stream: decrypts the short final chunk, which authenticates the length.
    public func finish(into output: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failure { throw failure }
        precondition(!finished, "CobblestoneDecryptor finished twice")
        precondition(output.count >= finishOutputSize, "output buffer too small")
        do {
            guard cipher != nil else {
                throw VaultError(.truncated, "ciphertext ends inside its 56-byte header (truncated)")
            }
            guard pendingCount >= Cobblestone.tagByteCount else {
                throw VaultError(.truncated,
                                 "ciphertext ends without its short final chunk after \(chunkIndex) chunks (truncated)")
            }
            // An empty final chunk writes nothing; a caller may pass an empty buffer without an address.
            try open(UnsafeRawBufferPointer(rebasing: pending.buffer[0..<pendingCount]),
                     into: output.baseAddress ?? pending.pointer.advanced(by: pendingCount))
            let count = pendingCount - Cobblestone.tagByteCount
            pendingCount = 0
            finished = true
            plaintextCount += UInt64(count)
            return count
        } catch let error as VaultError {
            failure = error
            throw error
        }
    }

    private func process(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        var consumed = 0
        var written = 0
        if cipher == nil {
            let take = min(Cobblestone.headerByteCount - pendingCount, input.count)
            if take > 0 { pending.pointer.advanced(by: pendingCount).copyMemory(from: input.baseAddress!, byteCount: take) }
            pendingCount += take
            consumed = take
            guard pendingCount == Cobblestone.headerByteCount else { return 0 }
            try startMessage(header: UnsafeRawBufferPointer(rebasing: pending.buffer[0..<Cobblestone.headerByteCount]))
            pendingCount = 0
        }
        if pendingCount > 0 {
            let take = min(Cobblestone.encryptedChunkByteCount - pendingCount, input.count - consumed)
            if take > 0 {
                pending.pointer.advanced(by: pendingCount).copyMemory(
                    from: input.baseAddress!.advanced(by: consumed), byteCount: take)
            }
            pendingCount += take
            consumed += take
            // A full-size encrypted chunk is never the final one: decrypt it as chunk i now.
            if pendingCount == Cobblestone.encryptedChunkByteCount {
                try open(UnsafeRawBufferPointer(pending.buffer), into: output.baseAddress!.advanced(by: written))
                written += Cobblestone.chunkByteCount
                pendingCount = 0
            }
        }
        while input.count - consumed >= Cobblestone.encryptedChunkByteCount {
            let chunk = UnsafeRawBufferPointer(
                rebasing: input[consumed..<consumed + Cobblestone.encryptedChunkByteCount])
            try open(chunk, into: output.baseAddress!.advanced(by: written))
            written += Cobblestone.chunkByteCount
            consumed += Cobblestone.encryptedChunkByteCount
        }
        let rest = input.count - consumed
        if rest > 0 {
            pending.pointer.advanced(by: pendingCount).copyMemory(from: input.baseAddress!.advanced(by: consumed),
                                                                 byteCount: rest)
            pendingCount += rest
        }
        plaintextCount += UInt64(written)
        return written
    }

    private func startMessage(header: UnsafeRawBufferPointer) throws {
        let salt = UnsafeRawBufferPointer(rebasing: header[0..<Cobblestone.saltByteCount])
        let keys = try Cobblestone.deriveKeys(inputKey: inputKey, salt: salt, context: context)
        let stored = UnsafeRawBufferPointer(rebasing: header[Cobblestone.saltByteCount...])
        let matches = keys.commitment.withUnsafeBytes { constantTimeEquals($0, stored) }
        guard matches else {
            throw VaultError(.keyCommitmentMismatch,
                             "key commitment does not match: wrong key, or the ciphertext belongs to another "
                                 + "force, dataset or extract")
        }
        baseNonce = keys.baseNonce
        do { cipher = try AESGCMContext(key: keys.cipherKey, direction: .open) } catch {
            throw VaultError(.invalidParameter, "cipher set-up failed: \(error)")
        }
    }

    /// Decrypts one chunk into `output`; on failure the output is wiped before the error is thrown.
    private func open(_ chunk: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer) throws {
        guard chunkIndex < Cobblestone.maximumChunkCount else {
            throw VaultError(.invalidParameter, "message exceeds the Cobblestone limit of 2^38 chunks")
        }
        try CobblestoneChunk.open(cipher: cipher!, baseNonce: baseNonce, index: chunkIndex, nonce: &nonce,
                                  chunk: chunk, into: output)
        chunkIndex += 1
    }
}

enum CobblestoneChunk {
    /// Opens chunk `index`; on authentication failure wipes the output and throws `.integrityFailure`.
    static func open(
        cipher: AESGCMContext, baseNonce: [UInt8], index: UInt64, nonce: inout [UInt8],
        chunk: UnsafeRawBufferPointer, into output: UnsafeMutableRawPointer
    ) throws {
        let bodyCount = chunk.count - Cobblestone.tagByteCount
        Cobblestone.nonce(base: baseNonce, chunk: index, into: &nonce)
        do {
            try nonce.withUnsafeBytes { n in
                try cipher.open(nonce: n, aad: UnsafeRawBufferPointer(start: nil, count: 0),
                                ciphertext: UnsafeRawBufferPointer(rebasing: chunk[0..<bodyCount]),
                                tag: UnsafeRawBufferPointer(rebasing: chunk[bodyCount...]), plaintext: output)
            }
        } catch {
            secureZero(UnsafeMutableRawBufferPointer(start: output, count: bodyCount))
            throw VaultError(.integrityFailure,
                             "chunk \(index) does not authenticate: the ciphertext was altered, reordered, "
                                 + "truncated or extended")
        }
    }
}

/// A streaming transform (encryption or decryption) that writes into caller-provided buffers.
public protocol CobblestoneStream: AnyObject {
    /// The most bytes `update` can write for `inputCount` bytes of input.
    func maximumOutputSize(forInputSize inputCount: Int) -> Int
    /// Exactly the bytes `finish` will write now.
    var finishOutputSize: Int { get }
    func update(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int
    func finish(into output: UnsafeMutableRawBufferPointer) throws -> Int
}

extension CobblestoneStream {
    /// Closure form: `sink` receives each piece of output (valid only during the call).
    public func update(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let scratch = ScratchBuffer(count: maximumOutputSize(forInputSize: input.count))
        let count = try update(input, into: scratch.buffer)
        if count > 0 { try sink(UnsafeRawBufferPointer(rebasing: scratch.buffer[0..<count])) }
    }

    public func finish(sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let scratch = ScratchBuffer(count: finishOutputSize)
        let count = try finish(into: scratch.buffer)
        try sink(UnsafeRawBufferPointer(rebasing: scratch.buffer[0..<count]))
    }
}

/// Where synchronous random-access decryption reads ciphertext from (files, memory: the CLI and the tests).
public protocol RandomAccessCiphertext {
    /// Total ciphertext length in bytes.
    var size: UInt64 { get }
    /// Fills `buffer` completely from `offset`, or throws.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
}

/// Where asynchronous random-access decryption reads ciphertext from: a blob store's object (a file read on
/// `BlockingWork`'s threads, an S3 object through ranged GETs).
public protocol CiphertextSource {
    /// Total ciphertext length in bytes.
    var size: UInt64 { get }
    /// Exactly `count` bytes from `offset`, or throws.
    func read(at offset: UInt64, count: Int) async throws -> ByteBuffer
}

/// What both random-access readers share: the message's keys (checked against the commitment), which chunks a
/// plaintext range touches, where they are in the ciphertext, and one chunk opened and sliced to the range. The
/// readers differ only in how ciphertext arrives.
final class CobblestoneChunkOpener {
    private let cipher: AESGCMContext
    private let baseNonce: [UInt8]
    private var nonce = [UInt8](repeating: 0, count: Cobblestone.nonceByteCount)
    private let plaintext = ScratchBuffer(count: Cobblestone.chunkByteCount)
    let plaintextSize: UInt64
    let ciphertextSize: UInt64
    let lastChunk: UInt64

    /// `header` is the message's first `headerByteCount` bytes.
    init(key: SecureBytes, context: [UInt8], header: [UInt8], ciphertextSize: UInt64) throws {
        try Cobblestone.checkKey(key)
        self.ciphertextSize = ciphertextSize
        plaintextSize = try Cobblestone.plaintextSize(ciphertextSize: ciphertextSize)
        lastChunk = plaintextSize / UInt64(Cobblestone.chunkByteCount)
        let keys = try header.withUnsafeBytes {
            try Cobblestone.deriveKeys(inputKey: key, salt: UnsafeRawBufferPointer(rebasing: $0[0..<24]),
                                       context: context)
        }
        guard constantTimeEquals(keys.commitment, Array(header[Cobblestone.saltByteCount...])) else {
            throw VaultError(.keyCommitmentMismatch,
                             "key commitment does not match: wrong key, or the ciphertext belongs to another "
                                 + "force, dataset or extract")
        }
        baseNonce = keys.baseNonce
        do { cipher = try AESGCMContext(key: keys.cipherKey, direction: .open) } catch {
            throw VaultError(.invalidParameter, "cipher set-up failed: \(error)")
        }
    }

    /// The chunks `range` touches (nil for an empty range), after checking it lies within the message.
    func chunks(of range: Range<UInt64>) throws -> ClosedRange<UInt64>? {
        guard range.upperBound <= plaintextSize else {
            throw VaultError(.invalidParameter, "range \(range) is beyond the message's \(plaintextSize) bytes")
        }
        guard !range.isEmpty else { return nil }
        let chunkSize = UInt64(Cobblestone.chunkByteCount)
        return (range.lowerBound / chunkSize)...((range.upperBound - 1) / chunkSize)
    }

    /// Whether a read of `range` must also open the final chunk, which authenticates the length: it reaches the
    /// message's end without decrypting that chunk already.
    func needsFinalChunk(after range: Range<UInt64>) throws -> Bool {
        guard range.upperBound == plaintextSize else { return false }
        return try chunks(of: range).map { $0.upperBound != lastChunk } ?? true
    }

    /// Where chunk `index` starts in the ciphertext, and its encrypted length.
    func location(of index: UInt64) -> (offset: UInt64, count: Int) {
        let offset = UInt64(Cobblestone.headerByteCount) + index * UInt64(Cobblestone.encryptedChunkByteCount)
        return (offset, index == lastChunk ? Int(ciphertextSize - offset) : Cobblestone.encryptedChunkByteCount)
    }

    /// Authenticates and decrypts chunk `index` from `chunk` (its encrypted bytes), then hands `sink` the part of
    /// it inside `range`.
    func open(_ index: UInt64, chunk: UnsafeRawBufferPointer, within range: Range<UInt64>,
              sink: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        try CobblestoneChunk.open(cipher: cipher, baseNonce: baseNonce, index: index, nonce: &nonce, chunk: chunk,
                                  into: plaintext.pointer)
        let count = chunk.count - Cobblestone.tagByteCount
        let chunkStart = index * UInt64(Cobblestone.chunkByteCount)
        let from = Int(min(max(range.lowerBound, chunkStart), chunkStart + UInt64(count)) - chunkStart)
        let to = Int(max(min(range.upperBound, chunkStart + UInt64(count)), chunkStart + UInt64(from)) - chunkStart)
        try sink(UnsafeRawBufferPointer(rebasing: plaintext.buffer[from..<to]))
    }
}

/// Random-access Cobblestone-256 decryption of byte ranges, reading ciphertext synchronously.
///
/// Opening checks the commitment and that the ciphertext length is possible. A read decrypts and authenticates
/// exactly the chunks the range touches; a read that reaches the end of the message also decrypts the final chunk,
/// which authenticates the length.
public final class CobblestoneReader {
    private let source: any RandomAccessCiphertext
    private let opener: CobblestoneChunkOpener
    private let encrypted = ScratchBuffer(count: Cobblestone.encryptedChunkByteCount)
    /// The plaintext length implied by the ciphertext length.
    public var plaintextSize: UInt64 { opener.plaintextSize }

    public init(key: SecureBytes, context: [UInt8], source: any RandomAccessCiphertext) throws {
        let size = source.size
        _ = try Cobblestone.plaintextSize(ciphertextSize: size)
        var header = [UInt8](repeating: 0, count: Cobblestone.headerByteCount)
        try header.withUnsafeMutableBytes { try source.read(at: 0, into: $0) }
        self.source = source
        opener = try CobblestoneChunkOpener(key: key, context: context, header: header, ciphertextSize: size)
    }

    /// Decrypts the final chunk: proves the message has exactly `plaintextSize` bytes.
    public func authenticateLength() throws {
        try decrypt(opener.lastChunk, within: 0..<0) { _ in }
    }

    /// Decrypts the plaintext bytes in `range`, handing them to `sink` chunk by chunk.
    public func read(_ range: Range<UInt64>, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        if let chunks = try opener.chunks(of: range) {
            for index in chunks { try decrypt(index, within: range, sink: sink) }
        }
        if try opener.needsFinalChunk(after: range) { try authenticateLength() }
    }

    /// Decrypts the whole message.
    public func readAll(sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try read(0..<plaintextSize, sink: sink)
    }

    private func decrypt(_ index: UInt64, within range: Range<UInt64>,
                         sink: (UnsafeRawBufferPointer) throws -> Void) throws
    {
        let location = opener.location(of: index)
        let chunk = UnsafeMutableRawBufferPointer(rebasing: encrypted.buffer[0..<location.count])
        try source.read(at: location.offset, into: chunk)
        try opener.open(index, chunk: UnsafeRawBufferPointer(chunk), within: range, sink: sink)
    }
}

/// Random-access Cobblestone-256 decryption of byte ranges from an asynchronous source (a blob store): the same
/// checks as `CobblestoneReader`, with the ciphertext of up to `chunksPerRead` chunks fetched in one read.
///
/// Sendable because one task at a time uses it: a read's producer (`read` below) is the only user of the opener's
/// scratch state while the read runs, and one reader serves one response.
public final class AsyncCobblestoneReader: @unchecked Sendable {
    private let source: any CiphertextSource
    private let opener: CobblestoneChunkOpener
    /// 32 chunks: 512 KiB of plaintext per source read. Below the daemons' mmap threshold (1 MiB, `DaemonProcess`),
    /// so read buffers come from malloc's arenas and are reused; 1 MiB buffers were mapped, faulted in page by page
    /// and unmapped for every mebibyte, which `perf` put at a fifth of vaultd's CPU during a read.
    public static let chunksPerRead: UInt64 = 32
    /// Buffers read and decrypted ahead of the sink: the next mebibyte is read and decrypted while the sink sends
    /// this one (a TLS connection's encryption runs on an event loop, the decryption on another core).
    public static let readAheadDepth = 2
    /// The plaintext length implied by the ciphertext length.
    public var plaintextSize: UInt64 { opener.plaintextSize }

    private init(source: any CiphertextSource, opener: CobblestoneChunkOpener) {
        self.source = source
        self.opener = opener
    }

    /// Reads the header and checks the commitment.
    public static func open(key: SecureBytes, context: [UInt8], source: any CiphertextSource) async throws
        -> AsyncCobblestoneReader
    {
        let size = source.size
        _ = try Cobblestone.plaintextSize(ciphertextSize: size)
        let header = try await source.read(at: 0, count: Cobblestone.headerByteCount)
        guard header.readableBytes == Cobblestone.headerByteCount else {
            throw VaultError(.truncated, "the ciphertext's header could not be read in full")
        }
        return AsyncCobblestoneReader(source: source, opener: try CobblestoneChunkOpener(
            key: key, context: context, header: Array(header.readableBytesView), ciphertextSize: size))
    }

    /// Decrypts the plaintext bytes in `range`, handing them to `sink` in buffers of up to `chunksPerRead`
    /// chunks; every chunk is authenticated before any of its bytes reach `sink`.
    /// Up to `readAheadDepth` buffers are decrypted ahead of `sink`; a failed chunk ends the read after the buffers
    /// before it, as before.
    public func read(_ range: Range<UInt64>, sink: (ByteBuffer) async throws -> Void) async throws {
        try await withReadAhead(depth: Self.readAheadDepth, produce: { [self] send in
            if let chunks = try opener.chunks(of: range) {
                var first = chunks.lowerBound
                while first <= chunks.upperBound {
                    let last = min(chunks.upperBound, first + Self.chunksPerRead - 1)
                    try await send(try await decrypt(first...last, within: range))
                    first = last + 1
                }
            }
            if try opener.needsFinalChunk(after: range) {
                _ = try await decrypt(opener.lastChunk...opener.lastChunk, within: 0..<0)
            }
        }, consume: sink)
    }

    private func decrypt(_ chunks: ClosedRange<UInt64>, within range: Range<UInt64>) async throws -> ByteBuffer {
        let start = opener.location(of: chunks.lowerBound).offset
        let end = opener.location(of: chunks.upperBound)
        let count = Int(end.offset - start) + end.count
        let ciphertext = try await source.read(at: start, count: count)
        guard ciphertext.readableBytes == count else {
            throw VaultError(.truncated, "the blob store returned \(ciphertext.readableBytes) of \(count) bytes")
        }
        var output = ByteBufferAllocator().buffer(capacity: chunks.count * Cobblestone.chunkByteCount)
        try ciphertext.withUnsafeReadableBytes { all in
            for index in chunks {
                let location = opener.location(of: index)
                let at = Int(location.offset - start)
                try opener.open(index, chunk: UnsafeRawBufferPointer(rebasing: all[at..<(at + location.count)]),
                                within: range) { output.writeBytes($0) }
            }
        }
        return output
    }
}
