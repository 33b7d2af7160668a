import Hummingbird
import KeyCustody

/// A force's use cases: list, author or edit, revoke.
enum UseCaseRoutes {
    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.get("use-cases") { _, context -> Response in
            let useCases = try await engine.listUseCases(principal: context.principal, force: try context.force(),
                                                         requestID: context.requestID)
            return VaultAPI.json(ListKey.useCases.document(useCases.map(\.json)))
        }
        force.put("use-cases/:id") { request, context -> Response in
            let body = try await request.body.collect(upTo: 64 * 1024)
            let useCase = try UseCase(requestBody: Array(buffer: body), force: try context.force(),
                                      id: try context.resource("id", kind: "use case id"))
            let stored = try await engine.putUseCase(principal: context.principal, useCase,
                                                     requestID: context.requestID)
            return VaultAPI.json(stored.json)
        }
        force.delete("use-cases/:id") { _, context -> Response in
            let revoked = try await engine.revokeUseCase(principal: context.principal, force: try context.force(),
                                                         id: try context.resource("id", kind: "use case id"),
                                                         requestID: context.requestID)
            return VaultAPI.json(revoked.json)
        }
    }
}
