import AsyncHTTPClient
import KeyCustody
import Logging
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Where an S3-compatible store is and how to reach it (`[blobs]` in vaultd's configuration).
public struct S3Configuration: Sendable {
    /// `s3://BUCKET[/PREFIX]` as configured.
    public var url: String
    public var bucket: String
    /// Key prefix inside the bucket, empty or ending in `/`.
    public var prefix: String
    /// `http://host:port` or `https://host[:port]`: the store's endpoint (path-style requests, so any
    /// S3-compatible server works).
    public var endpoint: String
    public var region: String
    public var credentials: S3Credentials
    /// Multipart part size in bytes (S3's minimum is 5 MiB for every part but the last).
    public var partSize: Int
    /// Parts uploaded at once by one upload; its memory is at most `partSize × (concurrency + 1)`.
    public var concurrency: Int
    /// Attempts for a request that fails with a retryable error (`SlowDown`, 5xx, a dropped connection).
    public var maxAttempts: Int
    /// First retry delay in milliseconds; doubled on each further attempt, with jitter.
    public var backoffMilliseconds: Int

    public static let defaultPartSize = 8 << 20
    public static let minimumPartSize = 5 << 20

    public init(url: String, endpoint: String, region: String = "us-east-1", credentials: S3Credentials,
                partSize: Int = defaultPartSize, concurrency: Int = 4, maxAttempts: Int = 5,
                backoffMilliseconds: Int = 100) throws
    {
        (bucket, prefix) = try Self.parse(url: url)
        self.url = url
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"),
            !endpoint.dropFirst(8).contains("/") || endpoint.hasSuffix("/")
        else {
            throw VaultError(.invalidParameter, "S3 endpoint must be http://HOST[:PORT] or https://HOST[:PORT], "
                                + "not \"\(endpoint)\"")
        }
        self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        guard !region.isEmpty, region.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
            throw VaultError(.invalidParameter, "S3 region \"\(region)\" is not a region name")
        }
        self.region = region
        self.credentials = credentials
        guard partSize >= Self.minimumPartSize, partSize <= 1 << 30 else {
            throw VaultError(.invalidParameter, "S3 part size must be between 5 MiB and 1 GiB")
        }
        guard (1...64).contains(concurrency) else {
            throw VaultError(.invalidParameter, "S3 upload concurrency must be between 1 and 64")
        }
        self.partSize = partSize
        self.concurrency = concurrency
        self.maxAttempts = max(1, maxAttempts)
        self.backoffMilliseconds = max(1, backoffMilliseconds)
    }

    /// Splits `s3://bucket/prefix` into the bucket and a prefix ending in `/` (or empty).
    public static func parse(url: String) throws -> (bucket: String, prefix: String) {
        guard url.hasPrefix("s3://") else {
            throw VaultError(.invalidParameter, "a blob store URL is s3://BUCKET[/PREFIX], not \"\(url)\"")
        }
        let rest = url.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        // DNS-compatible bucket names: 3-63 of a-z, 0-9, '.', '-', starting and ending with a letter or digit.
        let allowed = bucket.utf8.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0)
                || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".")
        }
        guard (3...63).contains(bucket.count), allowed, bucket.first?.isLetter == true || bucket.first?.isNumber == true,
            bucket.last?.isLetter == true || bucket.last?.isNumber == true
        else {
            throw VaultError(.invalidParameter, "\"\(bucket)\" is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        }
        var prefix = String(rest.dropFirst(bucket.count).drop { $0 == "/" })
        if !prefix.isEmpty && !prefix.hasSuffix("/") { prefix += "/" }
        guard !prefix.contains("//"), !prefix.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else {
            throw VaultError(.invalidParameter, "the S3 key prefix \"\(prefix)\" has an empty, '.' or '..' segment")
        }
        return (bucket, prefix)
    }
}

/// A minimal, vendor-neutral S3 client: path-style requests signed with SigV4, sent with AsyncHTTPClient's async
/// API, retried with exponential backoff and jitter (`Task.sleep`) on `SlowDown`, 5xx and dropped connections. No
/// call blocks a thread: a request that hangs holds only the task that waits for it.
final class S3Client: Sendable {
    let configuration: S3Configuration
    let signer: S3Signer
    let hostHeader: String

