import HTTPTypes
import Hummingbird
import HummingbirdTLS
import KeyCustody
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Synchronization

/// Who is calling the custody service: a platform vaultd instance by its client certificate (verified against the
/// platform CA during the TLS handshake; subject CN = the instance), or one of the force's people by bearer token
/// (only its hash is stored, in the service's own catalog).
struct CustodyAuthentication: RouterMiddleware {
    typealias Context = VaultRequestContext
    let service: CustodyService
    let peers = PeerCertificateNames()

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        var context = context
        context.requestID = CustodyRoutes.requestID(request)
        if let authorization = request.headers[.authorization] {
            context.principal = try await BearerAuthentication.principal(
                authorization: authorization, catalog: service.catalog, principals: service.configuration.principals)
        } else if let commonName = try await peers.commonName(of: context.channel) {
            guard Principal.isValidID(commonName) else {
                throw APIError(status: .unauthorized, code: "unknown_principal",
                               message: "the client certificate's subject CN is not a platform instance name")
            }
            context.platformInstance = commonName
        } else {
            throw APIError(status: .unauthorized, code: "unauthenticated",
                           message: "present the platform's client certificate or a bearer token",
                           headers: [.wwwAuthenticate: "Bearer"])
        }
        return try await next(request, context)
    }
}

extension VaultRequestContext {
    /// The custody service's caller (set by `CustodyAuthentication`).
    func custodyCaller() throws -> CustodyCaller {
        if let platformInstance { return .platform(platformInstance) }
        return .person(try requirePrincipal())
    }
}

/// The custody service's routes (the README's "Remote custody protocol"). Each decodes its body with `CustodyWire`,
/// calls `CustodyService` and encodes the answer; the rules live in the service.
public enum CustodyRoutes {
    static let smallBody = 64 * 1024

