import HTTPTypes
import Hummingbird
import HummingbirdTLS
import KeyCustody
import Logging
import NIOCore
import NIOSSL

/// vaultd's HTTPS API (DESIGN section 8): TLS 1.2+, client certificates requested but optional (bearer tokens
/// otherwise). The routes are grouped by resource, one file each; every route below `v1/` runs with an
/// `AuthenticatedContext`, so a handler cannot reach the engine without a principal, and every decision about what
/// that principal may do is the engine's and `Policy`'s.
public enum VaultAPI {
    /// The application vaultd serves. `metrics` renders the Prometheus exposition for `GET /metrics`.
    public static func makeApplication(
        configuration: ServerConfiguration, engine: VaultEngine, metrics: @escaping @Sendable () -> [UInt8],
        revocations: ClientRevocationList? = nil, logger: Logger
    ) throws -> some ApplicationProtocol {
        let router = makeRouter(principals: configuration.principals, engine: engine, metrics: metrics,
                                revocations: revocations, logger: logger)
        let chain = try NIOSSLCertificate.fromPEMFile(configuration.certificate)
            .map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: configuration.privateKey, format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        tls.cipherSuites = tls12CipherSuites
        if let clientCA = configuration.clientCA {
            tls.certificateVerification = .optionalVerification
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCA))
        }
        return Application(
            router: router, server: try .tls(.http1(configuration: .vault), tlsConfiguration: tls),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port),
                                 serverName: "vaultd"),
            logger: logger)
    }

    /// Every route, with the error and metrics middleware and the authentication of `principals` (by id).
    public static func makeRouter(
        principals: [String: Principal], engine: VaultEngine, metrics: @escaping @Sendable () -> [UInt8],
        revocations: ClientRevocationList? = nil, consoleSessions: ConsoleSessions = ConsoleSessions(), logger: Logger
    ) -> Router<VaultRequestContext> {
        let router = Router(context: VaultRequestContext.self)
        router.add(middleware: RequestMetricsMiddleware())
        router.add(middleware: ErrorMiddleware(logger: logger))
        let authentication = AuthenticationMiddleware(principals: principals, catalog: engine.catalog,
                                                      revocations: revocations)
        PlatformRoutes.register(on: router, engine: engine, authentication: authentication, metrics: metrics)
        TokenRoutes.register(on: router, tokens: TokenAdministration(catalog: engine.catalog, principals: principals,
                                                                     now: engine.now),
                             authentication: authentication)
        let force = router.group("v1/forces/:force").add(middleware: authentication)
            .group(context: AuthenticatedContext.self)
        ExtractRoutes.register(on: force, engine: engine)
        UseCaseRoutes.register(on: force, engine: engine)
        AuditRoutes.register(on: force, engine: engine)
        KeyRoutes.register(on: force, engine: engine)
        ArchiveRoutes.register(on: force, engine: engine)
        DatasetRoutes.register(on: force, engine: engine)
        ConsoleRoutes.register(on: router, engine: engine, sessions: consoleSessions, authentication: authentication,
                               logger: logger)
        return router
    }

    static let sealedContentType = "application/vnd.vault.sealed"

    /// The suites offered over TLS 1.2: AEAD with forward secrecy only (no CBC, no SHA-1 MAC). TLS 1.3, preferred, keeps
    /// its own AEAD suites and the key exchange groups swift-nio-ssl offers by default (the post-quantum hybrid
    /// among them); this list does not touch them.
    static let tls12CipherSuites = [
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    ].joined(separator: ":")

    /// The OpenAPI 3.1 document of every route (`Sources/Vault/Server/API/openapi.json`, embedded at build time).
    public static var openAPIDocument: [UInt8] { PackageResources.openapi_json }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: value.canonicalBytes() + [0x0A])))
    }

    /// A small JSON request body with exactly the `allowed` string fields (`required` among them).
    static func fields(_ request: Request, allowed: Set<String>, required: Set<String>) async throws
        -> [String: String]
    {
        let body = try await request.body.collect(upTo: 16 * 1024)
        let invalid = { (reason: String) in VaultError(.invalidParameter, "invalid request body: \(reason)") }
        guard body.readableBytes > 0 || !required.isEmpty else { return [:] }
        guard let json = try? JSONParser.parse(Array(buffer: body)), case .object(let members) = json else {
            throw invalid("expected a JSON object with \(allowed.sorted().joined(separator: ", "))")
        }
        var result: [String: String] = [:]
        for (key, value) in members {
            guard allowed.contains(key) else { throw invalid("unknown field \"\(key)\"") }
            guard let text = value.stringValue else { throw invalid("\(key) must be a string") }
            result[key] = text
        }
        if let missing = required.sorted().first(where: { result[$0] == nil }) {
            throw invalid("\(missing) is missing")
        }
        return result
    }

    /// A small request body read as its typed request.
    static func body<T: SmallRequest>(_ request: Request, as type: T.Type) async throws -> T {
        T(fields: try await fields(request, allowed: T.members, required: T.members))
    }

    /// The `use_case` query parameter of a read.
    static func useCase(_ request: Request) -> String? { request.uri.queryParameters["use_case"].map(String.init) }

    /// The reader's own signed read request (DESIGN 5.6), from `X-Vault-Read-Request`; forwarded to a remote force's
    /// custody service, which requires it.
    static func signedRequest(_ request: Request) throws -> SignedReadRequest? {
        guard let header = request.headers[HTTPField.Name("X-Vault-Read-Request")!] else { return nil }
        do { return try SignedReadRequest(headerValue: header) } catch let error as CustodyError {
            throw APIError(status: .badRequest, code: "malformed_read_request", message: error.message)
        }
    }

    /// Streams a decrypted extract, honouring a single `Range`. Each chunk is authenticated before it is sent; if a
    /// chunk fails, the connection is aborted so the client never mistakes a cut stream for a complete one.
    static func stream(_ reader: ExtractReader, request: Request) throws -> Response {
        let size = reader.plaintextSize
        var range = 0..<size
        var status = HTTPResponse.Status.ok
        var headers: HTTPFields = [
            .contentType: "application/octet-stream", .acceptRanges: "bytes",
            HTTPField.Name("X-Vault-Extract")!: reader.record.identity.extract.rawValue,
        ]
        if let header = request.headers[.range] {
            guard let parsed = ByteRange.parse(header) else {
                throw APIError(status: .badRequest, code: "malformed_range",
                               message: "Range must be a single bytes=a-b, bytes=a- or bytes=-n")
            }
            guard let resolved = parsed.resolve(size: size) else {
                throw APIError(status: .rangeNotSatisfiable, code: "range_not_satisfiable",
                               message: "the extract has \(size) bytes", headers: [.contentRange: "bytes */\(size)"])
            }
            range = resolved
            status = .partialContent
            headers[.contentRange] = "bytes \(range.lowerBound)-\(range.upperBound - 1)/\(size)"
        }
        let selected = range
        return Response(status: status, headers: headers, body: ResponseBody(contentLength: Int(selected.count)) {
            writer in
            // Buffers of up to a mebibyte, each read from the blob store without blocking a thread.
            try await reader.read(selected) { try await writer.write($0) }
            try await writer.finish(nil)
        })
    }
}

