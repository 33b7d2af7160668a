import AsyncHTTPClient
import KeyCustody
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Blobs in an S3-compatible bucket: `PREFIX<force>/<dataset>/<extract>.cob`.
///
/// An upload streams through parts of `partSize` (several in flight, so memory stays at most
/// `partSize × (concurrency + 1)`), and the object appears only when `CompleteMultipartUpload` succeeds; a blob
/// smaller than one part is one `PUT`. An upload that fails or is released without a commit is aborted, so no parts
/// are left behind; `removeIncompleteUploads` clears those of a crashed process. Reads are ranged `GET`s of a window
/// around the requested bytes, with the next window fetched ahead while reads are sequential. Deleting is `DELETE`
/// (a missing object is not an error).
public final class S3BlobStore: BlobStore {
    let client: S3Client
    public var configuration: S3Configuration { client.configuration }
    /// Bytes fetched by one ranged GET.
    let windowSize: Int

    public init(configuration: S3Configuration, windowSize: Int = 8 << 20) {
        client = S3Client(configuration: configuration)
        self.windowSize = windowSize
    }

    public func objectKey(_ identity: ExtractIdentity) -> String {
        client.key("\(identity.force)/\(identity.dataset)/\(identity.extract).cob")
    }

    /// Checks that the bucket exists and the credentials may use it (vaultd runs this at start).
    public func check() throws {
        do {
            _ = try client.send(.HEAD, key: nil, expect: [200], operation: "check the bucket")
        } catch let error as VaultError where error.code == .notFound {
            // HEAD answers carry no error document: a 404 on the bucket means it does not exist.
            throw client.describe(status: 404, error: S3ErrorBody(code: "NoSuchBucket"), method: .HEAD,
                                  operation: "check the bucket")
        }
    }

    /// Creates the bucket unless it exists (for set-up scripts and tests).
    public func createBucket() throws {
        let response = try client.send(.PUT, key: nil, expect: [200, 409], operation: "create the bucket")
        if response.status == 409 {
            let error = S3ErrorBody(response.body)
            guard error.code == "BucketAlreadyOwnedByYou" || error.code == "BucketAlreadyExists" else {
                throw client.describe(status: 409, error: error, method: .PUT, operation: "create the bucket")
            }
        }
    }

    public func create(_ identity: ExtractIdentity) throws -> any BlobUpload {
        S3BlobUpload(client: client, key: objectKey(identity), name: "\(identity.force)/\(identity.dataset)/"
                        + "\(identity.extract)")
    }

    public func open(_ identity: ExtractIdentity) throws -> any RandomAccessCiphertext {
        let key = objectKey(identity)
        let response = try client.send(.HEAD, key: key, expect: [200],
                                       operation: "open the blob of extract \(identity.extract)")
        guard let length = response.headers.first(name: "content-length").flatMap(UInt64.init) else {
            throw VaultError(.blobStoreUnavailable, "S3 gave no length for the blob of extract \(identity.extract)")
        }
        return S3Object(client: client, key: key, size: length, windowSize: windowSize,
                        name: "extract \(identity.extract)")
    }

    public func delete(_ identity: ExtractIdentity) throws {
        _ = try client.send(.DELETE, key: objectKey(identity), expect: [200, 204, 404],
                            operation: "delete the blob of extract \(identity.extract)")
    }

    /// Deletes a shredding batch, several requests at once.
    public func delete(_ identities: [ExtractIdentity]) throws {
        let futures = identities.map { identity in S3Client.background { [self] in try delete(identity) } }
        var first: (any Error)?
        for future in futures {
            do { try future.wait() } catch { first = first ?? error }
        }
        if let first { throw first }
    }

    /// Aborts multipart uploads under the prefix started before `cutoff` (left by a crashed process). Returns how
    /// many were aborted.
    @discardableResult
    public func removeIncompleteUploads(before cutoff: UnixTime) throws -> Int {
        var removed = 0
        var markers: [(String, String)] = []
        while true {
            let response = try client.send(.GET, key: nil,
                                           query: [("uploads", ""), ("prefix", client.configuration.prefix)] + markers,
                                           expect: [200], operation: "list incomplete uploads")
            let text = response.body.map { String(buffer: $0) } ?? ""
            for upload in XMLText.all("Upload", in: text) {
                guard let key = XMLText.first("Key", in: upload), let id = XMLText.first("UploadId", in: upload),
                    Self.isBlobKey(key, prefix: client.configuration.prefix)
                else { continue }
                let initiated = XMLText.first("Initiated", in: upload).flatMap(Self.parseISO8601) ?? 0
                guard initiated < cutoff else { continue }
                _ = try client.send(.DELETE, key: key, query: [("uploadId", id)], expect: [200, 204, 404],
                                    operation: "abort an incomplete upload")
                removed += 1
            }
            guard XMLText.first("IsTruncated", in: text) == "true",
                let nextKey = XMLText.first("NextKeyMarker", in: text),
                let nextID = XMLText.first("NextUploadIdMarker", in: text)
            else { break }
            markers = [("key-marker", nextKey), ("upload-id-marker", nextID)]
        }
        return removed
    }