    /// One HTTP client for every S3 store in the process (it lives as long as the process). A refused connection
    /// fails the request at once (this client's retry loop backs off instead of the pool's), and a request gets up
    /// to 32 connections per endpoint.
    static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(10), read: .seconds(120))
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 32
        configuration.decompression = .disabled
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration,
                          backgroundActivityLogger: Logger(label: "vault-s3", factory: { _ in SwiftLogNoOpLogHandler() }))
    }()

    init(configuration: S3Configuration) {
        self.configuration = configuration
        signer = S3Signer(credentials: configuration.credentials, region: configuration.region)
        let authority = configuration.endpoint.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first
        var host = authority.map(String.init) ?? ""
        // The HTTP client sends Host without a default port; the signature must cover exactly what is sent.
        if configuration.endpoint.hasPrefix("https://"), host.hasSuffix(":443") { host.removeLast(4) }
        if configuration.endpoint.hasPrefix("http://"), host.hasSuffix(":80") { host.removeLast(3) }
        hostHeader = host
    }

    struct Response {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer?
    }

    /// The object key of `name` (below the configured prefix).
    func key(_ name: String) -> String { configuration.prefix + name }

    /// Sends one request and returns its answer if its status is in `expect`; retries retryable failures; turns
    /// everything else into a precise `VaultError`. `operation` names the request in errors ("upload part 3 of
    /// wmp/crime/x.cob").
    func send(_ method: HTTPMethod, key: String?, query: [(String, String)] = [], headers: [(String, String)] = [],
              body: ByteBuffer? = nil, payloadHash: String = S3Signer.emptyPayloadHash, expect: Set<Int>,
              operation: String) async throws -> Response
    {
        var path = "/\(configuration.bucket)"
        if let key { path += "/\(key)" }
        let encodedPath = S3Signer.encodePath(path)
        let queryString = S3Signer.canonicalQuery(query)
        let url = configuration.endpoint + encodedPath + (queryString.isEmpty ? "" : "?\(queryString)")
        var attempt = 0
        while true {
            attempt += 1
            let response: Response
            do {
                var all = headers
                all.append(("host", hostHeader))
                let signature = signer.sign(method: method.rawValue, path: path, query: query, headers: all,
                                            payloadHash: payloadHash, date: currentUnixTime())
                var request = HTTPClientRequest(url: url)
                request.method = method
                for (name, value) in headers + signature { request.headers.add(name: name, value: value) }
                if let body { request.body = .bytes(body) }
                let answer = try await Self.http.execute(request, deadline: .now() + .seconds(300))
                let bytes = try await answer.body.collect(upTo: Self.maximumResponseBytes)
                response = Response(status: Int(answer.status.code), headers: answer.headers,
                                    body: bytes.readableBytes > 0 ? bytes : nil)
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                // The connection failed or timed out: the request may not have reached S3, so try again.
                guard attempt < configuration.maxAttempts else {
                    throw VaultError(.blobStoreUnavailable,
                                     "cannot reach the S3 endpoint \(configuration.endpoint) to \(operation)",
                                     underlying: String(describing: error))
                }
                try await Self.backoff(attempt: attempt, base: configuration.backoffMilliseconds)
                continue
            }
            if expect.contains(response.status) { return response }
            let error = S3ErrorBody(response.body)
            guard Self.isRetryable(status: response.status, code: error.code), attempt < configuration.maxAttempts
            else {
                throw describe(status: response.status, error: error, method: method, operation: operation)
            }
            try await Self.backoff(attempt: attempt, base: configuration.backoffMilliseconds)
        }
    }

    /// The largest answer read into memory: a read window (8 MiB by default, at most 1 GiB like a part) or a
    /// listing page.
    static let maximumResponseBytes = (1 << 30) + (1 << 20)

    static func isRetryable(status: Int, code: String?) -> Bool {
        if ["SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"].contains(code ?? "") { return true }
        return status == 429 || status == 500 || status == 502 || status == 503 || status == 504
    }

    /// Waits base × 2^(attempt-1) ms (at most 5 s), scaled by a random factor in [0.5, 1), without holding a thread.
    static func backoff(attempt: Int, base: Int) async throws {
        let ceiling = min(5000, base << min(attempt - 1, 16))
        let jitter = 0.5 + Double.random(in: 0..<0.5)
        try await Task.sleep(for: .microseconds(Int(Double(ceiling) * jitter * 1000)))
    }

    /// The error a user sees for an S3 refusal: what failed, S3's error code, and what to do about it. Never the
    /// credentials or the request's signature.
    func describe(status: Int, error: S3ErrorBody, method: HTTPMethod, operation: String) -> VaultError {
        let bucket = "bucket \"\(configuration.bucket)\" at \(configuration.endpoint)"
        let underlying = "S3 HTTP \(status)" + (error.code.map { " \($0)" } ?? "")
            + (error.message.map { ": \($0)" } ?? "")
        switch error.code {
        case "NoSuchBucket":
            return VaultError(.blobStoreUnavailable, "cannot \(operation): the \(bucket) does not exist "
                                + "(NoSuchBucket); create it or correct [blobs] url", underlying: underlying)
        case "NoSuchKey":
            return VaultError(.notFound, "cannot \(operation): the object is missing from the blob store (NoSuchKey)",
                              underlying: underlying)
        case "AccessDenied":
            return VaultError(.blobStoreDenied, "cannot \(operation): S3 denied access to the \(bucket) "
                                + "(AccessDenied); grant the vault's identity read, write and delete",
                              underlying: underlying)
        case "InvalidAccessKeyId":
            return VaultError(.blobStoreDenied, "cannot \(operation): S3 does not know the configured access key "
                                + "(InvalidAccessKeyId); check the S3 credentials", underlying: underlying)
        case "SignatureDoesNotMatch":
            return VaultError(.blobStoreDenied, "cannot \(operation): S3 rejected the request signature "
                                + "(SignatureDoesNotMatch); the secret access key is wrong, or something between "
                                + "vaultd and S3 changed the request", underlying: underlying)
        case "SlowDown":
            return VaultError(.blobStoreUnavailable, "cannot \(operation): S3 asked to slow down (SlowDown) on all "
                                + "\(configuration.maxAttempts) attempts; try again later", underlying: underlying)
        case "NoSuchUpload":
            return VaultError(.blobStoreUnavailable, "cannot \(operation): S3 no longer knows the multipart upload "
                                + "(NoSuchUpload)", underlying: underlying)
        case let code?:
            return VaultError(status >= 500 ? .blobStoreUnavailable : .io,
                              "cannot \(operation): S3 answered HTTP \(status) \(code)", underlying: underlying)
        case nil:
            // HEAD answers carry no body: the status is all there is.
            if status == 404 {
                return VaultError(.notFound, "cannot \(operation): not found in the blob store", underlying: underlying)
            }
            if status == 403 {
                return VaultError(.blobStoreDenied, "cannot \(operation): S3 refused the request (HTTP 403); check "
                                    + "the S3 credentials and their permissions", underlying: underlying)
            }
            return VaultError(status >= 500 ? .blobStoreUnavailable : .io,
                              "cannot \(operation): S3 answered HTTP \(status)", underlying: underlying)
        }
    }
}

