import KeyCustody
import NIOCore

/// The header of a sealed upload, collected from the first bytes of the stream.
struct SealedIntake {
    var headerLine: [UInt8] = []
    var decryptor: CobblestoneDecryptor?
    var header: SealedFileHeader?
    /// Ciphertext that arrived after the header but before `prepare()` unwrapped the key.
    var early: [UInt8] = []
}

/// One upload in progress: buffers arrive with `append`, are encrypted (plaintext uploads) or verified chunk by
/// chunk (sealed uploads) and written, a mebibyte at a time, to a blob nobody can see until `commit`. Releasing the
/// object without a commit leaves no blob and no catalog row.
///
/// A sealed upload takes one more asynchronous step once its header line has arrived: unwrapping the extract key to
/// verify the chunks; `append` does it when the header is complete.
/// ```
/// for try await buffer in body { try await upload.append(buffer) }
/// let record = try await upload.commit()
/// ```
public final class ExtractUpload {
    enum Mode {
        case plaintext
        case sealed(SealedIntake)
    }

    private let engine: VaultEngine
    private let custody: any KeyCustodian
    public let principal: Principal
    public let force: ForceID
    public let dataset: DatasetID
    private var mode: Mode
    private let requestID: String
    private var identity: ExtractIdentity?
    private var wrappedKey: WrappedKey?
    private var encryptor: CobblestoneEncryptor?
    private var blob: (any BlobUpload)?
    /// Ciphertext not yet handed to the blob: written once it reaches `flushThreshold`, so the blob store is
    /// called once a mebibyte, not once a network buffer.
    private var pending = ByteBuffer()
    static let flushThreshold = 1 << 20
    private let digest = Digest(.sha256)
    private var scratch = ScratchBuffer(count: 1 << 20)
    private var failure: (any Error)?
    /// Whether custody unwrapped a sealed upload's key to verify it (recorded if the upload then fails).
    private var keyUnwrapped = false
    /// Set once the upload's failure is in the audit trail.
    private var failureRecorded = false
    /// Body bytes received so far.
    public private(set) var receivedBytes: UInt64 = 0
    private var ciphertextBytes: UInt64 = 0
    private var plaintextBytes: UInt64 = 0

    init(engine: VaultEngine, custody: any KeyCustodian, principal: Principal, force: ForceID, dataset: DatasetID,
         mode: Mode, requestID: String)
    {
        self.engine = engine
        self.custody = custody
        self.principal = principal
        self.force = force
        self.dataset = dataset
        self.mode = mode
        self.requestID = requestID
    }

    /// The extract id (known from the start for plaintext uploads, from the header for sealed ones).
    public var extract: ExtractID? { identity?.extract }

    func start(identity: ExtractIdentity, wrappedKey: WrappedKey, cipher: CobblestoneEncryptor?) async throws {
        self.identity = identity
        self.wrappedKey = wrappedKey
        self.encryptor = cipher
        blob = try await engine.blobs.create(identity)
        pending = ByteBufferAllocator().buffer(capacity: Self.flushThreshold + (64 << 10))
    }

    private func ensureScratch(_ count: Int) {
        if scratch.buffer.count < count { scratch = ScratchBuffer(count: count) }
    }

    /// True when a sealed upload's header has arrived and `prepare()` must run before more data is verified.
    var needsPreparation: Bool {
        if case .sealed(let intake) = mode { return intake.header != nil && intake.decryptor == nil }
        return false
    }

    /// Held bytes before `prepare()` are bounded: a caller that never prepares gets an error, not unbounded memory.
    static let maximumEarlyBytes = 64 << 20

    /// Takes the next piece of the request body.
    public func append(_ buffer: ByteBuffer) async throws {
        do {
            try buffer.withUnsafeReadableBytes { try absorb($0) }
            if needsPreparation { try await prepare() }
            if pending.readableBytes >= Self.flushThreshold { try await flush() }
        } catch {
            await recordFailure(error)
            throw error
        }
    }

    /// Gives the upload up (the body failed or was cut off): the blob's bytes so far are removed now, not when the
    /// object is released, and the failure is recorded.
    public func abort() async {
        pending.clear()
        await blob?.abort()
        await recordFailure(failure ?? VaultError(.truncated, "the upload's body was cut off"))
    }