    /// Whether `key` names a blob of this vault (`PREFIX<force>/<dataset>/<extract>.cob`): another application's
    /// objects in a shared bucket are never touched.
    static func isBlobKey(_ key: String, prefix: String) -> Bool {
        guard key.hasPrefix(prefix), key.hasSuffix(".cob") else { return false }
        let parts = key.dropFirst(prefix.count).dropLast(4).split(separator: "/", omittingEmptySubsequences: false)
        return parts.count == 3 && (try? ForceID(force: String(parts[0]))) != nil
            && (try? DatasetID(dataset: String(parts[1]))) != nil && (try? ExtractID(String(parts[2]))) != nil
    }

    /// Keys (below the prefix) of every object in the bucket, for migration checks.
    public func listKeys() throws -> [String] {
        var keys: [String] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", client.configuration.prefix)]
            if let token { query.append(("continuation-token", token)) }
            let response = try client.send(.GET, key: nil, query: query, expect: [200], operation: "list blobs")
            let text = response.body.map { String(buffer: $0) } ?? ""
            keys += XMLText.all("Key", in: text)
            token = XMLText.first("IsTruncated", in: text) == "true"
                ? XMLText.first("NextContinuationToken", in: text) : nil
        } while token != nil
        return keys
    }

    /// `2026-11-23T17:26:02.000Z` as a Unix time.
    static func parseISO8601(_ text: String) -> UnixTime? {
        let digits = text.split(whereSeparator: { !$0.isNumber }).compactMap { Int32($0) }
        guard digits.count >= 6 else { return nil }
        var parts = tm()
        parts.tm_year = digits[0] - 1900
        parts.tm_mon = digits[1] - 1
        parts.tm_mday = digits[2]
        parts.tm_hour = digits[3]
        parts.tm_min = digits[4]
        parts.tm_sec = digits[5]
        return UnixTime(timegm(&parts))
    }
}

/// One blob being written to S3.
final class S3BlobUpload: BlobUpload {
    let client: S3Client
    let key: String
    let name: String
    private var buffer: ByteBuffer
    private var uploadID: String?
    /// Parts in flight, oldest first, and the ETags of those done.
    private var inFlight: [(number: Int, etag: EventLoopFuture<String>)] = []
    private var etags: [(number: Int, etag: String)] = []
    private var nextPart = 1
    private var finished = false

    init(client: S3Client, key: String, name: String) {
        self.client = client
        self.key = key
        self.name = name
        buffer = ByteBufferAllocator().buffer(capacity: client.configuration.partSize)
    }

    deinit {
        // Released without a commit (the upload failed or was abandoned): remove the parts sent so far.
        if !finished { abort() }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "write after commit")
        var rest = bytes
        let partSize = client.configuration.partSize
        while !rest.isEmpty {
            let take = min(rest.count, partSize - buffer.readableBytes)
            buffer.writeBytes(UnsafeRawBufferPointer(rebasing: rest[0..<take]))
            rest = UnsafeRawBufferPointer(rebasing: rest[take...])
            if buffer.readableBytes == partSize { try sendPart() }
        }
    }

    func commit() throws {
        precondition(!finished, "commit twice")
        do {
            if uploadID == nil {
                // Smaller than one part: a single PUT.
                let body = buffer
                _ = try client.send(.PUT, key: key, body: body, payloadHash: Hex.encode(Self.sha256(body)),
                                    expect: [200], operation: "store the blob of \(name)")
                finished = true
                return
            }
            if buffer.readableBytes > 0 { try sendPart() }
            for part in inFlight { etags.append((part.number, try part.etag.wait())) }
            inFlight = []
            guard let uploadID else { return }
            let document = "<CompleteMultipartUpload>" + etags.sorted { $0.number < $1.number }.map {
                "<Part><PartNumber>\($0.number)</PartNumber><ETag>\(XMLText.escape($0.etag))</ETag></Part>"
            }.joined() + "</CompleteMultipartUpload>"
            let body = ByteBuffer(string: document)
            let response = try client.send(.POST, key: key, query: [("uploadId", uploadID)], body: body,
                                           payloadHash: Hex.encode(Self.sha256(body)), expect: [200],
                                           operation: "complete the upload of \(name)")
            // S3 may answer 200 and still report an error in the body.
            let error = S3ErrorBody(response.body)
            if error.code != nil {
                throw client.describe(status: 200, error: error, method: .POST,
                                      operation: "complete the upload of \(name)")
            }
            finished = true
        } catch {
            abort()
            throw error
        }
    }

    /// Sends the buffered bytes as the next part, in the background; waits first when `concurrency` parts are in
    /// flight already.
    private func sendPart() throws {
        if uploadID == nil {
            let response = try client.send(.POST, key: key, query: [("uploads", "")], expect: [200],
                                           operation: "start the upload of \(name)")
            guard let id = response.body.flatMap({ XMLText.first("UploadId", in: String(buffer: $0)) }) else {
                throw VaultError(.blobStoreUnavailable, "S3 started the upload of \(name) without an upload id")
            }
            uploadID = id
        }
        guard let uploadID else { return }
        while inFlight.count >= client.configuration.concurrency {
            let oldest = inFlight.removeFirst()
            etags.append((oldest.number, try oldest.etag.wait()))
        }
        let part = buffer
        buffer = ByteBufferAllocator().buffer(capacity: client.configuration.partSize)
        let number = nextPart
        nextPart += 1
        let client = self.client, key = self.key, name = self.name
        let etag = S3Client.background { () throws -> String in
            let response = try client.send(
                .PUT, key: key, query: [("partNumber", "\(number)"), ("uploadId", uploadID)], body: part,
                payloadHash: Hex.encode(Self.sha256(part)), expect: [200],
                operation: "upload part \(number) of \(name)")
            guard let etag = response.headers.first(name: "etag") else {
                throw VaultError(.blobStoreUnavailable, "S3 stored part \(number) of \(name) without an ETag")
            }
            return etag
        }
        inFlight.append((number, etag))
    }

    /// Aborts the multipart upload (after the parts in flight settle), best effort: a failure here leaves parts
    /// that `removeIncompleteUploads` clears later.
    private func abort() {
        finished = true
        guard let uploadID else { return }
        for part in inFlight { _ = try? part.etag.wait() }
        inFlight = []
        _ = try? client.send(.DELETE, key: key, query: [("uploadId", uploadID)], expect: [200, 204, 404],
                             operation: "abort the upload of \(name)")
    }

    static func sha256(_ buffer: ByteBuffer) -> [UInt8] {
        buffer.withUnsafeReadableBytes { Digest.hash(.sha256, $0) }
    }
}

