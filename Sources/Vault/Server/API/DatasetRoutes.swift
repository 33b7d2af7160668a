import Hummingbird
import KeyCustody

/// A force's datasets: their retention for archives and description.
enum DatasetRoutes {
    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.get("datasets") { _, context -> Response in
            let datasets = try await engine.listDatasets(principal: context.principal, force: try context.force(),
                                                         requestID: context.requestID)
            return VaultAPI.json(ListKey.datasets.document(datasets.map(\.json)))
        }
        force.put("datasets/:dataset") { request, context -> Response in
            let body = try DatasetRequest(requestBody: Array(buffer: try await request.body.collect(upTo: 16 * 1024)))
            let stored = try await engine.putDataset(
                principal: context.principal, force: try context.force(), dataset: try context.dataset(),
                retentionDays: body.retentionDays, description: body.description, requestID: context.requestID)
            return VaultAPI.json(stored.json)
        }
    }
}
