import Foundation
import GRDB
import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

/// The key and data lifecycle of DESIGN sections 4 and 7 on the embedded default: archive keys, online rotation,
/// dual-control retrieval, legal hold, crypto-shredding with certificates, and backups that die with the keys.
@Suite struct LifecycleTests {
    static let custodian2 = Principal(id: "custodian-2", grants: [.custodian: [try! ForceID(force: "wmp")]])
    static let analyst2 = Principal(id: "analyst-2", grants: [.analyst: [try! ForceID(force: "wmp")]])
    /// Holds both roles: may request, may approve others' requests, never their own.
    static let dual = Principal(id: "dual-role", grants: [.analyst: [try! ForceID(force: "wmp")],
                                                          .custodian: [try! ForceID(force: "wmp")]])

    func fixture(batch: Int = 2) async throws -> EngineFixture {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = batch
        settings.shredBatchSize = 2
        let fixture = try await EngineFixture(settings: settings)
        try await fixture.engine.putUseCase(principal: fixture.custodian, UseCase(
            force: fixture.force, id: try ResourceID("serious-violence"), description: "Serious violence duty",
            lawfulBasis: "PCSC Act 2022 s.8",
            datasets: try ["crime", "custody", "intel", "stops", "arrests"].map { try DatasetID(dataset: $0) },
            principals: [fixture.analyst.id, Self.analyst2.id, Self.dual.id]), requestID: "setup")
        return fixture
    }

    func readArchive(_ fixture: EngineFixture, _ principal: Principal, _ extract: ExtractID,
                     useCase: String = "serious-violence") async throws -> [UInt8]
    {
        let reader = try await fixture.engine.openArchive(principal: principal, force: fixture.force, extract: extract,
                                                          useCaseID: useCase, requestID: "ra")
        var output = [UInt8]()
        try await reader.read(0..<reader.plaintextSize) { output.append(contentsOf: $0.readableBytesView) }
        return output
    }

    func code(_ body: () async throws -> Void) async -> String? {
        do {
            try await body()
            return nil
        } catch let error as VaultError {
            return error.code.rawValue
        } catch let error as CustodyError {
            return error.code.rawValue
        } catch {
            return "\(error)"
        }
    }