/// A committed blob in S3, read through ranged GETs of `windowSize` bytes.
final class S3Object: RandomAccessCiphertext {
    let client: S3Client
    let key: String
    let size: UInt64
    let windowSize: Int
    let name: String
    private var window: (start: UInt64, bytes: ByteBuffer)?
    private var ahead: (start: UInt64, bytes: EventLoopFuture<ByteBuffer>)?

    init(client: S3Client, key: String, size: UInt64, windowSize: Int, name: String) {
        self.client = client
        self.key = key
        self.size = size
        self.windowSize = windowSize
        self.name = name
    }

    deinit { _ = try? ahead?.bytes.wait() }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else {
            throw VaultError(.truncated, "read past the end of the blob of \(name)")
        }
        var filled = 0
        while filled < buffer.count {
            let position = offset + UInt64(filled)
            let current = try windowCovering(position)
            let skip = Int(position - current.start)
            let count = min(buffer.count - filled, current.bytes.readableBytes - skip)
            current.bytes.withUnsafeReadableBytes { source in
                UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + count)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[skip..<(skip + count)]))
            }
            filled += count
        }
    }

    private func windowCovering(_ position: UInt64) throws -> (start: UInt64, bytes: ByteBuffer) {
        if let window, position >= window.start, position < window.start + UInt64(window.bytes.readableBytes) {
            return window
        }
        let sequential = window.map { position == $0.start + UInt64($0.bytes.readableBytes) } ?? (position == 0)
        let loaded: (start: UInt64, bytes: ByteBuffer)
        if let ahead, ahead.start == position {
            loaded = (position, try ahead.bytes.wait())
        } else {
            _ = try? ahead?.bytes.wait()
            loaded = (position, try fetch(position))
        }
        ahead = nil
        window = loaded
        // Reading straight through: fetch the next window while this one is consumed.
        let next = loaded.start + UInt64(loaded.bytes.readableBytes)
        if sequential, next < size {
            let client = self.client, key = self.key, size = self.size, windowSize = self.windowSize
            let name = self.name
            ahead = (next, S3Client.background {
                try Self.fetch(client: client, key: key, start: next, size: size, windowSize: windowSize, name: name)
            })
        }
        return loaded
    }

    private func fetch(_ start: UInt64) throws -> ByteBuffer {
        try Self.fetch(client: client, key: key, start: start, size: size, windowSize: windowSize, name: name)
    }

    static func fetch(client: S3Client, key: String, start: UInt64, size: UInt64, windowSize: Int, name: String)
        throws -> ByteBuffer
    {
        let end = min(size, start + UInt64(windowSize)) - 1
        let response = try client.send(.GET, key: key, headers: [("range", "bytes=\(start)-\(end)")],
                                       expect: [206, 200], operation: "read the blob of \(name)")
        guard var body = response.body else { throw VaultError(.truncated, "S3 sent no bytes of \(name)") }
        if response.status == 200 {
            // A server that ignores ranges sends everything: keep the requested window.
            guard body.readableBytes == Int(size) else {
                throw VaultError(.truncated, "the blob of \(name) changed size in S3")
            }
            body.moveReaderIndex(forwardBy: Int(start))
            body = body.getSlice(at: body.readerIndex, length: Int(end - start + 1)) ?? body
        }
        guard body.readableBytes == Int(end - start + 1) else {
            throw VaultError(.truncated, "S3 sent \(body.readableBytes) bytes of \(name) for a range of "
                                + "\(end - start + 1)")
        }
        return body
    }
}