    /// The caller's `X-Request-ID` when it is a sane id, else a new one.
    static func requestID(_ request: Request) -> String {
        if let given = request.headers[HTTPField.Name("X-Request-ID")!], Principal.isValidID(given) { return given }
        return "cust-" + Hex.encode(SecureRandom.bytes(count: 8))
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: .init(byteBuffer: ByteBuffer(bytes: value.canonicalBytes() + [0x0A])))
    }

    /// A response carrying an extract key: built from secure memory, sent once.
    static func keyResponse(_ members: [String: JSONValue]) -> Response {
        let bytes = JSONValue.object(members).canonicalSecureBytes()
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count + 1)
        bytes.withUnsafeBytes { _ = buffer.writeBytes($0) }
        buffer.writeInteger(UInt8(0x0A))
        return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                        body: .init(byteBuffer: buffer))
    }

    static func body(_ request: Request, limit: Int = smallBody) async throws -> JSONValue {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: limit) } catch {
            throw VaultError(.invalidParameter, "the request body is larger than \(limit) bytes")
        }
        do { return try JSONParser.parse(Array(buffer: buffer)) } catch let error as CustodyError {
            throw VaultError(.invalidParameter, "the request body is not JSON: \(error.message)", cause: error)
        }
    }

    static func fields(_ value: JSONValue, _ context: String, _ known: Set<String>) throws -> JSONFields {
        let fields = try JSONFields(value, context: context)
        try CustodyWire.only(fields, known)
        return fields
    }

    static func force(_ context: VaultRequestContext, _ service: CustodyService) throws -> ForceID {
        let force = try ForceID(force: try context.parameters.require("force"))
        try service.checkForce(force)
        return force
    }

    public static func register(on router: Router<VaultRequestContext>, service: CustodyService,
                                metrics: @escaping @Sendable () -> [UInt8])
    {
        router.get("/healthz") { _, _ in json(.object(["status": .string("ok")])) }
        router.get("/readyz") { _, _ -> Response in
            if let reason = await service.readiness() {
                return json(.object(["status": .string("not ready"), "reason": .string(reason)]),
                            status: .serviceUnavailable)
            }
            var members: [String: JSONValue] = ["status": .string("ready"), "force": .string(service.force.rawValue)]
            if service.alarmStanding { members["witness_alarm"] = .bool(true) }
            return json(.object(members))
        }
        router.get("/v1/custody/public-key") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/x-pem-file"],
                     body: .init(byteBuffer: ByteBuffer(string: service.signer.publicKey.pem)))
        }
        let authentication = CustodyAuthentication(service: service)
        router.group("metrics").add(middleware: authentication).get { _, context -> Response in
            _ = try context.custodyCaller()
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: metrics())))
        }
        let api = router.group("v1/forces/:force").add(middleware: authentication)

        // Keys, for the platform.
        api.get("keys") { _, context -> Response in
            _ = try force(context, service)
            let keys = try await service.status(try context.custodyCaller(), requestID: context.requestID)
            return json(.object(["keys": .array(keys.map(CustodyWire.json)),
                                 "active": keys.activeMaster.map { .string($0.description) } ?? .null]))
        }
        api.post("keys/generate") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "generate", ["context", "justification"])
            let key = try await service.generate(try context.custodyCaller(),
                                                 context: try CustodyWire.context(body.members["context"]),
                                                 justification: try CustodyWire.justification(body.members["justification"]))
            return keyResponse(["key": .secret(key.key), "wrapped": key.wrapped.json])
        }
        api.post("keys/unwrap") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "unwrap", ["wrapped", "context", "justification"])
            let key = try await service.unwrap(
                try context.custodyCaller(), wrapped: try CustodyWire.wrappedKey(body.members["wrapped"]),
                context: try CustodyWire.context(body.members["context"]),
                justification: try CustodyWire.justification(body.members["justification"]))
            return keyResponse(["key": .secret(key)])
        }
        api.post("keys/rewrap") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request, limit: CustodyWire.maximumBody), "rewrap",
                                  ["to", "items", "justification"])
            let items = try body.array("items")
            guard items.count <= CustodyWire.maximumBatch else {
                throw VaultError(.invalidParameter, "at most \(CustodyWire.maximumBatch) keys per rewrap batch")
            }
            let batch = try items.map { item in
                let fields = try fields(item, "rewrap item", ["wrapped", "context"])
                return RewrapItem(wrapped: try CustodyWire.wrappedKey(fields.members["wrapped"]),
                                  context: try CustodyWire.context(fields.members["context"]))
            }
            let results = try await service.rewrap(
                try context.custodyCaller(), items: batch, to: try CustodyWire.kek(body.members["to"], "to"),
                justification: try CustodyWire.justification(body.members["justification"]))
            return json(.object(["results": .array(results.map { result in
                switch result {
                case .success(let wrapped): .object(["wrapped": wrapped.json])
                case .failure(let error):
                    .object(["error": .object(["code": .string(error.code.rawValue), "message": .string(error.message)])])
                }
            })]))
        }
        api.post("keys/rotate") { _, context -> Response in
            _ = try force(context, service)
            let next = try await service.rotate(try context.custodyCaller(), requestID: context.requestID)
            return json(.object(["active": .string(next.description)]))
        }
        api.post("keys/archive") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "archive key", ["extract"])
            let kek = try await service.createArchiveKey(try context.custodyCaller(),
                                                         extract: try ExtractID(try body.string("extract")),
                                                         requestID: context.requestID)
            return json(.object(["kek": .string(kek.description)]))
        }
        api.post("keys/retire") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "retire", ["kek"])
            try await service.retire(try context.custodyCaller(), kek: try CustodyWire.kek(body.members["kek"], "kek"),
                                     requestID: context.requestID)
            return json(.object([:]))
        }
        api.post("keys/destroy") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request, limit: CustodyWire.maximumBody), "destroy", ["keks"])
            let keks = try body.array("keks").map { try CustodyWire.kek($0, "keks") }
            try await service.destroy(try context.custodyCaller(), keks: keks, requestID: context.requestID)
            return json(.object(["destroyed": .array(keks.map { .string($0.description) })]))
        }

        // Use cases, authored here by the force's custodians; signed for the platform.
        api.get("use-cases") { _, context -> Response in
            _ = try force(context, service)
            let signed = try await service.useCases(try context.custodyCaller(), requestID: context.requestID)
            return json(.object(["use_cases": .array(signed.map(\.useCase.json)), "signed": .array(signed.map(\.json))]))
        }
        api.put("use-cases/:id") { request, context -> Response in
            let force = try force(context, service)
            let id = try ResourceID(try context.parameters.require("id"), kind: "use case id")
            let body = try await request.body.collect(upTo: smallBody)
            let useCase = try UseCase(requestBody: Array(buffer: body), force: force, id: id)
            let signed = try await service.putUseCase(try context.custodyCaller(), useCase, requestID: context.requestID)
            return json(signed.useCase.json)
        }
        api.delete("use-cases/:id") { _, context -> Response in
            _ = try force(context, service)
            let signed = try await service.revokeUseCase(
                try context.custodyCaller(), id: try ResourceID(try context.parameters.require("id"), kind: "use case id"),
                requestID: context.requestID)
            return json(signed.useCase.json)
        }

        // Principals' signing keys and archive approvals, by custodians.
        api.get("principals") { _, context -> Response in
            _ = try force(context, service)
            let principals = try await service.principals(try context.custodyCaller(), requestID: context.requestID)
            return json(ListKey.principals.document(principals.map(\.json)))
        }
        api.put("principals/:principal") { request, context -> Response in
            _ = try force(context, service)
            let principal = try context.parameters.require("principal")
            let body = try fields(try await body(request), "principal key", ["public_key"])
            let key: Ed25519.PublicKey
            do { key = try Ed25519.PublicKey(pem: try body.string("public_key")) } catch let error as CustodyError {
                throw VaultError(.invalidParameter, "public_key: \(error.message)", cause: error)
            }
            try await service.registerPrincipal(try context.custodyCaller(), principal: principal, publicKey: key,
                                                requestID: context.requestID)
            return json(.object(["principal": .string(principal), "key": .string(key.fingerprint)]))
        }
        api.post("approvals") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "approval", ["extract", "analyst", "use_case"])
            let count = try await service.approve(try context.custodyCaller(),
                                                  extract: try ExtractID(try body.string("extract")),
                                                  analyst: try body.string("analyst"),
                                                  useCase: try body.string("use_case"), requestID: context.requestID)
            return json(ApprovalCountDocument(approvals: count).json)
        }

        // Witnessing the platform's log; alarms.
        api.post("witness") { request, context -> Response in
            _ = try force(context, service)
            let submission = try WitnessSubmission(json: try await body(request, limit: CustodyWire.maximumBody))
            let cosignature = try await service.witness(try context.custodyCaller(), submission,
                                                        requestID: context.requestID)
            return json(cosignature.json)
        }
        api.get("alarms") { _, context -> Response in
            _ = try force(context, service)
            let alarms = try await service.alarms(try context.custodyCaller(), requestID: context.requestID)
            return json(ListKey.alarms.document(alarms.map(\.json)))
        }
        api.post("alarms/clear") { request, context -> Response in
            _ = try force(context, service)
            let body = try fields(try await body(request), "clear", ["reason"])
            let cleared = try await service.clearAlarms(try context.custodyCaller(), reason: try body.string("reason"),
                                                        requestID: context.requestID)
            return json(ClearedAlarmsDocument(cleared: cleared).json)
        }

        // The force's own log.
        api.get("audit") { request, context -> Response in
            _ = try force(context, service)
            let since = try AuditSince(parsing: request.uri.queryParameters["since"].map(String.init) ?? "0")
            let export = try await service.exportAudit(try context.custodyCaller(), since: since,
                                                       requestID: context.requestID)
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
                try await export.write { try await writer.write(ByteBuffer(bytes: $0)) }
                try await writer.finish(nil)
            })
        }
    }

    /// The custody service's HTTPS application: TLS 1.3 only; client certificates from the platform CA are verified
    /// when presented (the force's people use bearer tokens instead).
    public static func makeApplication(service: CustodyService, metrics: @escaping @Sendable () -> [UInt8],
                                       logger: Logger) throws -> some ApplicationProtocol
    {
        let configuration = service.configuration
        let router = Router(context: VaultRequestContext.self)
        router.add(middleware: RequestMetricsMiddleware())
        router.add(middleware: ErrorMiddleware(logger: logger))
        register(on: router, service: service, metrics: metrics)
        let chain = try NIOSSLCertificate.fromPEMFile(configuration.certificate).map {
            NIOSSLCertificateSource.certificate($0)
        }
        let key = try NIOSSLPrivateKey(file: configuration.privateKey, format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .optionalVerification
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(configuration.platformCA))
        return Application(
            router: router, server: try .tls(.http1(configuration: .vault), tlsConfiguration: tls),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port),
                                 serverName: "vault-custody"),
            logger: logger)
    }
}

/// The custody service's background duties, a ServiceLifecycle service: the log synced to disk every second (unless
/// every request syncs it), a signed checkpoint of the log every `checkpointInterval` (and a last one at shutdown),
/// and dropping the nonces of expired read requests.
public struct CustodyJobs: Service {
    let service: CustodyService
    let checkpointInterval: Duration
    let logger: Logger

    public init(service: CustodyService, checkpointInterval: Duration = .seconds(60), logger: Logger) {
        self.service = service
        self.checkpointInterval = checkpointInterval
        self.logger = logger
    }

    public func run() async throws {
        let clock = ContinuousClock()
        var nextCheckpoint = clock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                if !service.configuration.syncEveryRequest { try await service.catalog.syncToDisk() }
                if clock.now >= nextCheckpoint {
                    try await service.checkpoint()
                    try await service.pruneNonces()
                    nextCheckpoint = clock.now.advanced(by: checkpointInterval)
                }
            } catch {
                logger.error("custody log upkeep failed; retrying", metadata: ["error": "\(error)"])
            }
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
            } catch {
                break
            }
        }
        try? await service.checkpoint()
        try? await service.catalog.syncToDisk()
    }
}