    /// Records the failed upload in the force's chain, once: `upload` with outcome `error`, the code of what failed,
    /// the bytes received, the extract id when known and, for a sealed upload, whether custody unwrapped its key to
    /// verify it (the unwrap happened even though nothing was stored). Best effort: a trail that cannot be written
    /// already fails every audited action closed.
    private func recordFailure(_ error: any Error) async {
        guard !failureRecorded else { return }
        failureRecorded = true
        var detail: [String: JSONValue] = [
            "reason": .string(HTTPErrorDescription.from(error)?.code ?? "internal_error"),
            "received_bytes": .integer(Int64(clamping: receivedBytes)),
        ]
        var target = "\(force)/\(dataset)"
        if let identity {
            detail["extract"] = .string(identity.extract.rawValue)
            target += "/\(identity.extract)"
        }
        if case .sealed = mode {
            detail["source"] = .string(ExtractSource.sealed.rawValue)
            detail["key_unwrapped"] = .bool(keyUnwrapped)
        } else {
            detail["source"] = .string(ExtractSource.plaintext.rawValue)
        }
        try? await engine.record(AuditEntry(force: force, time: engine.currentTime, principal: principal.id,
                                            action: "upload", target: target, dataset: dataset, outcome: .error,
                                            detail: detail, requestID: requestID))
    }

    /// Hands the pending ciphertext to the blob.
    private func flush() async throws {
        guard pending.readableBytes > 0, let blob else { return }
        do {
            try await blob.write(pending)
            pending.clear()
        } catch {
            failure = error
            throw error
        }
    }

    /// Encrypts or verifies the bytes synchronously, straight from the network buffer.
    private func absorb(_ bytes: UnsafeRawBufferPointer) throws {
        if let failure { throw failure }
        do {
            receivedBytes += UInt64(bytes.count)
            switch mode {
            case .plaintext:
                let encryptor = encryptor!
                ensureScratch(encryptor.maximumOutputSize(forInputSize: bytes.count))
                let produced = try encryptor.update(bytes, into: scratch.buffer)
                try store(UnsafeRawBufferPointer(rebasing: scratch.buffer[0..<produced]))
                plaintextBytes += UInt64(bytes.count)
                VaultMetrics.encrypted(bytes.count, force: force)
            case .sealed(var intake):
                var rest = bytes
                if intake.header == nil {
                    if let newline = rest.firstIndex(of: 0x0A) {
                        intake.headerLine.append(contentsOf: rest[rest.startIndex..<newline])
                        rest = UnsafeRawBufferPointer(rebasing: rest[(newline + 1)...])
                        intake.header = try checkedHeader(intake.headerLine)
                    } else {
                        intake.headerLine.append(contentsOf: rest)
                        rest = UnsafeRawBufferPointer(start: nil, count: 0)
                        guard intake.headerLine.count <= SealedFileHeader.maximumLineLength else {
                            throw VaultError(.malformedHeader, "the body does not start with a sealed file header")
                        }
                    }
                }
                if !rest.isEmpty {
                    if let decryptor = intake.decryptor {
                        try verify(rest, with: decryptor)
                    } else {
                        intake.early.append(contentsOf: rest)
                        guard intake.early.count <= Self.maximumEarlyBytes else {
                            throw VaultError(.invalidParameter, "sealed upload not prepared after its header")
                        }
                    }
                }
                mode = .sealed(intake)
            }
        } catch {
            failure = error
            throw error
        }
    }

    /// Unwraps a sealed upload's extract key (purpose `ingest-verify`) and verifies the bytes held so far.
    func prepare() async throws {
        if let failure { throw failure }
        guard case .sealed(var intake) = mode, let header = intake.header, intake.decryptor == nil else { return }
        do {
            let identity = header.identity
            if try await engine.catalog.extract(force: identity.force, id: identity.extract) != nil {
                throw VaultError(.duplicateExtract, "extract \(identity.extract) of force \(identity.force) exists "
                    + "already; seal the file again for a new extract id")
            }
            let justification = Justification(principal: principal.id, purpose: .ingestVerification,
                                              requestID: requestID)
            let key = try await custody.unwrap(header.wrappedKey, context: identity.wrapContext,
                                               justification: justification)
            keyUnwrapped = true
            let decryptor = try CobblestoneDecryptor(key: key, context: identity.payloadContext)
            try await start(identity: identity, wrappedKey: header.wrappedKey, cipher: nil)
            intake.decryptor = decryptor
            let early = intake.early
            intake.early = []
            mode = .sealed(intake)
            try early.withUnsafeBytes { try verify($0, with: decryptor) }
        } catch {
            failure = error
            throw error
        }
    }

