import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KeyCustody
import NIOCore
import Testing
import VaultTestSupport

@testable import Vault

// Issue 17 (an external audit's findings): the tests of defects 5 to 8.

/// Bearer tokens expire and can be revoked (at once, by their owner or a custodian or ops of the owner's forces, and
/// when their principal leaves the configuration); datasets carry a retention a custodian sets (DESIGN sections 7
/// and 8). Issue 17, defects 5 and 6.
extension APITests {
    func bearer(_ token: SecureBytes) -> String { token.withUnsafeBytes { "Bearer " + String(decoding: $0, as: UTF8.self) } }

    func status(_ client: some TestClientProtocol, _ method: HTTPRequest.Method, _ uri: String, _ token: String,
                body: String? = nil) async throws -> (HTTPResponse.Status, String)
    {
        try await client.execute(uri: uri, method: method, headers: [.authorization: token],
                                 body: body.map { ByteBuffer(string: $0) }) { ($0.status, String(buffer: $0.body)) }
    }

    @Test("an expired token is refused like an unknown one; a revoked token is refused from the next request on; only its owner or a custodian or ops of the owner's forces may revoke it, and the revocation is audited",
          arguments: TestBackend.storages)
    func tokenExpiryAndRevocation(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        // Issued two hours ago for an hour: expired.
        let expired = try await BearerToken.issue(for: vault.analyst, description: "old", lifetime: 3600,
                                                  catalog: vault.catalog, now: currentUnixTime() - 7200)
        let analyst = bearer(try await BearerToken.issue(for: vault.analyst, description: "laptop",
                                                          catalog: vault.catalog))
        let custodian = bearer(try await BearerToken.issue(for: vault.custodian, description: "c", catalog: vault.catalog))
        let gmpAnalyst = bearer(try await BearerToken.issue(for: vault.gmpAnalyst, description: "g",
                                                             catalog: vault.catalog))
        let app = Application(router: router(vault, principals: [vault.analyst, vault.custodian, vault.gmpAnalyst]))
        try await app.test(.router) { client in
            let (expiredStatus, expiredBody) = try await status(client, .get, "/v1/forces/wmp/use-cases",
                                                                bearer(expired))
            #expect(expiredStatus == .unauthorized && expiredBody.contains(#""code":"invalid_token""#))
            #expect(try await status(client, .get, "/v1/forces/wmp/use-cases", analyst).0 == .ok)

            // The analyst sees its own two tokens (one expired), never the token itself.
            let (_, listed) = try await status(client, .get, "/v1/tokens", analyst)
            let mine = try DocumentReader(try JSONParser.parse(Array(listed.utf8)), "tokens")
                .array("tokens", TokenDocument.init(json:))
            #expect(mine.map(\.state).sorted() == ["active", "expired"])
            #expect(mine.allSatisfy { $0.principal == vault.analyst.id })
            #expect(!listed.contains("vt_"))
            let laptop = try #require(mine.first { $0.description == "laptop" })

            // Another force's analyst cannot revoke it, nor even learn that it exists; a malformed id is a 400.
            let (foreign, foreignBody) = try await status(client, .delete, "/v1/tokens/\(laptop.id)", gmpAnalyst)
            #expect(foreign == .notFound && foreignBody.contains("no token \(laptop.id) that you may revoke"))
            #expect(try await status(client, .delete, "/v1/tokens/XYZ", gmpAnalyst).0 == .badRequest)
            #expect(try await status(client, .get, "/v1/forces/wmp/use-cases", analyst).0 == .ok)

            // wmp's custodian revokes it: the very next request with it is refused.
            let (revoked, _) = try await status(client, .delete, "/v1/tokens/\(laptop.id)", custodian)
            #expect(revoked == .ok)
            let (after, afterBody) = try await status(client, .get, "/v1/forces/wmp/use-cases", analyst)
            #expect(after == .unauthorized && afterBody.contains(#""code":"invalid_token""#))
            // Revoking it again changes nothing and succeeds (idempotent).
            #expect(try await status(client, .delete, "/v1/tokens/\(laptop.id)", custodian).0 == .ok)
        }
        let records = try await vault.catalog.auditRecords(force: vault.force).filter { $0.action == "token.revoke" }
        #expect(records.count == 1)
        #expect(records.first?.principal == vault.custodian.id)
        #expect(records.first?.detail["principal"] == .string(vault.analyst.id))
    } }

    @Test("a principal removed from the configuration loses its tokens at the next start: adding it back does not revive them", arguments: TestBackend.storages)
    func removedPrincipalTokens(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let token = try await BearerToken.issue(for: vault.analyst, description: "t", catalog: vault.catalog)
        let kept = try await BearerToken.issue(for: vault.custodian, description: "t", catalog: vault.catalog)
        // The next start's configuration no longer lists the analyst.
        let revoked = try await TokenAdministration(catalog: vault.catalog,
                                                    principals: [vault.custodian.id: vault.custodian])
            .revokeRemovedPrincipals()
        #expect(revoked.map(\.principal) == [vault.analyst.id])
        // Back in the configuration later: the old token stays dead; the custodian's still works.
        let app = Application(router: router(vault, principals: [vault.analyst, vault.custodian]))
        try await app.test(.router) { client in
            let dead = try await status(client, .get, "/v1/forces/wmp/use-cases", bearer(token))
            let alive = try await status(client, .get, "/v1/forces/wmp/use-cases", bearer(kept))
            #expect(dead.0 == .unauthorized && alive.0 == .ok)
        }
    } }

    @Test("a custodian sets a dataset's retention: shortening brings archives' expiry forward (audited, listed), the next sweep shreds what is now expired, a held archive stays held; others are refused",
          arguments: TestBackend.storages)
    func datasetRetention(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let first = try await vault.upload(Array("week 1".utf8))
        vault.clock.advance(86_400)
        let second = try await vault.upload(Array("week 2".utf8))
        vault.clock.advance(86_400)
        _ = try await vault.upload(Array("week 3".utf8))
        let engine = vault.engine
        _ = try await engine.placeHold(principal: vault.custodian, force: vault.force, extract: second.identity.extract,
                                       reason: "inquiry", requestID: "h")
        let before = try await engine.listExtracts(principal: vault.custodian, force: vault.force, dataset: nil,
                                                   archived: true, requestID: "l")
        #expect(before.allSatisfy { $0.expiresAt == $0.archivedAt.map { $0 + 365 * 86_400 } })

        // Refused for an analyst and for a retention out of range.
        await #expect(throws: VaultError.self) {
            try await engine.putDataset(principal: vault.analyst, force: vault.force, dataset: vault.dataset,
                                        retentionDays: 1, description: "", requestID: "p")
        }
        let invalid = await #expect(throws: VaultError.self) {
            try await engine.putDataset(principal: vault.custodian, force: vault.force, dataset: vault.dataset,
                                        retentionDays: 0, description: "", requestID: "p")
        }
        #expect(invalid?.code == .invalidParameter)

        let stored = try await engine.putDataset(principal: vault.custodian, force: vault.force, dataset: vault.dataset,
                                                 retentionDays: 1, description: "recorded crime", requestID: "p")
        #expect(stored.retentionDays == 1 && stored.description == "recorded crime")
        let listed = try await engine.listDatasets(principal: vault.analyst, force: vault.force, requestID: "d")
        #expect(listed.map(\.retentionDays) == [1] && listed.map(\.description) == ["recorded crime"])
        let after = try await engine.listExtracts(principal: vault.custodian, force: vault.force, dataset: nil,
                                                  archived: true, requestID: "l")
        #expect(after.count == 2)
        #expect(after.allSatisfy { $0.expiresAt == $0.archivedAt.map { $0 + 86_400 } })
        #expect(after.first { $0.identity.extract == second.identity.extract }?.hold?.reason == "inquiry")
        let record = try #require(try await vault.catalog.auditRecords(force: vault.force)
            .last { $0.action == "dataset.put" })
        #expect(record.principal == vault.custodian.id && record.outcome == .allowed)
        #expect(record.detail["previous_retention_days"] == .integer(365))
        #expect(record.detail["archives_moved"] == .integer(2))

        // A day later the unheld archive is expired and shredded; the held one stays.
        vault.clock.advance(2 * 86_400)
        let report = try await engine.shredExpired(principal: vault.ops, force: vault.force, dryRun: false,
                                                   requestID: "s")
        #expect(report.certificates.map(\.extract) == [first.identity.extract])
        #expect(report.held.map(\.identity.extract) == [second.identity.extract])
        let remaining = try await engine.listExtracts(principal: vault.custodian, force: vault.force, dataset: nil,
                                                      archived: true, requestID: "l")
        #expect(remaining.map(\.identity.extract) == [second.identity.extract])
    } }
}

