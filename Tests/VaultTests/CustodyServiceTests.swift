import Foundation
import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

/// The force's custody service's rules, in process (DESIGN 5.6, 5.7, 6.3): what it unwraps for, what it refuses and
/// records, how it witnesses the platform's log. The service fronts the custody backend under test; the end-to-end
/// trust test runs it as a real process against a real vaultd.
@Suite("force custody service rules")
struct CustodyServiceTests {
    final class Fixture: @unchecked Sendable {
        let directory: TemporaryDirectory
        let force = try! ForceID(force: "wyp")
        let dataset = try! DatasetID(dataset: "crime")
        let clock = TestClock()
        let service: CustodyService
        let custody: any KeyCustodian
        let analystKey = PrincipalSigningKey(principal: "analyst-wyp")
        let platform = CustodyCaller.platform("vaultd-a")
        let custodian = CustodyCaller.person(Principal(id: "custodian-wyp", grants: [.custodian: [try! ForceID(force: "wyp")]]))
        let custodian2 = CustodyCaller.person(Principal(id: "custodian2-wyp",
                                                        grants: [.custodian: [try! ForceID(force: "wyp")]]))
        let auditor = CustodyCaller.person(Principal(id: "dpo-wyp", grants: [.auditor: [try! ForceID(force: "wyp")]]))

        /// `wrap`: what the service gets in place of the custody under test (a probe around it).
        init(stopOnAlarm: Bool = true, wrap: (any KeyCustodian) -> any KeyCustodian = { $0 }) async throws {
            directory = try TemporaryDirectory("custody-service")
            custody = wrap(try TestCustody.create(force: force, directory: directory, passphrase: "wyp passphrase 123"))
            var configuration = try CustodyServiceConfiguration.parse("""
                listen = "127.0.0.1:1"
                data_dir = "data"
                force = "wyp"
                custody = "keys.toml"
                stop_unwraps_on_alarm = \(stopOnAlarm)
                [tls]
                certificate = "c.pem"
                private_key = "c.key"
                platform_ca = "ca.pem"
                """, source: "custody.toml", baseDirectory: directory.path)
            configuration.principals = [:]
            let catalog = try SQLiteCatalog(path: directory.file("custody.sqlite"),
                                            extraMigrations: [CustodyService.migration])
            let clock = clock
            service = try await CustodyService(configuration: configuration, custody: custody, catalog: catalog,
                                               signer: AuditSigner(key: Ed25519.PrivateKey()), logger: logger,
                                               now: { clock.now })
            _ = try await service.putUseCase(custodian, UseCase(
                force: force, id: try ResourceID("serious-violence"), description: "SV duty", lawfulBasis: "s.8",
                datasets: [dataset], principals: ["analyst-wyp"]), requestID: "setup")
            try await service.registerPrincipal(custodian, principal: "analyst-wyp",
                                                publicKey: analystKey.key.publicKey, requestID: "setup")
        }

        /// A current extract's key, made through the service as an upload would.
        func extract(_ id: ExtractID = .generate(), dataset: DatasetID? = nil) async throws -> (WrapContext, DataKey) {
            let context = WrapContext(force: force, dataset: dataset ?? self.dataset, extract: id)
            let key = try await service.generate(platform, context: context, justification: Justification(
                principal: "ingest-wyp", purpose: .upload, requestID: "up-\(id)"))
            return (context, key)
        }

        func request(_ context: WrapContext, purpose: Justification.Purpose = .useCaseRead, principal: String = "analyst-wyp",
                     useCase: String = "serious-violence", extract: String = ReadRequest.currentExtract,
                     dataset: DatasetID? = nil, issued: Int64? = nil, lifetime: Int64 = 120,
                     key: Ed25519.PrivateKey? = nil) -> SignedReadRequest {
            SignedReadRequest(signing: ReadRequest(
                force: force, dataset: dataset ?? context.dataset, extract: extract, principal: principal,
                purpose: purpose, useCase: useCase, issued: issued ?? clock.now, lifetime: lifetime),
                with: key ?? analystKey.key)
        }