/// The context of every route below `v1/`: the principal authentication established (never optional here) and
/// the request id every audit record of the request carries.
public struct AuthenticatedContext: ChildRequestContext, ForcePathContext {
    public typealias ParentContext = VaultRequestContext
    public var coreContext: CoreRequestContextStorage
    public let principal: Principal
    public let requestID: String

    public init(context: VaultRequestContext) throws {
        guard let principal = context.principal else {
            throw APIError(status: .unauthorized, code: "unauthenticated", message: "not signed in")
        }
        coreContext = context.coreContext
        self.principal = principal
        requestID = context.requestID
    }
}

/// A context whose path names a force and what is in it, read into their identifier types (a malformed one is refused
/// with the rule it breaks).
public protocol ForcePathContext: RequestContext {}

extension ForcePathContext {
    /// The `{force}` of the path.
    public func force() throws -> ForceID { try ForceID(force: try parameters.require("force")) }
    public func dataset() throws -> DatasetID { try DatasetID(dataset: try parameters.require("dataset")) }
    public func extract() throws -> ExtractID { try ExtractID(try parameters.require("extract")) }
    public func resource(_ name: String, kind: String) throws -> ResourceID {
        try ResourceID(try parameters.require(name), kind: kind)
    }
    /// The `{version}` of a master key.
    public func masterKeyVersion() throws -> Int {
        let text = try parameters.require("version")
        guard let version = Int(text), version > 0, text.utf8.count < 10 else {
            throw VaultError(.invalidParameter, "the version must be a positive integer")
        }
        return version
    }
}

/// Who is calling: a client certificate verified against the client CA (subject CN = principal id) and not revoked by
/// the client CRL, or a bearer token whose hash is in the catalog. Either way the principal must be in the
/// configuration.
struct AuthenticationMiddleware: RouterMiddleware {
    typealias Context = VaultRequestContext
    let principals: [String: Principal]
    let catalog: any Catalog
    /// The client CRL (`tls.client_crl`), when configured.
    let revocations: ClientRevocationList?
    let peers = PeerCertificateNames()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        var context = context
        if let authorization = request.headers[.authorization] {
            context.principal = try await BearerAuthentication.principal(authorization: authorization, catalog: catalog,
                                                                          principals: principals)
        } else if let principal = try await certificatePrincipal(of: context.channel) {
            context.principal = principal
        } else {
            throw APIError(status: .unauthorized, code: "unauthenticated",
                           message: "present a client certificate or an Authorization: Bearer token",
                           headers: [.wwwAuthenticate: "Bearer"])
        }
        return try await next(request, context)
    }

    /// The principal of the connection's client certificate (checked against the client CRL), or nil without one.
    func certificatePrincipal(of channel: any Channel) async throws -> Principal? {
        guard let certificate = try await peers.certificate(of: channel) else { return nil }
        try revocations?.check(certificate)
        guard let principal = principals[certificate.commonName] else {
            throw APIError(status: .unauthorized, code: "unknown_principal",
                           message: "the client certificate's subject is not a configured principal")
        }
        return principal
    }

    /// The principal of a console session if its credential still holds: its token neither revoked nor expired, or
    /// the connection presenting a certificate of the same principal. Nil otherwise: the session ends.
    func principal(of session: ConsoleSession, channel: any Channel) async throws -> Principal? {
        let principal: Principal?
        switch session.credential {
        case .token(let hash, _):
            principal = try await BearerAuthentication.principal(hash: hash, catalog: catalog, principals: principals)
        case .certificate:
            principal = (try? await certificatePrincipal(of: channel)) ?? nil
        }
        return principal?.id == session.principal ? principal : nil
    }
}