/// Refusals of principals with no role in a force go into the platform's chain, never the force's, and the answer is
/// the same whether or not the force is served (issue 17, defect 8).
extension APITests {
    @Test("a principal with no role in a force cannot write into its chain, and learns nothing of which forces are served", arguments: TestBackend.storages)
    func outsidersRefusals(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("week 1".utf8))
        let outsider = bearer(try await BearerToken.issue(for: vault.gmpAnalyst, description: "g", catalog: vault.catalog))
        let analyst = bearer(try await BearerToken.issue(for: vault.analyst, description: "a", catalog: vault.catalog))
        let ops = bearer(try await BearerToken.issue(for: vault.ops, description: "o", catalog: vault.catalog))
        let auditor = bearer(try await BearerToken.issue(for: vault.auditor, description: "d", catalog: vault.catalog))
        let before = try await vault.catalog.auditHead(force: vault.force)
        let routes: [(HTTPRequest.Method, String, String?)] = [
            (.get, "datasets/crime/current?use_case=serious-violence", nil),
            (.get, "datasets/crime/current?use_case=%3Cscript%3E" + String(repeating: "x", count: 300), nil),
            (.get, "datasets/crime/extracts", nil), (.get, "archives", nil), (.get, "use-cases", nil),
            (.put, "use-cases/sv2", #"{"description":"d","lawful_basis":"b","datasets":["crime"],"principals":["x"]}"#),
            (.delete, "use-cases/serious-violence", nil), (.post, "keys/rotate", nil), (.get, "keys", nil),
            (.get, "audit", nil), (.get, "audit/search", nil), (.get, "datasets", nil),
            (.put, "datasets/crime", #"{"retention_days":1}"#), (.get, "retrievals", nil), (.get, "certificates", nil),
            (.put, "datasets/crime/extracts", "a,b\n"),
        ]
        let app = Application(router: router(vault, principals: [vault.gmpAnalyst, vault.analyst, vault.ops,
                                                                 vault.auditor]))
        try await app.test(.router) { client in
            for (method, path, body) in routes {
                let served = try await status(client, method, "/v1/forces/wmp/\(path)", outsider, body: body)
                let unserved = try await status(client, method, "/v1/forces/xyz/\(path)", outsider, body: body)
                #expect(served.0 == .forbidden, "\(method) \(path): \(served.1)")
                #expect(served.0 == unserved.0, "\(method) \(path): \(served.1) / \(unserved.1)")
                #expect(served.1.replacing("wmp", with: "xyz") == unserved.1, "\(method) \(path)")
            }
            // The force's own people still write their refusals into its chain.
            #expect(try await status(client, .post, "/v1/forces/wmp/keys/rotate", analyst).0 == .forbidden)
            // The platform's chain: ops export it; a force's auditor may not.
            let (exported, export) = try await status(client, .get, "/v1/forces/platform/audit", ops)
            #expect(exported == .ok)
            #expect(export.contains(#""force":"platform""#) && export.contains(#""principal":"analyst-gmp""#))
            #expect(try await status(client, .get, "/v1/forces/platform/audit", auditor).0 == .forbidden)
        }
        // Nothing of the outsider in wmp's chain: only the analyst's refused rotation was added there.
        let wmp = try await vault.catalog.auditRecords(force: vault.force).filter { $0.seq > (before?.seq ?? 0) }
        #expect(wmp.map(\.principal) == [vault.analyst.id], "\(wmp.map(\.action))")
        let platform = try await vault.catalog.auditRecords(force: .platform)
        let outsiders = platform.filter { $0.principal == vault.gmpAnalyst.id }
        #expect(outsiders.count == routes.count * 2)
        #expect(Set(outsiders.compactMap { $0.detail["force"]?.stringValue }) == ["wmp", "xyz"])
        #expect(outsiders.allSatisfy { $0.outcome == .denied })
        // The malformed use case is never stored as sent.
        let malformed = outsiders.filter { $0.detail["use_case_malformed"] == .bool(true) }
        #expect(malformed.count == 2 && malformed.allSatisfy { $0.useCase == nil })
        #expect(!platform.contains { $0.useCase?.contains("script") == true })
    } }
}