        func unwrap(_ context: WrapContext, _ wrapped: WrappedKey, signed: SignedReadRequest?,
                    purpose: Justification.Purpose = .useCaseRead, principal: String = "analyst-wyp",
                    useCase: String? = "serious-violence", requestID: String = "req-\(UUID().uuidString.prefix(8))")
            async throws -> SecureBytes
        {
            try await service.unwrap(platform, wrapped: wrapped, context: context, justification: Justification(
                principal: principal, useCase: useCase, purpose: purpose, requestID: requestID, signedRequest: signed))
        }

        func log() async throws -> [AuditRecord] { try await service.catalog.auditRecords(force: force) }
    }

    /// The refusal's code, checking that it was recorded in the force's log as denied.
    func refusal(_ f: Fixture, _ body: () async throws -> Void) async throws -> String? {
        let before = try await f.log().count
        do {
            try await body()
        } catch let error as VaultError {
            let records = try await f.log()
            #expect(records.count == before + 1, "the refusal is recorded")
            #expect(records.last?.outcome == .denied)
            #expect(records.last?.detail["reason"]?.stringValue == error.code.rawValue)
            return error.code.rawValue
        }
        return nil
    }

    @Test("the service's own calls to the force's keyring or token run on the blocking-work threads",
          arguments: TestBackend.custodies)
    func custodyOffTheCooperativePool(_ backend: TestBackend) async throws { try await backend.run {
        var probe: ThreadProbeCustodian?
        let f = try await Fixture(wrap: { base in
            let wrapped = ThreadProbeCustodian(base: base)
            probe = wrapped
            return wrapped
        })
        _ = try await f.extract()
        let threads = try #require(probe).threads
        #expect(!threads.isEmpty, "the service called its custody")
        #expect(threads.allSatisfy { $0.hasPrefix("TP-#") }, "\(threads)")
    } }