/// The `<Error><Code>…</Code><Message>…</Message></Error>` document of an S3 refusal.
struct S3ErrorBody {
    var code: String?
    var message: String?

    init(code: String) { self.code = code }

    init(_ body: ByteBuffer?) {
        guard let body, body.readableBytes > 0 else { return }
        let text = String(buffer: body.getSlice(at: body.readerIndex, length: min(body.readableBytes, 16 << 10))
                            ?? body)
        code = XMLText.first("Code", in: text)
        message = XMLText.first("Message", in: text)
    }
}

/// Just enough XML reading for S3's answers: the text of elements by name (S3 documents are flat and escaped).
enum XMLText {
    static func first(_ element: String, in text: String) -> String? { all(element, in: text).first }

    static func all(_ element: String, in text: String) -> [String] {
        var found: [String] = []
        var rest = Substring(text)
        let open = "<\(element)>", close = "</\(element)>"
        while let start = rest.firstRange(of: open), let end = rest[start.upperBound...].firstRange(of: close) {
            found.append(unescape(String(rest[start.upperBound..<end.lowerBound])))
            rest = rest[end.upperBound...]
        }
        return found
    }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacing("&quot;", with: "\"").replacing("&apos;", with: "'")
            .replacing("&lt;", with: "<").replacing("&gt;", with: ">").replacing("&amp;", with: "&")
    }

    static func escape(_ text: String) -> String {
        text.replacing("&", with: "&amp;").replacing("<", with: "&lt;").replacing(">", with: "&gt;")
            .replacing("\"", with: "&quot;")
    }
}