/// Every access is in the trail, not only decryptions: allowed metadata reads, and uploads that fail, with whether a
/// sealed file's key was unwrapped to verify it (issue 17, defect 7).
@Suite("audit of metadata reads and failed uploads")
struct MetadataAuditTests {
    @Test("listings, key status, use cases, retrievals, certificates and datasets are recorded when allowed; a tampered, a replayed and a cut-off upload each leave an error record", arguments: TestBackend.storages)
    func recorded(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let engine = vault.engine
        _ = try await vault.upload(Array("week 1".utf8))
        let before = try await vault.audit().count
        _ = try await engine.listExtracts(principal: vault.analyst, force: vault.force, dataset: vault.dataset,
                                          archived: false, requestID: "m1")
        _ = try await engine.listExtracts(principal: vault.custodian, force: vault.force, dataset: nil, archived: true,
                                          requestID: "m2")
        _ = try await engine.keyStatus(principal: vault.auditor, force: vault.force, requestID: "m3")
        _ = try await engine.listUseCases(principal: vault.analyst, force: vault.force, requestID: "m4")
        _ = try await engine.listRetrievals(principal: vault.custodian, force: vault.force, requestID: "m5")
        _ = try await engine.certificates(principal: vault.ops, force: vault.force, extract: nil, requestID: "m6")
        _ = try await engine.listDatasets(principal: vault.uploader, force: vault.force, requestID: "m7")
        await #expect(throws: CustodyError.self) {
            try await engine.certificate(principal: vault.ops, force: vault.force, id: "<script>", requestID: "m8")
        }
        let reads = try await vault.audit().dropFirst(before)
        #expect(reads.map(\.action) == ["list.extracts", "list.archives", "keys.status", "use-case.list",
                                        "archive.retrievals", "certificate.list", "dataset.list"])
        #expect(reads.allSatisfy { $0.outcome == .allowed })
        #expect(reads.map(\.principal) == [vault.analyst.id, vault.custodian.id, vault.auditor.id, vault.analyst.id,
                                           vault.custodian.id, vault.ops.id, vault.uploader.id])

        // A sealed file with one ciphertext byte flipped: refused, and the trail says custody unwrapped its key.
        let payload = testBytes(count: 50_000, seed: 4)
        _ = try vault.directory.write("extract.csv", payload)
        let sealed = try await SealedFile.seal(inputPath: vault.directory.file("extract.csv"),
                                               outputPath: vault.directory.file("x.vault"), dataset: vault.dataset,
                                               custody: vault.wmp)
        var tampered = try vault.directory.read("x.vault")
        tampered[tampered.count - 100] ^= 0x01
        await #expect(throws: VaultError.self) { try await vault.upload(tampered, sealed: true) }
        // The good file, then the same file again (a replay): the second is refused as a duplicate.
        _ = try await vault.upload(try vault.directory.read("x.vault"), sealed: true)
        await #expect(throws: VaultError(.duplicateExtract, "")) {
            try await vault.upload(try vault.directory.read("x.vault"), sealed: true)
        }
        // A plaintext upload whose body is cut off (the route aborts it).
        let cut = try await engine.beginUpload(principal: vault.uploader, force: vault.force, dataset: vault.dataset,
                                               sealed: false, requestID: "cut")
        try await cut.append(ByteBuffer(bytes: testBytes(count: 4096, seed: 5)))
        await cut.abort()

        let uploads = try await vault.audit().filter { $0.action == "upload" }
        let failed = uploads.filter { $0.outcome == .error }
        #expect(failed.map { $0.detail["reason"]?.stringValue } == ["integrity_failure", "duplicate_extract",
                                                                      "truncated"])
        #expect(failed[0].detail["key_unwrapped"] == .bool(true))
        #expect(failed[0].detail["extract"] == .string(sealed.header.identity.extract.rawValue))
        #expect(failed[1].detail["key_unwrapped"] == .bool(false))
        #expect(failed[2].detail["source"] == .string("plaintext") && failed[2].detail["received_bytes"] == .integer(4096))
        #expect(failed.allSatisfy { $0.principal == vault.uploader.id })
        let accepted = try #require(uploads.last { $0.outcome == .allowed })
        #expect(accepted.detail["key_unwrapped"] == .bool(true) && accepted.detail["source"] == .string("sealed"))
    } }
}

