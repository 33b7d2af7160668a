import Hummingbird
import KeyCustody

/// A force's archives: listings, dual-control retrievals and their reads, legal holds, early shredding, and the
/// destruction certificates.
enum ArchiveRoutes {
    static func certificateList(_ certificates: [DestructionCertificate]) -> JSONValue {
        ListKey.certificates.document(certificates.map(\.json))
    }

    static func register(on force: RouterGroup<AuthenticatedContext>, engine: VaultEngine) {
        force.get("archives") { _, context -> Response in
            let records = try await engine.listExtracts(principal: context.principal, force: try context.force(),
                                                        dataset: nil, archived: true, requestID: context.requestID)
            return VaultAPI.json(ListKey.archives.document(records.map(\.json)))
        }
        force.post("archives/:extract/retrievals") { request, context -> Response in
            let body = try await VaultAPI.body(request, as: RetrievalRequest.self)
            let retrieval = try await engine.requestRetrieval(
                principal: context.principal, force: try context.force(), extract: try context.extract(),
                useCaseID: body.useCase, reason: body.reason, requestID: context.requestID)
            return VaultAPI.json(retrieval.json(now: engine.currentTime), status: .created)
        }
        force.get("retrievals") { _, context -> Response in
            let list = try await engine.listRetrievals(principal: context.principal, force: try context.force(),
                                                       requestID: context.requestID)
            let now = engine.currentTime
            return VaultAPI.json(ListKey.retrievals.document(list.map { $0.json(now: now) }))
        }
        force.post("retrievals/:id/approve") { _, context -> Response in
            let retrieval = try await engine.approveRetrieval(
                principal: context.principal, force: try context.force(),
                id: try context.resource("id", kind: "retrieval id"), requestID: context.requestID)
            return VaultAPI.json(retrieval.json(now: engine.currentTime))
        }
        force.get("archives/:extract") { request, context -> Response in
            let reader = try await engine.openArchive(
                principal: context.principal, force: try context.force(), extract: try context.extract(),
                useCaseID: VaultAPI.useCase(request), requestID: context.requestID,
                signedRequest: try VaultAPI.signedRequest(request))
            return try VaultAPI.stream(reader, request: request)
        }
        force.post("archives/:extract/hold") { request, context -> Response in
            let body = try await VaultAPI.body(request, as: ReasonRequest.self)
            let record = try await engine.placeHold(principal: context.principal, force: try context.force(),
                                                    extract: try context.extract(), reason: body.reason,
                                                    requestID: context.requestID)
            return VaultAPI.json(record.json)
        }
        force.delete("archives/:extract/hold") { request, context -> Response in
            let body = try await VaultAPI.body(request, as: ReasonRequest.self)
            let record = try await engine.releaseHold(principal: context.principal, force: try context.force(),
                                                      extract: try context.extract(), reason: body.reason,
                                                      requestID: context.requestID)
            return VaultAPI.json(record.json)
        }
        force.post("archives/:extract/shred") { request, context -> Response in
            let body = try await VaultAPI.body(request, as: ReasonRequest.self)
            let certificate = try await engine.shredArchive(
                principal: context.principal, force: try context.force(), extract: try context.extract(),
                reason: body.reason, requestID: context.requestID)
            return VaultAPI.json(certificate.json)
        }
        force.get("certificates") { request, context -> Response in
            let extract = try request.uri.queryParameters["extract"].map { try ExtractID(String($0)) }
            let list = try await engine.certificates(principal: context.principal, force: try context.force(),
                                                     extract: extract, requestID: context.requestID)
            return VaultAPI.json(certificateList(list))
        }
        force.get("certificates/:id") { _, context -> Response in
            let certificate = try await engine.certificate(principal: context.principal, force: try context.force(),
                                                           id: try context.parameters.require("id"),
                                                           requestID: context.requestID)
            return VaultAPI.json(certificate.json)
        }
    }
}
