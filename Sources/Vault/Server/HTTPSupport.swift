import HTTPTypes
import Hummingbird
import KeyCustody
import Logging
import Metrics
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

// The HTTP plumbing both servers share: vaultd's API and the force's custody service.

/// Per-request state: who is calling (set by `AuthenticationMiddleware`) and the request id for audit and logs.
public struct VaultRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel
    public var principal: Principal?
    /// On the custody service: the platform vaultd instance calling (its client certificate's subject CN).
    public var platformInstance: String?
    /// Made with the context, so every answer (an error the outermost middleware turns into a 500 too) and every
    /// audit record of the request carry it; the custody service replaces it with its caller's `X-Request-ID`.
    public var requestID: String
    /// In the console: the session and the posted form (its CSRF token checked), set by `ConsoleSessionMiddleware`.
    var console: ConsoleRequest?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        requestID = "req-" + Hex.encode(SecureRandom.bytes(count: 8))
    }

    public func requirePrincipal() throws -> Principal {
        guard let principal else { throw APIError(status: .unauthorized, code: "unauthenticated", message: "not signed in") }
        return principal
    }
}

/// A JSON error response: `{"error":{"code":"...","message":"..."}}`.
public struct APIError: HTTPResponseError {
    public let status: HTTPResponse.Status
    public let code: String
    public let message: String
    public var headers: HTTPFields = [:]
    public var details: [String: String] = [:]

    public init(status: HTTPResponse.Status, code: String, message: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    public init(_ description: HTTPErrorDescription) {
        self.init(status: HTTPResponse.Status(code: description.status), code: description.code,
                  message: description.message)
        details = description.details
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        let body = HTTPErrorDescription(status: status.code, code: code, message: message, details: details).json
            .canonicalBytes()
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body + [0x0A])))
    }
}

/// Turns vault errors into JSON errors with their status; anything unexpected is logged and answered with a bare
/// 500 that names only the request id.
public struct ErrorMiddleware: RouterMiddleware {
    public typealias Context = VaultRequestContext
    let logger: Logger

    public init(logger: Logger) { self.logger = logger }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch {
            throw Self.apiError(error, request: request, requestID: context.requestID, logger: logger)
        }
    }

    /// What the client is told of `error`: vault and HTTP errors as they are, anything unexpected logged and named
    /// only by the request id. The console shows the same on its error page.
    static func apiError(_ error: any Error, request: Request, requestID: String, logger: Logger) -> any HTTPResponseError {
        switch error {
        case let error as APIError:
            return error
        case let error as HTTPError where error.status == .notFound && error.body == nil:
            // The router's answer when no route has this path and method: the JSON error every other answer has.
            return APIError(status: .notFound, code: VaultError.Code.notFound.rawValue,
                            message: "no route \(request.method) \(request.uri.path) (the routes are in /v1/openapi.json)")
        case is NIOTooManyBytesError:
            // A body over the route's limit (`collect(upTo:)`); Hummingbird's own answer to it has no body.
            return APIError(status: .contentTooLarge, code: "body_too_large",
                            message: "the request body is larger than this route accepts")
        case let error as any HTTPResponseError:
            return error
        case let error where Self.isBrokenRequestBody(error):
            // The client's request body broke off (its connection closed or its chunked framing turned invalid):
            // the client's doing, not the server's; whatever the route had begun (an upload) it has undone.
            return APIError(status: .badRequest, code: "incomplete_request",
                            message: "the request body ended before it was complete or is not valid HTTP/1.1")
        default:
            if let description = HTTPErrorDescription.from(error) { return APIError(description) }
            logger.error("request failed", metadata: ["request": "\(requestID)", "error": "\(error)"])
            return APIError(status: .internalServerError, code: "internal",
                            message: "internal error (request \(requestID))")
        }
    }

    /// Errors that only reading the request body from the client's connection raises: an HTTP parse error inside
    /// the body (a bad chunk size, the connection closing mid-body) or the connection itself ending or failing.
    /// Nothing else in vaultd throws these NIO errors to a route (outgoing connections wrap theirs).
    static func isBrokenRequestBody(_ error: any Error) -> Bool {
        switch error {
        case is HTTPParserError, is ChannelError: return true
        case let error as NIOSSLError: return error == .uncleanShutdown
        default: return false
        }
    }
}