    private func checkedHeader(_ line: [UInt8]) throws -> SealedFileHeader {
        let header = try SealedFileHeader(line: line)
        guard header.identity.force == force else {
            throw VaultError(.wrongForce, "the sealed file belongs to force \(header.identity.force), not \(force)")
        }
        guard header.identity.dataset == dataset else {
            throw VaultError(.malformedHeader,
                             "the sealed file is for dataset \(header.identity.dataset), not \(dataset)")
        }
        return header
    }

    /// Authenticates ciphertext chunk by chunk (the plaintext is discarded and wiped) and stores it as it came.
    private func verify(_ ciphertext: UnsafeRawBufferPointer, with decryptor: CobblestoneDecryptor) throws {
        ensureScratch(decryptor.maximumOutputSize(forInputSize: ciphertext.count))
        let produced = try decryptor.update(ciphertext, into: scratch.buffer)
        secureZero(UnsafeMutableRawBufferPointer(rebasing: scratch.buffer[0..<produced]))
        try store(ciphertext)
    }

    private func store(_ ciphertext: UnsafeRawBufferPointer) throws {
        guard !ciphertext.isEmpty else { return }
        digest.update(ciphertext)
        pending.writeBytes(ciphertext)
        ciphertextBytes += UInt64(ciphertext.count)
    }

    /// Completes the upload: the last chunk, the checks, the durable blob, then one catalog transaction that makes
    /// the extract current and archives its predecessor.
    public func commit() async throws -> ExtractRecord {
        if needsPreparation { try await prepare() }
        if let failure { throw failure }
        do {
            let source: ExtractSource
            switch mode {
            case .plaintext:
                guard receivedBytes > 0 else {
                    throw VaultError(.invalidParameter, "refusing an empty upload (was the body cut off?)")
                }
                let encryptor = encryptor!
                ensureScratch(encryptor.finishOutputSize)
                let produced = try encryptor.finish(into: scratch.buffer)
                try store(UnsafeRawBufferPointer(rebasing: scratch.buffer[0..<produced]))
                source = .plaintext
            case .sealed(let intake):
                guard let header = intake.header, let decryptor = intake.decryptor else {
                    throw VaultError(.malformedHeader, "the body ended before the sealed file header did")
                }
                guard ciphertextBytes == header.ciphertextSize else {
                    let how = ciphertextBytes < header.ciphertextSize ? "cut short" : "longer than its header says"
                    throw VaultError(.truncated, "the sealed upload was \(how): \(ciphertextBytes) of "
                        + "\(header.ciphertextSize) ciphertext bytes")
                }
                ensureScratch(decryptor.finishOutputSize)
                let produced = try decryptor.finish(into: scratch.buffer)
                secureZero(UnsafeMutableRawBufferPointer(rebasing: scratch.buffer[0..<produced]))
                guard decryptor.plaintextCount == header.plaintextSize else {
                    throw VaultError(.integrityFailure, "the sealed file's plaintext size does not match its header")
                }
                plaintextBytes = header.plaintextSize
                source = .sealed
            }
            let sha256 = digest.finalize()
            if case .sealed(let intake) = mode, let header = intake.header {
                guard constantTimeEquals(sha256, header.ciphertextSHA256) else {
                    throw VaultError(.integrityFailure, "the sealed file's ciphertext SHA-256 does not match its header")
                }
            }
            let record = ExtractRecord(
                identity: identity!, state: .uploading, wrappedKey: wrappedKey!, plaintextSize: plaintextBytes,
                ciphertextSize: ciphertextBytes, ciphertextSHA256: sha256, source: source, uploadedBy: principal.id,
                createdAt: currentUnixTime())
            try await flush()
            return try await engine.commit(record, blob: blob!, requestID: requestID)
        } catch {
            failure = error
            await recordFailure(error)
            throw error
        }
    }
}