    @Test("a rotation whose record cannot be written after custody rotated still leaves its intent in the trail",
          arguments: TestBackend.all)
    func rotationIntent(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await EngineFixture(catalog: { try AmbiguousCommitCatalog($0) })
        let faulty = try #require(f.catalog as? AmbiguousCommitCatalog)
        faulty.failNextWrite(containing: "INSERT INTO rotations")
        await #expect(throws: VaultError.self) {
            _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
        }
        #expect(faulty.failed)
        // Custody did rotate; the trail says it was asked to, by whom, from which version.
        #expect(try await f.wmp.activeMasterKey() == .master(force: f.force, version: 2))
        let intent = try #require(try await f.audit().last { $0.action == "keys.rotate-intent" })
        #expect(intent.principal == f.custodian.id && intent.requestID == "rot")
        #expect(intent.detail["from"]?.stringValue == KEKID.master(force: f.force, version: 1).description)
    } }

    @Test("a file sealed under v1 and uploaded after the rotation to v2 keeps v1 in its lineage: pending until v1 dies",
          arguments: TestBackend.all)
    func sealedBeforeRotation(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let v1 = KEKID.master(force: f.force, version: 1)
        let v2 = KEKID.master(force: f.force, version: 2)
        _ = try f.directory.write("extract.csv", testBytes(count: 30_000, seed: 8))
        _ = try await SealedFile.seal(inputPath: f.directory.file("extract.csv"),
                                      outputPath: f.directory.file("x.vault"), dataset: f.dataset, custody: f.wmp)
        _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
        let sealed = try await f.upload(try f.directory.read("x.vault"), sealed: true)
        #expect(sealed.wrappedKey.kek == v2)
        #expect(try await f.catalog.lineage(force: f.force, extract: sealed.identity.extract).map(\.kek) == [v1, v2])
        #expect(try await f.audit().last { $0.action == "upload" }?.detail["arrived_under"]?.stringValue
            == v1.description)
        // Archived, then shredded: the sealed file's copy of the key still opens under v1, so the certificate waits.
        _ = try await f.upload(testBytes(count: 1_000, seed: 9))
        _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
        let certificate = try await f.engine.shredArchive(principal: f.custodian, force: f.force,
                                                          extract: sealed.identity.extract, reason: "not needed",
                                                          requestID: "s")
        #expect(certificate.verdict == .pending)
        #expect(certificate.pendingKEKs.contains(v1))
        let reissued = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1,
                                                           requestID: "d")
        // v2 wrapped it while it was current: a backup of then still holds it under v2.
        #expect(reissued.first { $0.extract == sealed.identity.extract }?.pendingKEKs == [v2])
    } }

    @Test("a shredded archive's key tombstone leaves custody once its certificate is complete, never before",
          arguments: TestBackend.custodies)
    func tombstonesPruned(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        func listed(_ extract: ExtractRecord) async throws -> KeyState? {
            try await f.wmp.status().first { $0.id == .archive(force: f.force, extract: extract.identity.extract) }?.state
        }
        let a = try await f.upload(testBytes(count: 2_000, seed: 1))
        let b = try await f.upload(testBytes(count: 2_000, seed: 2))
        // Rotate to v2 and retire v1: a's certificate is pending on v1, so its archive key's tombstone stays.
        _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "r2")
        _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
        let first = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: a.identity.extract,
                                                    reason: "done", requestID: "s1")
        #expect(first.verdict == .pending)
        #expect(try await listed(a) == .destroyed)
        // v1 destroyed: the re-issued certificate is complete, and the tombstone goes.
        let reissued = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1,
                                                           requestID: "d1")
        #expect(reissued.first { $0.extract == a.identity.extract }?.verdict == .complete)
        #expect(try await listed(a) == nil)
        // b (archived under v2 by c's upload): with v2 rotated away and destroyed first, its certificate is complete
        // at once and its tombstone never stays.
        _ = try await f.upload(testBytes(count: 2_000, seed: 3))
        _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "r3")
        _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
        _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 2, requestID: "d2")
        let second = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: b.identity.extract,
                                                     reason: "done", requestID: "s2")
        #expect(second.verdict == .complete)
        #expect(try await listed(b) == nil)
        // The master key tombstones stay; the catalog's certificates still verify.
        let masters = try await f.wmp.status().filter { $0.kind == .master }.map(\.state)
        #expect(masters == [.destroyed, .destroyed, .active])
        #expect(second.verify(publicKey: f.engine.signer.publicKey))
        // Reopened from its file or token, the custody agrees.
        #expect(try await TestCustody.reopen(f.wmp, passphrase: "wmp passphrase 123").status()
            .filter { $0.kind == .archive }.isEmpty)
    } }

    @Test(arguments: TestBackend.all)
    func archivalMovesTheKeyToItsOwnArchiveKey(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let first = try await f.upload(testBytes(count: 40_000, seed: 1))
        #expect(first.wrappedKey.kek == .master(force: f.force, version: 1))
        _ = try await f.upload(testBytes(count: 1000, seed: 2))
        let archived = try #require(try await f.catalog.extract(force: f.force, id: first.identity.extract))
        let archiveKey = KEKID.archive(force: f.force, extract: first.identity.extract)
        #expect(archived.state == .archived)
        #expect(archived.wrappedKey.kek == archiveKey)
        #expect(try await f.wmp.status().contains { $0.id == archiveKey && $0.state == .active })
        // Lineage: the master key while current, then the archive key.
        let lineage = try await f.catalog.lineage(force: f.force, extract: first.identity.extract)
        #expect(lineage.map(\.kek) == [.master(force: f.force, version: 1), archiveKey])
        #expect(lineage[0].until == lineage[1].since)
        #expect(lineage[1].until == nil)
        // The live path cannot unwrap an archive key, even with a valid use case.
        let justification = Justification(principal: f.analyst.id, useCase: "serious-violence", purpose: .useCaseRead,
                                          requestID: "x")
        await #expect(throws: CustodyError.self) {
            _ = try await f.wmp.unwrap(archived.wrappedKey, context: archived.identity.wrapContext,
                                       justification: justification)
        }
        #expect(await code { _ = try await f.engine.openExtract(
            principal: f.analyst, force: f.force, extract: first.identity.extract, useCaseID: "serious-violence",
            requestID: "r") } == "archived_extract")
        let archive = try #require(try await f.audit().last { $0.action == "archive" })
        #expect(archive.detail["kek"]?.stringValue == archiveKey.description)
    } }

    @Test(arguments: TestBackend.all)
    func rotationRewrapsOnlineRetiresAndDestroys(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture(batch: 2)
        let datasets = try ["crime", "custody", "intel", "stops", "arrests"].map { try DatasetID(dataset: $0) }
        var contents: [DatasetID: [UInt8]] = [:]
        for (index, dataset) in datasets.enumerated() {
            contents[dataset] = testBytes(count: 20_000 + index, seed: UInt64(index))
            _ = try await f.upload(contents[dataset]!, dataset: dataset)
        }
        // One archive under v1 too: it has its own archive key, so rotation does not need to move it.
        _ = try await f.upload(testBytes(count: 5, seed: 9), dataset: datasets[0])
        contents[datasets[0]] = testBytes(count: 5, seed: 9)
        let rotation = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
        #expect(rotation.to == .master(force: f.force, version: 2))
        var status = try await f.engine.keyStatus(force: f.force)
        #expect(status.remaining == 5)
        #expect(status.keys.first { $0.id == .master(force: f.force, version: 1) }?.state == .retiring)
        // Reads and uploads work before the job ran, and an upload now is wrapped under v2.
        #expect(try await f.read() == contents[datasets[0]])
        let fresh = try await f.upload(testBytes(count: 77, seed: 7), dataset: datasets[1])
        contents[datasets[1]] = testBytes(count: 77, seed: 7)
        #expect(fresh.wrappedKey.kek == rotation.to)
        // Destroying v1 is refused while the job has not finished.
        #expect(await code { _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force,
                                                                     version: 1, requestID: "d") } == "key_in_use")
        // One pass moves one batch at a time; run to completion.
        let report = try await f.engine.runKeyJobsToCompletion(force: f.force)
        #expect(report.rewrapped == 4)
        #expect(report.retired == [.master(force: f.force, version: 1)])
        status = try await f.engine.keyStatus(force: f.force)
        #expect(status.remaining == 0)
        #expect(status.rotations.last?.processed == 4)
        #expect(status.rotations.last?.finishedAt != nil)
        for dataset in datasets {
            let current = try #require(try await f.catalog.currentExtract(force: f.force, dataset: dataset))
            #expect(current.wrappedKey.kek == rotation.to)
            #expect(try await f.read(dataset: dataset) == contents[dataset])
        }
        // Nothing double-processed: a second run moves nothing; each moved extract has v1 then v2 in its lineage.
        #expect(try await f.engine.runKeyJobs(force: f.force) == KeyJobReport())
        let moved = try #require(try await f.catalog.currentExtract(force: f.force, dataset: datasets[2]))
        #expect(try await f.catalog.lineage(force: f.force, extract: moved.identity.extract).map(\.kek)
            == [.master(force: f.force, version: 1), rotation.to])
        // Non-custodians cannot rotate or destroy; the active version cannot be destroyed.
        #expect(await code { _ = try await f.engine.rotateMasterKey(principal: f.ops, force: f.force,
                                                                    requestID: "x") } == "role_required")
        #expect(await code { _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force,
                                                                     version: 2, requestID: "d") } == "key_in_use")
        _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1, requestID: "d")
        #expect(try await f.wmp.status().first { $0.id == .master(force: f.force, version: 1) }?.state == .destroyed)
        for dataset in datasets { #expect(try await f.read(dataset: dataset) == contents[dataset]) }
        let actions = try await f.audit().map(\.action)
        for action in ["keys.rotate", "keys.rewrap", "keys.retire", "keys.rotation-finished", "keys.destroy"] {
            #expect(actions.contains(action), "missing \(action)")
        }
    } }

    @Test(arguments: TestBackend.all)
    func rewrapIsCompareAndSetAndBadKeysAreSetAside(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let a = try await f.upload(testBytes(count: 100, seed: 1))
        let b = try await f.upload(testBytes(count: 100, seed: 2), dataset: try DatasetID(dataset: "custody"))
        _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
        // A rewrap computed from a wrapped key the row no longer holds changes nothing.
        let other = try await f.wmp.rewrap(b.wrappedKey, context: b.identity.wrapContext,
                                           to: .master(force: f.force, version: 2),
                                           justification: Justification(principal: "t", purpose: .rewrap, requestID: "t"))
        let moved = try await f.catalog.applyRewraps(
            force: f.force, rotation: nil, rewraps: [Rewrap(identity: a.identity, from: b.wrappedKey, to: other)],
            failures: [], now: 1, audit: [])
        #expect(moved == 0)
        #expect(try await f.catalog.extract(force: f.force, id: a.identity.extract)?.wrappedKey == a.wrappedKey)
        // A row whose wrapped key was swapped for another extract's (context binding) cannot be rewrapped: it is
        // set aside and counted, the others move, and v1 stays retiring.
        try await f.rawUpdate("UPDATE extracts SET wrapped_key = ? WHERE id = ?",
                              [b.wrappedKey.json.canonicalString, a.identity.extract.rawValue])
        let report = try await f.engine.runKeyJobsToCompletion(force: f.force)
        #expect(report.rewrapped == 1)
        #expect(report.failed == 1)
        #expect(report.retired.isEmpty)
        let status = try await f.engine.keyStatus(force: f.force)
        #expect(status.failures.map(\.extract) == [a.identity.extract])
        #expect(status.failures.first?.code == "context_mismatch")
        #expect(status.json["rewrap"]?["failed"]?.integerValue == 1)
        #expect(status.keys.first { $0.id == .master(force: f.force, version: 1) }?.state == .retiring)
    } }

    @Test(arguments: TestBackend.all)
    func archiveRetrievalNeedsTwoDifferentCustodians(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let content = testBytes(count: 50_000, seed: 3)
        let archive = try await f.upload(content).identity.extract
        _ = try await f.upload(testBytes(count: 10, seed: 4))
        let request = try await f.engine.requestRetrieval(principal: f.analyst, force: f.force, extract: archive,
                                                          useCaseID: "serious-violence", reason: "Op Falcon review",
                                                          requestID: "q")
        #expect(request.state == .pending)
        #expect(await code { _ = try await readArchive(f, f.analyst, archive) } == "approval_pending")
        _ = try await f.engine.approveRetrieval(principal: f.custodian, force: f.force, id: request.id, requestID: "a1")
        #expect(await code { _ = try await f.engine.approveRetrieval(principal: f.custodian, force: f.force,
                                                                     id: request.id, requestID: "a2") }
            == "duplicate_approval")
        #expect(await code { _ = try await readArchive(f, f.analyst, archive) } == "approval_pending")
        #expect(await code { _ = try await f.engine.approveRetrieval(principal: f.analyst, force: f.force,
                                                                     id: request.id, requestID: "a3") }
            == "role_required")
        let granted = try await f.engine.approveRetrieval(principal: Self.custodian2, force: f.force, id: request.id,
                                                          requestID: "a4")
        #expect(granted.state == .granted)
        #expect(granted.expiresAt == (granted.grantedAt ?? 0) + 86_400)
        #expect(try await readArchive(f, f.analyst, archive) == content)
        // Another analyst named in the same use case, or the right analyst under another use case: no grant.
        #expect(await code { _ = try await readArchive(f, Self.analyst2, archive) } == "no_grant")
        #expect(await code { _ = try await readArchive(f, f.analyst, archive, useCase: "other") } == "no_grant")
        // The live path still refuses it.
        #expect(await code { _ = try await f.engine.openExtract(principal: f.analyst, force: f.force, extract: archive,
                                                                useCaseID: "serious-violence", requestID: "l") }
            == "archived_extract")
        f.clock.advance(86_400)
        #expect(await code { _ = try await readArchive(f, f.analyst, archive) } == "grant_expired")
        // A principal with both roles cannot approve their own request.
        let own = try await f.engine.requestRetrieval(principal: Self.dual, force: f.force, extract: archive,
                                                      useCaseID: "serious-violence", reason: "own", requestID: "q2")
        #expect(await code { _ = try await f.engine.approveRetrieval(principal: Self.dual, force: f.force, id: own.id,
                                                                     requestID: "a5") } == "self_approval")
        // Every refusal is in the audit trail.
        let denied = try await f.audit().filter { $0.outcome == .denied }
        for reason in ["approval_pending", "duplicate_approval", "no_grant", "grant_expired", "self_approval"] {
            #expect(denied.contains { $0.detail["reason"]?.stringValue == reason }, "no audited \(reason)")
        }
        let read = try #require(try await f.audit().first { $0.action == "archive.read" && $0.outcome == .allowed })
        #expect(read.detail["approvers"] == .array([.string(f.custodian.id), .string(Self.custodian2.id)]))
        #expect(try await f.audit().contains { $0.action == "archive.grant" })
    } }

    @Test(arguments: TestBackend.all)
    func heldArchivesSurviveShreddingAndShreddedOnesAreGone(_ backend: TestBackend) async throws {
        try await backend.run {
            let f = try await fixture()
            let held = try await f.upload(testBytes(count: 3000, seed: 1)).identity.extract
            let expired = try await f.upload(testBytes(count: 3000, seed: 2)).identity.extract
            _ = try await f.upload(testBytes(count: 10, seed: 3))
            _ = try await f.engine.placeHold(principal: f.custodian, force: f.force, extract: held,
                                             reason: "Case 44/2026 disclosure", requestID: "h")
            #expect(await code { _ = try await f.engine.placeHold(principal: f.ops, force: f.force, extract: held,
                                                                  reason: "x", requestID: "h") } == "role_required")
            // Nothing is expired yet.
            var report = try await f.engine.shredExpired(principal: f.ops, force: nil, dryRun: false, requestID: "s")
            #expect(report.certificates.isEmpty)
            f.clock.advance(366 * 86_400)
            report = try await f.engine.shredExpired(principal: f.ops, force: f.force, dryRun: true, requestID: "s")
            #expect(report.candidates.map(\.identity.extract) == [expired])
            #expect(report.held.map(\.identity.extract) == [held])
            #expect(try await f.catalog.extract(force: f.force, id: expired)?.state == .archived)
            #expect(await code { _ = try await f.engine.shredExpired(principal: f.custodian, force: f.force, dryRun: false,
                                                                     requestID: "s") } == "role_required")
            // A sweep of every force one is ops for, by a principal who is ops of none.
            #expect(await code { _ = try await f.engine.shredExpired(principal: f.custodian, force: nil, dryRun: false,
                                                                     requestID: "s") } == "role_required")
            report = try await f.engine.shredExpired(principal: f.ops, force: nil, dryRun: false, requestID: "s")
            #expect(report.certificates.map(\.extract) == [expired])
            #expect(report.held.map(\.identity.extract) == [held])
            let certificate = report.certificates[0]
            #expect(certificate.verify(publicKey: f.engine.signer.publicKey))
            #expect(certificate.verdict == .pending)
            #expect(certificate.pendingKEKs == [.master(force: f.force, version: 1)])
            #expect(certificate.body["keks_destroyed"] == .array([.string("ak:wmp:\(expired)")]))
            #expect(certificate.body["reason"]?.stringValue == "retention-expired")
            // The archive key is a tombstone, the blob is gone, the extract answers "shredded" with its certificate.
            #expect(try await f.wmp.status().first { $0.id == .archive(force: f.force, extract: expired) }?.state
                == .destroyed)
            #expect(try await f.blobBytes(ExtractIdentity(force: f.force, dataset: f.dataset, extract: expired)) == nil)
            do {
                _ = try await f.engine.openExtract(principal: f.analyst, force: f.force, extract: expired,
                                                   useCaseID: "serious-violence", requestID: "g")
                Issue.record("a shredded extract opened")
            } catch let error as VaultError {
                #expect(error.code == .shredded)
                #expect(error.details["certificate"] == certificate.id)
                #expect(HTTPErrorDescription.from(error)?.status == 410)
            }
            // A tampered certificate does not verify.
            guard case .object(var body) = certificate.body else { return }
            body["verdict"] = .string("complete")
            body["pending_keks"] = .array([])
            let forged = try DestructionCertificate(body: .object(body), signature: certificate.signature)
            #expect(!forged.verify(publicKey: f.engine.signer.publicKey))
            // Early shredding of the held archive is refused until the hold is released.
            #expect(await code { _ = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: held,
                                                                     reason: "no longer needed", requestID: "e") }
                == "on_hold")
            _ = try await f.engine.releaseHold(principal: f.custodian, force: f.force, extract: held,
                                               reason: "case closed", requestID: "r")
            let early = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: held,
                                                        reason: "no longer needed", requestID: "e")
            #expect(early.body["reason"]?.stringValue == "early")
            #expect(early.body["note"]?.stringValue == "no longer needed")
            // Destroying the master key that wrapped both while current re-issues both certificates as complete.
            _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
            _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
            let reissued = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1,
                                                               requestID: "d")
            #expect(Set(reissued.map(\.extract)) == [held, expired])
            #expect(reissued.allSatisfy { $0.verdict == .complete && $0.verify(publicKey: f.engine.signer.publicKey) })
            #expect(try await f.catalog.extract(force: f.force, id: expired)?.certificate
                == reissued.first { $0.extract == expired }?.id)
            #expect(reissued.first { $0.extract == expired }?.body["supersedes"]?.stringValue == certificate.id)
        }
    }

    /// DESIGN section 3: "a shredded archive resurrected from a backup of the catalog". A backup taken after
    /// archival, the blobs from before, and the force's current keyring: nothing decrypts the archive any more.
    // SQLite backups (VACUUM INTO); PostgreSQL backups are pg_dump's.
    @Test(arguments: TestBackend.custodies)
    func aBackupTakenAfterArchivalDiesWithTheShred(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let content = testBytes(count: 70_000, seed: 5)
        let whileCurrent = f.directory.file("backup-current.sqlite")
        let archive = try await f.upload(content)
        try await f.sqlite.backup(to: whileCurrent)
        _ = try await f.upload(testBytes(count: 10, seed: 6))
        let afterArchival = f.directory.file("backup-archived.sqlite")
        try await f.sqlite.backup(to: afterArchival)
        let identity = archive.identity
        let blob = Data(try #require(try await f.blobBytes(identity)))
        _ = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: identity.extract,
                                            reason: "retention reached", requestID: "s")

        /// What an attacker with the backup, the old blob and the current keyring can do.
        func attempt(_ backupPath: String) async throws -> String? {
            let backup = try SQLiteCatalog(path: backupPath)
            let row = try #require(try await backup.extract(force: f.force, id: identity.extract))
            let keyring = try TestCustody.reopen(f.wmp, passphrase: "wmp passphrase 123")
            let purposes: [Justification.Purpose] = [.useCaseRead, .archiveRetrieval, .export]
            var lastError: String?
            for purpose in purposes {
                do {
                    let key = try await keyring.unwrap(row.wrappedKey, context: identity.wrapContext,
                                                       justification: Justification(principal: "attacker",
                                                                                    useCase: "x", purpose: purpose,
                                                                                    requestID: "x"))
                    let reader = try CobblestoneReader(key: key, context: identity.payloadContext,
                                                       source: MemoryCiphertext(bytes: Array(blob)))
                    var output = [UInt8]()
                    try reader.read(0..<reader.plaintextSize) { output.append(contentsOf: $0) }
                    #expect(output == content)
                    return nil
                } catch let error as CustodyError {
                    // A purpose the key's kind refuses says nothing; what matters is why the right one fails.
                    if error.code != .purposeRefused { lastError = error.code.rawValue }
                }
            }
            return lastError
        }
        // After archival the backup holds the key only under the archive key, destroyed by the shred (its
        // certificate pending on v1, the tombstone stays: custody says it was destroyed).
        #expect(try await attempt(afterArchival) == "key_destroyed")
        // A backup from while it was current holds it under master key v1: the certificate says so (pending) ...
        #expect(try await attempt(whileCurrent) == nil)
        // ... until v1 is rotated out and destroyed.
        _ = try await f.engine.rotateMasterKey(principal: f.custodian, force: f.force, requestID: "rot")
        _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
        _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1, requestID: "d")
        #expect(try await attempt(whileCurrent) == "key_destroyed")
        // The certificate is complete now, so custody no longer keeps the archive key's tombstone: the backup's copy
        // names a key custody does not hold at all.
        #expect(try await attempt(afterArchival) == "unknown_key")
    } }

    @Test(arguments: TestBackend.all)
    func wrappedKeyFastTextIsTheCanonicalJSON(_ backend: TestBackend) async throws { try await backend.run {
        for kek in [KEKID.master(force: try ForceID(force: "wmp"), version: 12),
                    .archive(force: try ForceID(force: "wmp"), extract: .generate())] {
            let wrapped = try WrappedKey(kek: kek, iv: SecureRandom.bytes(count: 12),
                                         ciphertext: SecureRandom.bytes(count: 48))
            #expect(wrapped.canonicalText == wrapped.json.canonicalString)
            #expect(try WrappedKey(json: try JSONParser.parse(wrapped.canonicalText)) == wrapped)
        }
    } }

    @Test(arguments: TestBackend.all)
    func legacyArchivesUnderMasterKeysGetArchiveKeys(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await fixture()
        let first = try await f.upload(testBytes(count: 100, seed: 1))
        _ = try await f.upload(testBytes(count: 100, seed: 2))
        // As a catalog from before archive keys existed would hold it: archived, under the master key.
        try await f.rawUpdate("UPDATE extracts SET wrapped_key = ?, kek = ? WHERE id = ?",
                              [first.wrappedKey.json.canonicalString, first.wrappedKey.kek.description,
                               first.identity.extract.rawValue])
        let report = try await f.engine.runKeyJobsToCompletion(force: f.force)
        #expect(report.archived == 1)
        let archived = try #require(try await f.catalog.extract(force: f.force, id: first.identity.extract))
        #expect(archived.wrappedKey.kek == .archive(force: f.force, extract: first.identity.extract))
    } }
}

