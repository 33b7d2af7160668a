import HTTPTypes
import Hummingbird
import KeyCustody
import NIOCore

/// What is not one force's: liveness and readiness, the audit public key, the metrics (ops), and the shred sweep.
enum PlatformRoutes {
    static func register(
        on router: Router<VaultRequestContext>, engine: VaultEngine, authentication: AuthenticationMiddleware,
        metrics: @escaping @Sendable () -> [UInt8]
    ) {
        router.get("/healthz") { _, _ in VaultAPI.json(.object(["status": .string("ok")])) }
        router.get("/readyz") { _, _ -> Response in
            do {
                _ = try await engine.catalog.tokenPrincipal(hash: String(repeating: "0", count: 64), now: 0)
            } catch {
                return VaultAPI.json(.object(["status": .string("not ready"),
                                              "reason": .string("catalog unavailable")]),
                                     status: .serviceUnavailable)
            }
            if let reason = await engine.readiness() {
                return VaultAPI.json(.object(["status": .string("not ready"), "reason": .string(reason)]),
                                     status: .serviceUnavailable)
            }
            // A force whose own custody service is unreachable is named; the others are served, so vaultd stays ready.
            let unavailable = engine.unavailableCustody
            if !unavailable.isEmpty {
                return VaultAPI.json(.object(["status": .string("ready"), "custody_unavailable": .object(
                    Dictionary(uniqueKeysWithValues: unavailable.map { ($0.key.rawValue, JSONValue.string($0.value)) }))]))
            }
            return VaultAPI.json(.object(["status": .string("ready")]))
        }
        // The API's description (OpenAPI 3.1), public like the API's shape: a force generates its client from it.
        router.get("/v1/openapi.json") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json"],
                     body: .init(byteBuffer: ByteBuffer(bytes: VaultAPI.openAPIDocument)))
        }
        router.get("/v1/audit/public-key") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/x-pem-file"],
                     body: .init(byteBuffer: ByteBuffer(string: engine.auditPublicKeyPEM)))
        }
        // Metrics are metadata, but still only for operators: any principal with the ops role, who sees the series
        // of the forces it is ops for and the platform's own, never another force's.
        router.group("metrics").add(middleware: authentication).group(context: AuthenticatedContext.self)
            .get { _, context -> Response in
                try Policy.requireAnyForce(.ops, of: context.principal, for: "metrics")
                let forces = try Policy.forces(engine.forces, where: context.principal, holds: .ops)
                await engine.measureExpiredArchives()
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(bytes: VaultMetrics.visible(metrics(),
                                                                                                forces: Set(forces)))))
            }
        router.group("v1/shred").add(middleware: authentication).group(context: AuthenticatedContext.self)
            .post { request, context -> Response in
                let parameters = request.uri.queryParameters
                let known: Set<String> = ["expired", "dry_run", "force"]
                if let unknown = parameters.map({ String($0.key) }).sorted().first(where: { !known.contains($0) }) {
                    throw VaultError(.invalidParameter, "unknown parameter \(unknown) (known: dry_run, expired, force)")
                }
                guard parameters["expired"].map(String.init) == "true" else {
                    throw VaultError(.invalidParameter, "only expired archives are shredded here: pass expired=true "
                                        + "(a custodian shreds one archive early with POST .../archives/{x}/shred)")
                }
                let dryRun: Bool
                switch parameters["dry_run"].map(String.init) {
                case nil, "false": dryRun = false
                case "true": dryRun = true
                default: throw VaultError(.invalidParameter, "dry_run must be true or false")
                }
                let force = try parameters["force"].map { try ForceID(force: String($0)) }
                let report = try await engine.shredExpired(principal: context.principal, force: force, dryRun: dryRun,
                                                           requestID: context.requestID)
                return VaultAPI.json(report.json(dryRun: dryRun))
            }
    }
}
