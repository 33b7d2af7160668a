import HTTPTypes
import Hummingbird
import HummingbirdTLS
import KeyCustody
import Logging
import Metrics
import NIOCore
import NIOSSL
import Vault

/// Who is calling: a client certificate verified against the client CA (subject CN = principal id), or a bearer
/// token whose hash is in the catalog. Either way the principal must be in the configuration.
struct AuthenticationMiddleware: RouterMiddleware {
    typealias Context = VaultRequestContext
    let principals: [String: Principal]
    let catalog: any Catalog

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        var context = context
        context.requestID = "req-" + Hex.encode(SecureRandom.bytes(count: 8))
        if let authorization = request.headers[.authorization] {
            context.principal = try await principal(forAuthorization: authorization)
        } else if let certificate = try await context.channel.nioSSL_peerCertificate().get() {
            let commonName = certificate.subjectName.last { $0.type == .commonName }?.value ?? ""
            guard let principal = principals[commonName] else {
                throw APIError(status: .unauthorized, code: "unknown_principal",
                               message: "the client certificate's subject is not a configured principal")
            }
            context.principal = principal
        } else {
            throw APIError(status: .unauthorized, code: "unauthenticated",
                           message: "present a client certificate or an Authorization: Bearer token",
                           headers: [.wwwAuthenticate: "Bearer"])
        }
        return try await next(request, context)
    }

    private func principal(forAuthorization header: String) async throws -> Principal {
        let invalid = APIError(status: .unauthorized, code: "invalid_token", message: "the bearer token is not valid",
                               headers: [.wwwAuthenticate: "Bearer error=\"invalid_token\""])
        guard header.hasPrefix("Bearer ") else { throw invalid }
        var bytes = Array(header.utf8.dropFirst(7))
        let token = SecureBytes(consuming: &bytes)
        guard token.withUnsafeBytes({ BearerToken.isWellFormed($0) }),
            let id = try await catalog.tokenPrincipal(hash: BearerToken.hash(token)), let principal = principals[id]
        else { throw invalid }
        return principal
    }
}