/// Counts requests by method, route and status, and times them (`vault_http_requests_total`,
/// `vault_http_request_duration_seconds`). Routes are the registered patterns, so ids never become labels.
public struct RequestMetricsMiddleware: RouterMiddleware {
    public typealias Context = VaultRequestContext

    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let start = ContinuousClock.now
        do {
            // Timed to the response head: streamed bodies are measured by the byte counters instead.
            let response = try await next(request, context)
            Self.record(request, context, response.status, since: start)
            return response
        } catch {
            Self.record(request, context, (error as? any HTTPResponseError)?.status ?? .internalServerError, since: start)
            throw error
        }
    }

    static func record(_ request: Request, _ context: Context, _ status: HTTPResponse.Status, since start: ContinuousClock.Instant) {
        let dimensions = [("method", request.method.rawValue), ("route", context.endpointPath ?? "unmatched"),
                          ("status", String(status.code))]
        Counter(label: "vault_http_requests_total", dimensions: dimensions).increment()
        Timer(label: "vault_http_request_duration_seconds", dimensions: dimensions)
            .record(duration: ContinuousClock.now - start)
    }
}

/// A request's `Authorization: Bearer` token: its hash looked up in the catalog (neither revoked nor expired), the
/// principal it names looked up in the configuration. Anything else is `invalid_token`, the same answer whatever was
/// wrong.
enum BearerAuthentication {
    static func principal(authorization header: String, catalog: any Catalog, principals: [String: Principal])
        async throws -> Principal
    {
        let invalid = APIError(status: .unauthorized, code: "invalid_token", message: "the bearer token is not valid",
                               headers: [.wwwAuthenticate: "Bearer error=\"invalid_token\""])
        guard header.hasPrefix("Bearer ") else { throw invalid }
        var bytes = Array(header.utf8.dropFirst(7))
        guard let (principal, _) = try await principal(token: SecureBytes(consuming: &bytes), catalog: catalog,
                                                       principals: principals)
        else { throw invalid }
        return principal
    }

    /// The configured principal a token belongs to, with the token's stored hash; nil for a malformed, unknown,
    /// expired or revoked token (the API's header and the console's sign-in alike).
    static func principal(token: SecureBytes, catalog: any Catalog, principals: [String: Principal]) async throws
        -> (Principal, hash: String)?
    {
        guard token.withUnsafeBytes({ BearerToken.isWellFormed($0) }) else { return nil }
        let hash = BearerToken.hash(token)
        return try await principal(hash: hash, catalog: catalog, principals: principals).map { ($0, hash) }
    }

    /// The configured principal of the token stored as `hash`, if the token is live now (a console session checks
    /// its token so on every request).
    static func principal(hash: String, catalog: any Catalog, principals: [String: Principal]) async throws
        -> Principal?
    {
        try await catalog.tokenPrincipal(hash: hash, now: currentUnixTime()).flatMap { principals[$0] }
    }
}

/// Each connection's client certificate (verified in the TLS handshake): its subject CN, issuer and serial, read from
/// the TLS handler once per connection rather than once per request: a trip to the channel's event loop and back.
final class PeerCertificateNames: Sendable {
    private let peers = Mutex<[ObjectIdentifier: PeerCertificate?]>([:])

    /// The CN (empty when the certificate has none), or nil without a client certificate.
    func commonName(of channel: any Channel) async throws -> String? {
        try await certificate(of: channel)?.commonName
    }

    /// The client certificate, or nil without one.
    func certificate(of channel: any Channel) async throws -> PeerCertificate? {
        let id = ObjectIdentifier(channel as AnyObject)
        if let known = peers.withLock({ $0[id] }) { return known }
        // A channel without TLS (as in-process tests use) has no certificate.
        let certificate = try? await channel.nioSSL_peerCertificate().get()
        let peer = try certificate.map { certificate -> PeerCertificate in
            let name = certificate.subjectName.last { $0.type == .commonName }?.value ?? ""
            guard let peer = PeerCertificate(der: try certificate.toDERBytes(), commonName: name) else {
                throw APIError(status: .unauthorized, code: "unknown_principal",
                               message: "the client certificate cannot be read")
            }
            return peer
        }
        peers.withLock { $0[id] = .some(peer) }
        // Forgotten when the connection closes (before the channel object can go, so its identifier is not reused).
        channel.closeFuture.whenComplete { [self] _ in _ = self.peers.withLock { $0.removeValue(forKey: id) } }
        return peer
    }
}
