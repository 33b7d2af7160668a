import Hummingbird
import KeyCustody

/// A force's master keys: status, rotation, migration to its token, destruction of a retired version.
enum KeyRoutes {
    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.get("keys") { _, context -> Response in
            VaultAPI.json(try await engine.keyStatus(principal: context.principal, force: try context.force(),
                                                     requestID: context.requestID).json)
        }
        force.post("keys/rotate") { _, context -> Response in
            let rotation = try await engine.rotateMasterKey(principal: context.principal, force: try context.force(),
                                                            requestID: context.requestID)
            return VaultAPI.json(rotation.json, status: .accepted)
        }
        force.post("keys/migrate") { request, context -> Response in
            let body = try await VaultAPI.body(request, as: MigrationRequest.self)
            let rotation = try await engine.migrateMasterKey(principal: context.principal, force: try context.force(),
                                                             to: body.to, requestID: context.requestID)
            return VaultAPI.json(rotation.json, status: .accepted)
        }
        force.post("keys/:version/destroy") { _, context -> Response in
            let version = try context.masterKeyVersion()
            let force = try context.force()
            let reissued = try await engine.destroyMasterKey(principal: context.principal, force: force,
                                                             version: version, requestID: context.requestID)
            return VaultAPI.json(KeyDestructionDocument(destroyed: .master(force: force, version: version),
                                                        reissued: reissued).json)
        }
    }
}