enum Routes {
    static let sealedContentType = "application/vnd.vault.sealed"

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: value.canonicalBytes() + [0x0A])))
    }

    static func force(_ context: VaultRequestContext) throws -> ForceID {
        try ForceID(force: try context.parameters.require("force"))
    }

    static func dataset(_ context: VaultRequestContext) throws -> DatasetID {
        try DatasetID(dataset: try context.parameters.require("dataset"))
    }

    /// The reader's own signed read request (DESIGN 5.6), from `X-Vault-Read-Request`; forwarded to a remote force's
    /// custody service, which requires it.
    static func signedRequest(_ request: Request) throws -> SignedReadRequest? {
        guard let header = request.headers[HTTPField.Name("X-Vault-Read-Request")!] else { return nil }
        do { return try SignedReadRequest(headerValue: header) } catch let error as CustodyError {
            throw APIError(status: .badRequest, code: "malformed_read_request", message: error.message)
        }
    }

    static func register(
        on router: Router<VaultRequestContext>, engine: VaultEngine, authentication: AuthenticationMiddleware,
        metrics: PrometheusExporter
    ) {
        router.get("/healthz") { _, _ in json(.object(["status": .string("ok")])) }
        router.get("/readyz") { _, _ -> Response in
            do {
                _ = try await engine.catalog.tokenPrincipal(hash: String(repeating: "0", count: 64))
            } catch {
                return json(.object(["status": .string("not ready"), "reason": .string("catalog unavailable")]),
                            status: .serviceUnavailable)
            }
            if let reason = await engine.readiness() {
                return json(.object(["status": .string("not ready"), "reason": .string(reason)]),
                            status: .serviceUnavailable)
            }
            // A force whose own custody service is unreachable is named; the others are served, so vaultd stays ready.
            let unavailable = engine.unavailableCustody
            if !unavailable.isEmpty {
                return json(.object(["status": .string("ready"), "custody_unavailable": .object(
                    Dictionary(uniqueKeysWithValues: unavailable.map { ($0.key.rawValue, JSONValue.string($0.value)) }))]))
            }
            return json(.object(["status": .string("ready")]))
        }
        router.get("/v1/audit/public-key") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/x-pem-file"],
                     body: .init(byteBuffer: ByteBuffer(string: engine.auditPublicKeyPEM)))
        }
        // Metrics are metadata, but still only for operators: any principal with the ops role.
        router.group("metrics").add(middleware: authentication).get { _, context -> Response in
            try Policy.requireAnyForce(.ops, of: try context.requirePrincipal(), for: "metrics")
            await engine.measureExpiredArchives()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics.emit())))
        }

        let api = router.group("v1/forces/:force").add(middleware: authentication)
        api.put("datasets/:dataset/extracts") { request, context -> Response in
            let principal = try context.requirePrincipal()
            let sealed = request.headers[.contentType]?.hasPrefix(sealedContentType) ?? false
            let upload = try await engine.beginUpload(principal: principal, force: try force(context),
                                                      dataset: try dataset(context), sealed: sealed,
                                                      requestID: context.requestID)
            do {
                for try await buffer in request.body { try await upload.append(buffer) }
            } catch {
                await upload.abort()
                throw error
            }
            let record = try await upload.commit()
            return json(record.json, status: .created)
        }
        api.get("datasets/:dataset/extracts") { _, context -> Response in
            let records = try await engine.listExtracts(principal: try context.requirePrincipal(),
                                                        force: try force(context), dataset: try dataset(context),
                                                        archived: false, requestID: context.requestID)
            return json(.object(["extracts": .array(records.map(\.json))]))
        }
        api.get("archives") { _, context -> Response in
            let records = try await engine.listExtracts(principal: try context.requirePrincipal(),
                                                        force: try force(context), dataset: nil, archived: true,
                                                        requestID: context.requestID)
            return json(.object(["archives": .array(records.map(\.json))]))
        }
        api.get("datasets/:dataset/current") { request, context -> Response in
            let reader = try await engine.openCurrent(
                principal: try context.requirePrincipal(), force: try force(context), dataset: try dataset(context),
                useCaseID: request.uri.queryParameters["use_case"].map(String.init), requestID: context.requestID,
                signedRequest: try signedRequest(request))
            return try stream(reader, request: request)
        }
        api.get("extracts/:extract") { request, context -> Response in
            let reader = try await engine.openExtract(
                principal: try context.requirePrincipal(), force: try force(context),
                extract: try ExtractID(try context.parameters.require("extract")),
                useCaseID: request.uri.queryParameters["use_case"].map(String.init), requestID: context.requestID,
                signedRequest: try signedRequest(request))
            return try stream(reader, request: request)
        }
        api.get("use-cases") { _, context -> Response in
            let useCases = try await engine.listUseCases(principal: try context.requirePrincipal(),
                                                         force: try force(context), requestID: context.requestID)
            return json(.object(["use_cases": .array(useCases.map(\.json))]))
        }
        api.put("use-cases/:id") { request, context -> Response in
            let force = try force(context)
            let id = try ResourceID(try context.parameters.require("id"), kind: "use case id")
            let body = try await request.body.collect(upTo: 64 * 1024)
            let useCase = try UseCase(requestBody: Array(buffer: body), force: force, id: id)
            let stored = try await engine.putUseCase(principal: try context.requirePrincipal(), useCase,
                                                     requestID: context.requestID)
            return json(stored.json)
        }
        api.delete("use-cases/:id") { _, context -> Response in
            let revoked = try await engine.revokeUseCase(
                principal: try context.requirePrincipal(), force: try force(context),
                id: try ResourceID(try context.parameters.require("id"), kind: "use case id"),
                requestID: context.requestID)
            return json(revoked.json)
        }
        api.get("datasets/:dataset/export") { request, context -> Response in
            let expected = try request.uri.queryParameters["extract"].map { try ExtractID(String($0)) }
            let export = try await engine.exportExtract(
                principal: try context.requirePrincipal(), force: try force(context), dataset: try dataset(context),
                expected: expected, requestID: context.requestID)
            return Response(
                status: .ok,
                headers: [.contentType: sealedContentType,
                          HTTPField.Name("X-Vault-Extract")!: export.header.identity.extract.rawValue],
                body: ResponseBody(contentLength: Int(export.size)) { writer in
                    try await export.write { try await writer.write($0) }
                    try await writer.finish(nil)
                })
        }
        api.get("audit") { request, context -> Response in
            let since = try AuditSince(parsing: request.uri.queryParameters["since"].map(String.init) ?? "0")
            let export = try await engine.exportAudit(principal: try context.requirePrincipal(),
                                                      force: try force(context), since: since,
                                                      requestID: context.requestID)
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
                try await export.write { try await writer.write(ByteBuffer(bytes: $0)) }
                try await writer.finish(nil)
            })
        }
        api.get("audit/search") { request, context -> Response in
            let parameters = request.uri.queryParameters.map { (String($0.key), String($0.value)) }
            let query = try AuditQuery(parameters: parameters)
            let lines = try await engine.searchAudit(principal: try context.requirePrincipal(),
                                                     force: try force(context), query: query,
                                                     requestID: context.requestID)
            var body = ByteBuffer()
            for line in lines {
                body.writeBytes(line.line)
                body.writeInteger(UInt8(0x0A))
            }
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init(byteBuffer: body))
        }
    }

    /// A small JSON request body with exactly the `allowed` string fields (`required` among them).
    static func fields(_ request: Request, allowed: Set<String>, required: Set<String>) async throws -> [String: String] {
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
        if let missing = required.sorted().first(where: { result[$0] == nil }) { throw invalid("\(missing) is missing") }
        return result
    }

    static func extract(_ context: VaultRequestContext) throws -> ExtractID {
        try ExtractID(try context.parameters.require("extract"))
    }

    static func certificateList(_ certificates: [DestructionCertificate]) -> JSONValue {
        .object(["certificates": .array(certificates.map(\.json))])
    }

    /// The key lifecycle, archive retrieval, legal hold and shredding routes (DESIGN section 8).
    static func registerLifecycle(on router: Router<VaultRequestContext>, engine: VaultEngine,
                                  authentication: AuthenticationMiddleware)
    {
        let api = router.group("v1/forces/:force").add(middleware: authentication)
        api.get("keys") { _, context -> Response in
            json(try await engine.keyStatus(principal: try context.requirePrincipal(), force: try force(context),
                                            requestID: context.requestID).json)
        }
        api.post("keys/rotate") { _, context -> Response in
            let rotation = try await engine.rotateMasterKey(principal: try context.requirePrincipal(),
                                                            force: try force(context), requestID: context.requestID)
            return json(rotation.json, status: .accepted)
        }
        api.post("keys/migrate") { request, context -> Response in
            let body = try await fields(request, allowed: ["to"], required: ["to"])
            let rotation = try await engine.migrateMasterKey(principal: try context.requirePrincipal(),
                                                             force: try force(context), to: body["to"]!,
                                                             requestID: context.requestID)
            return json(rotation.json, status: .accepted)
        }
        api.post("keys/:version/destroy") { _, context -> Response in
            let text = try context.parameters.require("version")
            guard let version = Int(text), version > 0, text.utf8.count < 10 else {
                throw VaultError(.invalidParameter, "the version must be a positive integer")
            }
            let reissued = try await engine.destroyMasterKey(principal: try context.requirePrincipal(),
                                                             force: try force(context), version: version,
                                                             requestID: context.requestID)
            return json(.object(["destroyed": .string(KEKID.master(force: try force(context), version: version)
                                                        .description),
                                 "reissued_certificates": certificateList(reissued)["certificates"]!]))
        }
        api.post("archives/:extract/retrievals") { request, context -> Response in
            let body = try await fields(request, allowed: ["use_case", "reason"], required: ["use_case", "reason"])
            let retrieval = try await engine.requestRetrieval(
                principal: try context.requirePrincipal(), force: try force(context), extract: try extract(context),
                useCaseID: body["use_case"]!, reason: body["reason"]!, requestID: context.requestID)
            return json(retrieval.json(now: engine.currentTime), status: .created)
        }
        api.get("retrievals") { _, context -> Response in
            let list = try await engine.listRetrievals(principal: try context.requirePrincipal(),
                                                       force: try force(context), requestID: context.requestID)
            let now = engine.currentTime
            return json(.object(["retrievals": .array(list.map { $0.json(now: now) })]))
        }
        api.post("retrievals/:id/approve") { _, context -> Response in
            let retrieval = try await engine.approveRetrieval(
                principal: try context.requirePrincipal(), force: try force(context),
                id: try ResourceID(try context.parameters.require("id"), kind: "retrieval id"),
                requestID: context.requestID)
            return json(retrieval.json(now: engine.currentTime))
        }
        api.get("archives/:extract") { request, context -> Response in
            let reader = try await engine.openArchive(
                principal: try context.requirePrincipal(), force: try force(context), extract: try extract(context),
                useCaseID: request.uri.queryParameters["use_case"].map(String.init), requestID: context.requestID,
                signedRequest: try signedRequest(request))
            return try stream(reader, request: request)
        }
        api.post("archives/:extract/hold") { request, context -> Response in
            let body = try await fields(request, allowed: ["reason"], required: ["reason"])
            let record = try await engine.placeHold(principal: try context.requirePrincipal(), force: try force(context),
                                                    extract: try extract(context), reason: body["reason"]!,
                                                    requestID: context.requestID)
            return json(record.json)
        }
        api.delete("archives/:extract/hold") { request, context -> Response in
            let body = try await fields(request, allowed: ["reason"], required: ["reason"])
            let record = try await engine.releaseHold(principal: try context.requirePrincipal(),
                                                      force: try force(context), extract: try extract(context),
                                                      reason: body["reason"]!, requestID: context.requestID)
            return json(record.json)
        }
        api.post("archives/:extract/shred") { request, context -> Response in
            let body = try await fields(request, allowed: ["reason"], required: ["reason"])
            let certificate = try await engine.shredArchive(
                principal: try context.requirePrincipal(), force: try force(context), extract: try extract(context),
                reason: body["reason"]!, requestID: context.requestID)
            return json(certificate.json)
        }
        api.get("certificates") { request, context -> Response in
            let extract = try request.uri.queryParameters["extract"].map { try ExtractID(String($0)) }
            let list = try await engine.certificates(principal: try context.requirePrincipal(),
                                                     force: try force(context), extract: extract,
                                                     requestID: context.requestID)
            return json(certificateList(list))
        }
        api.get("certificates/:id") { _, context -> Response in
            let certificate = try await engine.certificate(principal: try context.requirePrincipal(),
                                                           force: try force(context),
                                                           id: try context.parameters.require("id"),
                                                           requestID: context.requestID)
            return json(certificate.json)
        }
        router.group("v1/shred").add(middleware: authentication).post { request, context -> Response in
            let parameters = request.uri.queryParameters
            let known: Set<String> = ["expired", "dry_run", "force"]
            if let unknown = parameters.map({ String($0.key) }).sorted().first(where: { !known.contains($0) }) {
                throw VaultError(.invalidParameter, "unknown parameter \(unknown) (known: dry_run, expired, force)")
            }
            guard parameters["expired"].map(String.init) == "true" else {
                throw VaultError(.invalidParameter, "only expired archives are shredded here: pass expired=true (a "
                                    + "custodian shreds one archive early with POST .../archives/{x}/shred)")
            }
            let dryRun: Bool
            switch parameters["dry_run"].map(String.init) {
            case nil, "false": dryRun = false
            case "true": dryRun = true
            default: throw VaultError(.invalidParameter, "dry_run must be true or false")
            }
            let force = try parameters["force"].map { try ForceID(force: String($0)) }
            let report = try await engine.shredExpired(principal: try context.requirePrincipal(), force: force,
                                                       dryRun: dryRun, requestID: context.requestID)
            return json(report.json(dryRun: dryRun))
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

/// Builds the HTTPS application: TLS 1.2+, client certificates requested but optional (bearer tokens otherwise).
func makeApplication(
    configuration: ServerConfiguration, engine: VaultEngine, metrics: PrometheusExporter, logger: Logger
) throws -> some ApplicationProtocol {
    let router = Router(context: VaultRequestContext.self)
    router.add(middleware: RequestMetricsMiddleware())
    router.add(middleware: ErrorMiddleware(logger: logger))
    let authentication = AuthenticationMiddleware(principals: configuration.principals, catalog: engine.catalog)
    Routes.register(on: router, engine: engine, authentication: authentication, metrics: metrics)
    Routes.registerLifecycle(on: router, engine: engine, authentication: authentication)

    let chain = try NIOSSLCertificate.fromPEMFile(configuration.certificate).map { NIOSSLCertificateSource.certificate($0) }
    let key = try NIOSSLPrivateKey(file: configuration.privateKey, format: .pem)
    var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
    tls.minimumTLSVersion = .tlsv12
    if let clientCA = configuration.clientCA {
        tls.certificateVerification = .optionalVerification
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCA))
    }
    return Application(
        router: router, server: try .tls(.http1(), tlsConfiguration: tls),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "vaultd"),
        logger: logger)
}
