import Hummingbird
import KeyCustody
import NIOCore

/// A force's audit trail: the verifiable export, searches, and the activity per day drawn from it.
enum AuditRoutes {
    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.get("audit") { request, context -> Response in
            let since = try AuditSince(parsing: request.uri.queryParameters["since"].map(String.init) ?? "0")
            let export = try await engine.exportAudit(principal: context.principal, force: try context.force(),
                                                      since: since, requestID: context.requestID)
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
                try await export.write { try await writer.write(ByteBuffer(bytes: $0)) }
                try await writer.finish(nil)
            })
        }
        force.get("activity") { request, context -> Response in
            let text = request.uri.queryParameters["days"].map(String.init) ?? "14"
            guard let days = Int(text), text.utf8.count <= 3 else {
                throw VaultError(.invalidParameter, "days must be a whole number from 1 to 366")
            }
            let force = try context.force()
            let activity = try await engine.activity(principal: context.principal, force: force, days: days,
                                                     requestID: context.requestID)
            return VaultAPI.json(activity.json(force: force, days: days))
        }
        force.get("audit/search") { request, context -> Response in
            let parameters = request.uri.queryParameters.map { (String($0.key), String($0.value)) }
            let lines = try await engine.searchAudit(principal: context.principal, force: try context.force(),
                                                     query: try AuditQuery(parameters: parameters),
                                                     requestID: context.requestID)
            var body = ByteBuffer()
            for line in lines {
                body.writeBytes(line.line)
                body.writeInteger(UInt8(0x0A))
            }
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: .init(byteBuffer: body))
        }
    }
}
