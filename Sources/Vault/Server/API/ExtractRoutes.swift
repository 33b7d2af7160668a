import HTTPTypes
import Hummingbird
import KeyCustody

/// A force's extracts: uploads, listings, live reads through a use case, and sealed exports.
enum ExtractRoutes {
    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.put("datasets/:dataset/extracts") { request, context -> Response in
            let sealed = request.headers[.contentType]?.hasPrefix(VaultAPI.sealedContentType) ?? false
            let upload = try await engine.beginUpload(principal: context.principal, force: try context.force(),
                                                      dataset: try context.dataset(), sealed: sealed,
                                                      requestID: context.requestID)
            do {
                for try await buffer in request.body { try await upload.append(buffer) }
            } catch {
                await upload.abort()
                throw error
            }
            let record = try await upload.commit()
            return VaultAPI.json(record.json, status: .created)
        }
        force.get("datasets/:dataset/extracts") { _, context -> Response in
            let records = try await engine.listExtracts(principal: context.principal, force: try context.force(),
                                                        dataset: try context.dataset(), archived: false,
                                                        requestID: context.requestID)
            return VaultAPI.json(ListKey.extracts.document(records.map(\.json)))
        }
        force.get("datasets/:dataset/current") { request, context -> Response in
            let reader = try await engine.openCurrent(
                principal: context.principal, force: try context.force(), dataset: try context.dataset(),
                useCaseID: VaultAPI.useCase(request), requestID: context.requestID,
                signedRequest: try VaultAPI.signedRequest(request))
            return try VaultAPI.stream(reader, request: request)
        }
        force.get("extracts/:extract") { request, context -> Response in
            let reader = try await engine.openExtract(
                principal: context.principal, force: try context.force(), extract: try context.extract(),
                useCaseID: VaultAPI.useCase(request), requestID: context.requestID,
                signedRequest: try VaultAPI.signedRequest(request))
            return try VaultAPI.stream(reader, request: request)
        }
        force.get("datasets/:dataset/export") { request, context -> Response in
            let expected = try request.uri.queryParameters["extract"].map { try ExtractID(String($0)) }
            let export = try await engine.exportExtract(
                principal: context.principal, force: try context.force(), dataset: try context.dataset(),
                expected: expected, requestID: context.requestID)
            return Response(
                status: .ok,
                headers: [.contentType: VaultAPI.sealedContentType,
                          HTTPField.Name("X-Vault-Extract")!: export.header.identity.extract.rawValue],
                body: ResponseBody(contentLength: Int(export.size)) { writer in
                    try await export.write { try await writer.write($0) }
                    try await writer.finish(nil)
                })
        }
    }
}