/// A read's authorisation holds from its check to its last byte (issue 17, defect 9).
@Suite("authorisation during a read")
struct ReadAuthorisationTests {
    @Test("a use case revoked between a read's check and its audit record ends the read before its first byte", arguments: TestBackend.storages)
    func revokedInTheGap(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture(catalog: { try AmbiguousCommitCatalog($0) })
        let catalog = try #require(vault.catalog as? AmbiguousCommitCatalog)
        _ = try await vault.upload(testBytes(count: 100_000, seed: 6))
        let useCase = try ResourceID("serious-violence")
        let force = vault.force
        // Revoked as of the engine's clock (the fixture's, which does not move by itself).
        let revokedAt = vault.clock.now - 1
        catalog.beforeNextAuditedWrite { inner in
            _ = try await inner.revokeUseCase(force: force, id: useCase, at: revokedAt, audit: [])
        }
        let error = await #expect(throws: VaultError.self) {
            _ = try await vault.engine.openCurrent(principal: vault.analyst, force: force, dataset: vault.dataset,
                                                   useCaseID: "serious-violence", requestID: "gap")
        }
        #expect(error?.code == .useCaseRevoked)
        let records = try await vault.audit().filter { $0.requestID == "gap" }
        #expect(records.map { "\($0.action):\($0.outcome.rawValue)" } == ["read:allowed", "read:denied"])
    } }

    @Test("an archive read ends part-way when its grant expires or its use case is revoked while it streams", arguments: TestBackend.storages, ["expired", "revoked"])
    func archiveStream(_ backend: TestBackend, _ change: String) async throws { try await backend.run {
        var settings = LifecycleSettings()
        settings.streamRecheckBytes = 1  // before every buffer after the first (about 1 MiB each)
        let vault = try await EngineFixture(settings: settings)
        let payload = testBytes(count: 4 << 20, seed: 7)
        let archived = try await vault.upload(payload)
        _ = try await vault.upload(Array("next week".utf8))
        let engine = vault.engine
        let extract = archived.identity.extract
        let custodian2 = Principal(id: "custodian-2", grants: [.custodian: [vault.force]])
        let retrieval = try await engine.requestRetrieval(principal: vault.analyst, force: vault.force, extract: extract,
                                                          useCaseID: "serious-violence", reason: "review",
                                                          requestID: "rq")
        _ = try await engine.approveRetrieval(principal: vault.custodian, force: vault.force, id: retrieval.id,
                                              requestID: "a1")
        _ = try await engine.approveRetrieval(principal: custodian2, force: vault.force, id: retrieval.id,
                                              requestID: "a2")
        let reader = try await engine.openArchive(principal: vault.analyst, force: vault.force, extract: extract,
                                                  useCaseID: "serious-violence", requestID: "archive-stream")
        var received = 0
        let error = await #expect(throws: VaultError.self) {
            try await reader.read(0..<reader.plaintextSize) { buffer in
                if received == 0 {
                    if change == "revoked" {
                        _ = try await engine.revokeUseCase(principal: vault.custodian, force: vault.force,
                                                           id: try ResourceID("serious-violence"), requestID: "rv")
                    } else {
                        vault.clock.advance(vault.settings.retrievalGrantSeconds + 60)
                    }
                }
                received += buffer.readableBytes
            }
        }
        #expect(error?.code == (change == "revoked" ? .useCaseRevoked : .grantExpired))
        #expect(received > 0 && received < payload.count, "\(received) of \(payload.count) bytes went out")
        let last = try #require(try await vault.audit().last { $0.requestID == "archive-stream" })
        #expect(last.action == "archive.read" && last.outcome == .denied)
        #expect(last.detail["reason"]?.stringValue == error?.code.rawValue)
    } }
}