extension SQLiteCatalog {
    /// Test-only direct SQL on the catalog (to simulate corruption or a legacy row).
    func rawWrite(_ body: @escaping @Sendable (Database) throws -> Void) async throws {
        try await write(audited: false, body)
    }
}

/// DESIGN 5.8: a certificate says `complete` only when custody positively reports every KEK of the lineage
/// destroyed (its tombstone). A KEK custody does not list (say its keyring lines were removed after a move to an
/// HSM) is unknown: it may still open a backup's copy of the extract key.
@Suite("destruction certificates count only positive destruction")
struct CertificateVerdictTests {
    let force = try! ForceID(force: "wmp")

    func ticket() throws -> ShredTicket {
        let identity = ExtractIdentity(force: force, dataset: try DatasetID(dataset: "crime"), extract: .generate())
        let wrapped = try WrappedKey(kek: .archive(force: force, extract: identity.extract),
                                     iv: SecureRandom.bytes(count: 12), ciphertext: SecureRandom.bytes(count: 48))
        let record = ExtractRecord(identity: identity, state: .shredding, wrappedKey: wrapped, plaintextSize: 10,
                                   ciphertextSize: 60, ciphertextSHA256: SecureRandom.bytes(count: 32),
                                   source: .plaintext, uploadedBy: "ingest", createdAt: 1_000)
        return ShredTicket(record: record, reason: .retentionExpired, note: nil, requestedBy: "vaultd",
                           startedAt: 9_000)
    }