    @Test("a fresh, signed, covered read is unwrapped once; every other read request is refused and recorded",
          arguments: TestBackend.custodies)
    func signedReads(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await Fixture()
        let (context, key) = try await f.extract()
        let good = f.request(context)
        #expect(try await f.unwrap(context, key.wrapped, signed: good) == key.key)
        // The same request again: a replay.
        #expect(try await refusal(f) { _ = try await f.unwrap(context, key.wrapped, signed: good) }
            == "signed_request_replayed")
        #expect(try await refusal(f) { _ = try await f.unwrap(context, key.wrapped, signed: nil) }
            == "signed_request_required")
        // Signed by a key that is not the analyst's (forged by the platform).
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, key: Ed25519.PrivateKey()))
        } == "signed_request_invalid")
        // A principal whose key was never registered.
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, principal: "someone"),
                                   principal: "someone")
        } == "signed_request_invalid")
        // Re-targeted: a request for another dataset, another use case, another principal, another purpose.
        let other = try DatasetID(dataset: "custody")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, dataset: other))
        } == "signed_request_mismatch")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, useCase: "another"))
        } == "signed_request_mismatch")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context), principal: "analyst-2")
        } == "signed_request_mismatch")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, extract: ExtractID.generate().rawValue))
        } == "signed_request_mismatch")
        // Expired, living too long, issued in the future.
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, issued: f.clock.now - 200))
        } == "signed_request_expired")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, lifetime: 301))
        } == "signed_request_expired")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, issued: f.clock.now + 120))
        } == "signed_request_expired")
        // A request for exactly this extract is fine too.
        #expect(try await f.unwrap(context, key.wrapped, signed: f.request(context, extract: context.extract.rawValue))
            == key.key)
    } }

    @Test("the force's own use case decides: revoked, not naming the reader, not covering the dataset, out of window",
          arguments: TestBackend.custodies)
    func useCaseRules(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await Fixture()
        let (context, key) = try await f.extract()
        let (elsewhere, otherKey) = try await f.extract(dataset: try DatasetID(dataset: "intel"))
        #expect(try await refusal(f) {
            _ = try await f.unwrap(elsewhere, otherKey.wrapped, signed: f.request(elsewhere))
        } == "dataset_not_covered")
        try await f.service.registerPrincipal(f.custodian, principal: "analyst-2",
                                              publicKey: f.analystKey.key.publicKey, requestID: "r")
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, principal: "analyst-2"),
                                   principal: "analyst-2")
        } == "not_named")
        _ = try await f.service.putUseCase(f.custodian, UseCase(
            force: f.force, id: try ResourceID("window"), description: "w", lawfulBasis: "b", datasets: [f.dataset],
            principals: ["analyst-wyp"], validFrom: f.clock.now - 100, validUntil: f.clock.now + 100), requestID: "r")
        #expect(try await f.unwrap(context, key.wrapped, signed: f.request(context, useCase: "window"),
                                   useCase: "window") == key.key)
        f.clock.advance(200)
        #expect(try await refusal(f) {
            _ = try await f.unwrap(context, key.wrapped, signed: f.request(context, useCase: "window"), useCase: "window")
        } == "outside_validity_window")
        let revoked = try await f.service.revokeUseCase(f.custodian, id: try ResourceID("serious-violence"),
                                                        requestID: "r")
        #expect(revoked.version == 2 && revoked.useCase.revokedAt != nil)
        #expect(try await refusal(f) { _ = try await f.unwrap(context, key.wrapped, signed: f.request(context)) }
            == "use_case_revoked")
    } }

    @Test("use cases are authored by the force's custodians and signed; the platform cannot author them",
          arguments: TestBackend.custodies)
    func signedUseCases(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await Fixture()
        let listed = try await f.service.useCases(f.platform, requestID: "r")
        #expect(listed.count == 1 && listed[0].version == 1)
        // Each document verifies with the custody key, and no other.
        let verified = try SignedUseCase(json: listed[0].json, verifyingWith: f.service.signer.publicKey)
        #expect(verified.useCase.principals == ["analyst-wyp"])
        #expect(throws: CustodyError.self) {
            try SignedUseCase(json: listed[0].json, verifyingWith: Ed25519.PrivateKey().publicKey)
        }
        var altered = listed[0].json.objectValue!
        var document = altered["document"]!.objectValue!
        document["principals"] = .array([.string("analyst-wyp"), .string("intruder")])
        altered["document"] = .object(document)
        #expect(throws: CustodyError.self) {
            try SignedUseCase(json: .object(altered), verifyingWith: f.service.signer.publicKey)
        }
        let useCase = UseCase(force: f.force, id: try ResourceID("platform-made"), description: "x", lawfulBasis: "y",
                              datasets: [f.dataset], principals: ["analyst-wyp"])
        #expect(try await refusal(f) { _ = try await f.service.putUseCase(f.platform, useCase, requestID: "r") }
            == "role_required")
        #expect(try await refusal(f) { _ = try await f.service.putUseCase(f.auditor, useCase, requestID: "r") }
            == "role_required")
        // And people cannot use keys.
        let (context, key) = try await f.extract()
        await #expect(throws: VaultError.self) {
            _ = try await f.service.unwrap(f.custodian, wrapped: key.wrapped, context: context, justification:
                Justification(principal: "analyst-wyp", useCase: "serious-violence", purpose: .useCaseRead,
                              requestID: "r", signedRequest: f.request(context)))
        }
    } }

    @Test("an archive retrieval needs two different custodians' approvals at the force, within 24 hours",
          arguments: TestBackend.custodies)
    func archiveRetrieval(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await Fixture()
        let (context, key) = try await f.extract()
        let archiveKey = try await f.service.createArchiveKey(f.platform, extract: context.extract, requestID: "a")
        let wrapped = try await f.service.rewrap(f.platform, items: [RewrapItem(wrapped: key.wrapped, context: context)],
                                                 to: archiveKey, justification: Justification(
                                                     principal: "vaultd", purpose: .rewrap, requestID: "a"))[0].get()
        func retrieve() async throws -> SecureBytes {
            try await f.unwrap(context, wrapped, signed: f.request(context, purpose: .archiveRetrieval,
                                                                   extract: context.extract.rawValue),
                               purpose: .archiveRetrieval)
        }
        #expect(try await refusal(f) { _ = try await retrieve() } == "no_grant")
        #expect(try await f.service.approve(f.custodian, extract: context.extract, analyst: "analyst-wyp",
                                            useCase: "serious-violence", requestID: "a") == 1)
        #expect(try await f.service.approve(f.custodian, extract: context.extract, analyst: "analyst-wyp",
                                            useCase: "serious-violence", requestID: "a") == 1, "the same custodian twice")
        #expect(try await refusal(f) { _ = try await retrieve() } == "approval_pending")
        #expect(try await f.service.approve(f.custodian2, extract: context.extract, analyst: "analyst-wyp",
                                            useCase: "serious-violence", requestID: "a") == 2)
        #expect(try await retrieve() == key.key)
        // A live-read request cannot open the archive key (purpose against key kind), nor a request for another one.
        #expect(try await refusal(f) { _ = try await f.unwrap(context, wrapped, signed: f.request(context)) }
            == "purpose_not_served")
        f.clock.advance(86_401)
        #expect(try await refusal(f) { _ = try await retrieve() } == "no_grant")
        // Before the shred, the extract's earlier wrapping under the master key still opens for a current read (the
        // service cannot know which extract is current: the platform's rule); once its archive key is destroyed,
        // no wrapping of that extract's key opens here again.
        #expect(try await f.unwrap(context, key.wrapped, signed: f.request(context)) == key.key)
        try await f.service.destroy(f.platform, keks: [archiveKey], requestID: "s")
        #expect(try await refusal(f) { _ = try await f.unwrap(context, key.wrapped, signed: f.request(context)) }
            == "shredded")
        #expect(try await refusal(f) { _ = try await f.unwrap(context, wrapped, signed: f.request(
            context, purpose: .archiveRetrieval, extract: context.extract.rawValue), purpose: .archiveRetrieval) }
            == "shredded")
    } }

    @Test("a sealed upload is verified only while fresh; an extract keyed here never through that door",
          arguments: TestBackend.custodies)
    func sealedUploads(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await Fixture()
        // Sealed at source now, with the force's own keys (as vault encrypt does, beside the service).
        let keyring = f.custody
        // Its extract id dated by the fixture's clock (the service's "now"), however long the fixture took to set up.
        let fresh = WrapContext(force: f.force, dataset: f.dataset,
                                extract: .generate(millisecondsSinceEpoch: UInt64(f.clock.now) * 1000))
        let sealed = try await keyring.generateDataKey(for: fresh)
        let verify = { (context: WrapContext, wrapped: WrappedKey) in
            try await f.unwrap(context, wrapped, signed: nil, purpose: .ingestVerification, useCase: nil)
        }
        #expect(try await verify(fresh, sealed.wrapped) == sealed.key)
        #expect(try await verify(fresh, sealed.wrapped) == sealed.key, "a retried upload within the hour")
        f.clock.advance(3601)
        #expect(try await refusal(f) { _ = try await verify(fresh, sealed.wrapped) } == "purpose_not_served")
        // Sealed long ago (its extract id's time), or keyed by this service for a plaintext upload.
        let old = WrapContext(force: f.force, dataset: f.dataset,
                              extract: .generate(millisecondsSinceEpoch: UInt64(f.clock.now - 49 * 3600) * 1000))
        let oldKey = try await keyring.generateDataKey(for: old)
        #expect(try await refusal(f) { _ = try await verify(old, oldKey.wrapped) } == "purpose_not_served")
        let ahead = WrapContext(force: f.force, dataset: f.dataset,
                                extract: .generate(millisecondsSinceEpoch: UInt64(f.clock.now + 7200) * 1000))
        let aheadKey = try await keyring.generateDataKey(for: ahead)
        #expect(try await refusal(f) { _ = try await verify(ahead, aheadKey.wrapped) } == "purpose_not_served",
                "dated two hours ahead of the service's clock")
        let (generated, key) = try await f.extract()
        #expect(try await refusal(f) { _ = try await verify(generated, key.wrapped) } == "purpose_not_served")
    } }
}

