import Hummingbird
import KeyCustody

/// Bearer tokens (DESIGN section 8): `GET /v1/tokens` lists those the caller manages (its own, and those of the
/// principals of forces it is custodian or ops of), `DELETE /v1/tokens/{id}` revokes one at once, on every instance.
/// Tokens are issued on the host (`vaultd token create`), never through the API.
enum TokenRoutes {
    static func register(on router: Router<VaultRequestContext>, tokens: TokenAdministration,
                         authentication: AuthenticationMiddleware)
    {
        let group = router.group("v1/tokens").add(middleware: authentication).group(context: AuthenticatedContext.self)
        group.get { _, context -> Response in
            let now = tokens.now()
            let list = try await tokens.list(caller: context.principal)
            return VaultAPI.json(ListKey.tokens.document(list.map { $0.document(now: now).json }))
        }
        group.delete(":id") { _, context -> Response in
            let token = try await tokens.revoke(id: try context.parameters.require("id"), caller: context.principal,
                                                requestID: context.requestID)
            return VaultAPI.json(token.document(now: tokens.now()).json)
        }
    }
}