    @Test("a master key custody no longer lists leaves the verdict pending, its state unknown, until it is destroyed")
    func unlistedKeyIsPending() throws {
        let signer = AuditSigner(key: Ed25519.PrivateKey())
        let ticket = try ticket()
        let master = KEKID.master(force: force, version: 1)
        let archive = ticket.record.wrappedKey.kek
        let lineage = [LineageEntry(kek: master, since: 1_000, until: 5_000),
                       LineageEntry(kek: archive, since: 5_000, until: nil)]
        // Custody lists the archive key (just destroyed) but not master key 1.
        let certificate = try DestructionCertificate.issue(
            ticket: ticket, shreddedAt: 9_000, keksDestroyed: [archive], lineage: lineage,
            keyStates: [archive: .destroyed], signer: signer, now: 9_000)
        #expect(certificate.verdict == .pending)
        #expect(certificate.pendingKEKs == [master])
        let states = certificate.body["lineage"]?.arrayValue?.compactMap { $0["state"]?.stringValue }
        #expect(states == ["unknown", "destroyed"])
        // Still unlisted later: still pending. Reported destroyed: complete.
        let again = try certificate.reissued(keyStates: [archive: .destroyed], signer: signer, now: 9_100)
        #expect(again.verdict == .pending && again.pendingKEKs == [master])
        let done = try certificate.reissued(keyStates: [archive: .destroyed, master: .destroyed], signer: signer,
                                        now: 9_200)
        #expect(done.verdict == .complete && done.pendingKEKs.isEmpty)
        #expect(done.body["lineage"]?.arrayValue?.compactMap { $0["state"]?.stringValue } == ["destroyed", "destroyed"])
        #expect(done.verify(publicKey: signer.publicKey))
    }
}