/// The witness (DESIGN 5.7): a platform chain in a catalog of its own, submitted as vaultd would.
@Suite("force custody service as witness of the platform's audit log")
struct CustodyWitnessTests {
    final class Platform: @unchecked Sendable {
        let catalog: SQLiteCatalog
        let signer = AuditSigner(key: Ed25519.PrivateKey())
        let force = try! ForceID(force: "wyp")
        var witnessed: Int64 = 0

        init(_ directory: TemporaryDirectory) throws {
            catalog = try SQLiteCatalog(path: directory.file("platform.sqlite"))
        }

        func append(_ action: String = "upload", principal: String = "ingest-wyp", requestID: String = "r",
                    outcome: AuditOutcome = .allowed) async throws {
            try await catalog.appendAudit([AuditEntry(force: force, time: currentUnixTime(), principal: principal,
                                                      action: action, target: "wyp/crime", outcome: outcome,
                                                      requestID: requestID)])
        }

        /// The submission vaultd would make now.
        func submission(from size: Int64? = nil) async throws -> WitnessSubmission {
            let checkpoint = try #require(try await catalog.checkpointAudit(force: force, now: currentUnixTime(),
                                                                            signer: signer))
            let from = size ?? witnessed
            let lines = try await catalog.auditLines(force: force, after: from, through: checkpoint.seq, limit: 10_000)
            return WitnessSubmission(oldSize: from, checkpoint: checkpoint, records: lines.map(\.line))
        }
    }

    func code(_ body: () async throws -> Void) async -> String? {
        do { try await body() } catch let error as VaultError { return error.code.rawValue } catch { return "\(error)" }
        return nil
    }

    @Test("cosigns a chain that extends what it cosigned; names its size to a submission from another one",
          arguments: TestBackend.custodies)
    func cosigning(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await CustodyServiceTests.Fixture()
        let platform = try Platform(f.directory)
        for _ in 0..<3 { try await platform.append() }
        let first = try await f.service.witness(f.platform, try await platform.submission(), requestID: "w")
        #expect(first.seq == 3 && first.isValid(key: f.service.signer.publicKey))
        #expect(!first.isValid(key: Ed25519.PrivateKey().publicKey))
        platform.witnessed = 3
        try await platform.append()
        #expect(try await f.service.witness(f.platform, try await platform.submission(), requestID: "w").seq == 4)
        platform.witnessed = 4
        try await platform.append()
        // A submission from a size the witness does not hold: refused with its size, and no alarm.
        do {
            _ = try await f.service.witness(f.platform, try await platform.submission(from: 2), requestID: "w")
            Issue.record("a submission from the wrong size was cosigned")
        } catch let error as VaultError {
            #expect(error.code == .sizeMismatch && error.details["size"] == "4")
        }
        #expect(!f.service.alarmStanding)
        #expect(try await f.service.witness(f.platform, try await platform.submission(), requestID: "w").seq == 5)
    } }

    @Test("an altered or removed record, or a rolled-back chain, raises an alarm that stops unwraps",
          arguments: TestBackend.custodies)
    func alarms(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await CustodyServiceTests.Fixture()
        let platform = try Platform(f.directory)
        for _ in 0..<3 { try await platform.append() }
        _ = try await f.service.witness(f.platform, try await platform.submission(), requestID: "w")
        platform.witnessed = 3
        for _ in 0..<3 { try await platform.append() }
        // A record altered in the submission (as from an edited catalog row).
        var submission = try await platform.submission()
        var lines = submission.records
        lines[1] = Array(String(decoding: lines[1], as: UTF8.self).replacingOccurrences(of: "ingest-wyp",
                                                                                       with: "ingest-xyz").utf8)
        let altered = WitnessSubmission(oldSize: 3, checkpoint: submission.checkpoint, records: lines)
        #expect(await code { _ = try await f.service.witness(f.platform, altered, requestID: "w") } == "witness_refused")
        #expect(f.service.alarmStanding)
        // Unwraps stop until a custodian clears the alarm.
        let (context, key) = try await f.extract()
        #expect(await code { _ = try await f.unwrap(context, key.wrapped, signed: f.request(context)) } == "witness_alarm")
        #expect(try await f.service.clearAlarms(f.custodian, reason: "investigated", requestID: "c") == 1)
        #expect(try await f.unwrap(context, key.wrapped, signed: f.request(context)) == key.key)
        // A record removed.
        submission = try await platform.submission()
        let removed = WitnessSubmission(oldSize: 3, checkpoint: submission.checkpoint,
                                        records: [submission.records[0], submission.records[2]])
        #expect(await code { _ = try await f.service.witness(f.platform, removed, requestID: "w") } == "witness_refused")
        _ = try await f.service.clearAlarms(f.custodian, reason: "investigated", requestID: "c")
        // The honest chain is cosigned; then a platform that presents fewer records than were cosigned (rolled back).
        let honest = try await f.service.witness(f.platform, try await platform.submission(), requestID: "w")
        platform.witnessed = honest.seq
        let rollback = WitnessSubmission(oldSize: 3, checkpoint: try await platform.catalog.checkpointAudit(
            force: platform.force, at: 3, now: currentUnixTime(), signer: platform.signer), records: [])
        #expect(await code { _ = try await f.service.witness(f.platform, rollback, requestID: "w") } == "witness_refused")
        let alarms = try await f.service.alarms(f.auditor, requestID: "a")
        #expect(alarms.map(\.reason) == ["fork", "gap", "rollback"])
        let log = try await f.log().filter { $0.action == "witness.alarm" }
        #expect(log.count == 3)
    } }

    @Test("every unwrap granted before the last cosignature must appear in the platform's log as an allowed read",
          arguments: TestBackend.custodies)
    func unwrapAccounting(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await CustodyServiceTests.Fixture()
        let platform = try Platform(f.directory)
        let (context, key) = try await f.extract()
        // An honest read: recorded by the platform before the unwrap.
        try await platform.append("read", principal: "analyst-wyp", requestID: "req-honest")
        _ = try await f.unwrap(context, key.wrapped, signed: f.request(context), requestID: "req-honest")
        // A read the platform does not record.
        _ = try await f.unwrap(context, key.wrapped, signed: f.request(context), requestID: "req-hidden")
        f.clock.advance(2)
        _ = try await f.service.witness(f.platform, try await platform.submission(), requestID: "w")
        platform.witnessed = 1
        f.clock.advance(5)
        try await platform.append()
        // The hidden unwrap was granted before that cosignature and is still not in the log: alarm.
        do {
            _ = try await f.service.witness(f.platform, try await platform.submission(), requestID: "w")
            Issue.record("a chain hiding an unwrap was cosigned")
        } catch let error as VaultError {
            #expect(error.code == .witnessRefused)
            #expect(error.message.contains("req-hidden") && !error.message.contains("req-honest"), "\(error.message)")
        }
        #expect(f.service.alarmStanding)
    } }
}