/// What the API fuzzer found in the key routes (issue 17, fuzzing).
@Suite("migration requests the force's custody cannot serve")
struct MigrationRefusalTests {
    @Test("a move to a backend other than pkcs11 is a 400 with nothing recorded; a move the custody file does not configure is a 409 naming what it needs, its intent followed by an error record", arguments: TestBackend.storages)
    func refused(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let before = try await vault.audit().count
        let invalid = await #expect(throws: VaultError.self) {
            _ = try await vault.engine.migrateMasterKey(principal: vault.custodian, force: vault.force, to: "floppy",
                                                        requestID: "m1")
        }
        #expect(invalid?.code == .invalidParameter)
        #expect(try await vault.audit().count == before)
        let conflict = await #expect(throws: VaultError.self) {
            _ = try await vault.engine.migrateMasterKey(principal: vault.custodian, force: vault.force, to: "pkcs11",
                                                        requestID: "m2")
        }
        #expect(conflict?.code == .conflict)
        #expect(conflict?.message.contains("custody file") == true)
        let records = try await vault.audit().filter { $0.requestID == "m2" }
        #expect(records.map { "\($0.action):\($0.outcome.rawValue)" } == ["keys.migrate-intent:allowed",
                                                                           "keys.migrate:error"])
        // Nothing changed in custody.
        #expect(try await vault.wmp.activeMasterKey() == .master(force: vault.force, version: 1))
    } }
}

extension APITests {
    @Test("an internal error's 500 names the request id, to find it in vaultd's log (it was empty)")
    func internalErrorNamesRequest() async throws {
        let vault = try await EngineFixture()
        let router = router(vault, principals: [])
        router.get("/test-internal-error") { _, _ -> Response in throw CustodyError(.io, "disk on fire") }
        try await Application(router: router).test(.router) { client in
            try await client.execute(uri: "/test-internal-error", method: .get) { response in
                #expect(response.status == .internalServerError)
                let body = String(buffer: response.body)
                #expect(body.contains(#""code":"internal_error""#) || body.contains("internal"), "\(body)")
                #expect(body.range(of: #"internal error \(request req-[0-9a-f]{16}\)"#, options: .regularExpression)
                    != nil, "\(body)")
                #expect(!body.contains("disk on fire"))
            }
        }
    }
}
