import Foundation
import KeyCustody
import NIOCore
import Logging
import GRDB
import Testing
import VaultTestSupport

@testable import Vault

/// A vault on the storage under test (`TestStorage`: SQLite and files, or PostgreSQL and S3) with the custody
/// backend under test (`TestCustody`).
final class EngineFixture: @unchecked Sendable {
    let directory: TemporaryDirectory
    private(set) var wmp: any KeyCustodian
    let gmp: any KeyCustodian
    let catalog: any Catalog
    let blobs: any BlobStore
    let catalogLocation: CatalogLocation
    /// The PostgreSQL connection pool, closed with the fixture.
    private let runner: Task<Void, Never>?
    private(set) var engine: VaultEngine
    let clock: TestClock
    let settings: LifecycleSettings

    let uploader = Principal(id: "ingest-wmp", grants: [.uploader: [try! ForceID(force: "wmp")]])
    let analyst = Principal(id: "analyst-1", grants: [.analyst: [try! ForceID(force: "wmp")]])
    let gmpAnalyst = Principal(id: "analyst-gmp", grants: [.analyst: [try! ForceID(force: "gmp")]])
    let custodian = Principal(id: "custodian-wmp", grants: [.custodian: [try! ForceID(force: "wmp")]])
    let ops = Principal(id: "ops", grants: [.ops: [try! ForceID(force: "wmp"), try! ForceID(force: "gmp")]])
    let auditor = Principal(id: "dpo-wmp", grants: [.auditor: [try! ForceID(force: "wmp")]])

    let force = try! ForceID(force: "wmp")
    let dataset = try! DatasetID(dataset: "crime")

    /// `wmpOnKeyring`: force wmp starts on a keyring whatever the backend under test (to move it to a token).
    /// `sharedKeyringRecheck`: force wmp's keyring is served in shared mode (as by several vaultd instances on
    /// PostgreSQL), its unwrap path trusting its copy for that long; `openSharedKeyring()` opens it again.
    /// `catalog`: what the engine sees of the catalog of the storage under test (a fault wrapped around it).
    init(settings: LifecycleSettings = LifecycleSettings(), wmpOnKeyring: Bool = false,
         sharedKeyringRecheck: Duration? = nil, catalog wrap: (any Catalog) throws -> any Catalog = { $0 })
        async throws {
        directory = try TemporaryDirectory("vault-engine")
        self.settings = settings
        if let sharedKeyringRecheck {
            // Created, then released at once, so that shared copies can each take the writer lock for a change.
            _ = try KeyringCustody.create(at: directory.file("wmp.keyring"), force: try ForceID(force: "wmp"),
                                          passphrase: secret("wmp passphrase 123"), parameters: .interactive,
                                          logger: logger)
            wmp = try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret("wmp passphrase 123"),
                                          expectedForce: try ForceID(force: "wmp"), mode: .shared,
                                          recheckInterval: sharedKeyringRecheck, logger: logger)
        } else {
            wmp = wmpOnKeyring
                ? try KeyringCustody.create(at: directory.file("wmp.keyring"), force: try ForceID(force: "wmp"),
                                            passphrase: secret("wmp passphrase 123"), parameters: .interactive,
                                            logger: logger)
                : try TestCustody.create(force: try ForceID(force: "wmp"), directory: directory,
                                         passphrase: "wmp passphrase 123")
        }
        gmp = try TestCustody.create(force: try ForceID(force: "gmp"), directory: directory,
                                     passphrase: "gmp passphrase 123")
        let storage = try await TestStorage.open(in: directory, logger: logger)
        (catalog, blobs, catalogLocation, runner) = (try wrap(storage.catalog), storage.blobs,
                                                     storage.catalogLocation, storage.runner)
        clock = TestClock()
        let clock = clock
        engine = VaultEngine(catalog: catalog, blobs: blobs,
                             custodians: [try ForceID(force: "wmp"): wmp, try ForceID(force: "gmp"): gmp],
                             signer: AuditSigner(key: Ed25519.PrivateKey()), logger: logger, settings: settings,
                             now: { clock.now })
        try await engine.putUseCase(principal: custodian, UseCase(
            force: force, id: try ResourceID("serious-violence"), description: "Serious violence duty",
            lawfulBasis: "Police Crime Sentencing and Courts Act 2022 s.8", datasets: [dataset],
            principals: [analyst.id]), requestID: "setup")
    }

    deinit { runner?.cancel() }

    /// Another shared copy of force wmp's keyring (see `sharedKeyringRecheck`), as a second instance holds it.
    func openSharedKeyring(recheck: Duration) throws -> KeyringCustody {
        try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret("wmp passphrase 123"),
                                expectedForce: force, mode: .shared, recheckInterval: recheck, logger: logger)
    }

    /// A second vault instance on this fixture's catalog, blobs, signer and clock, with its own custody of wmp and its
    /// own instance name (as a second vaultd process sharing PostgreSQL and a bucket).
    func secondInstance(name: String, wmp custody: (any KeyCustodian)? = nil) throws -> VaultEngine {
        var settings = settings
        settings.instance = name
        let clock = clock
        return VaultEngine(catalog: catalog, blobs: blobs,
                           custodians: [force: custody ?? wmp, try ForceID(force: "gmp"): gmp], signer: engine.signer,
                           logger: logger, settings: settings, now: { clock.now })
    }

    /// The stored ciphertext of an extract, or nil when its blob is gone.
    func blobBytes(_ identity: ExtractIdentity) async throws -> [UInt8]? {
        try await TestStorage.blobBytes(blobs, identity)
    }

    /// Test-only direct SQL on the catalog (`?` placeholders), to simulate corruption or a legacy row.
    func rawUpdate(_ sql: String, _ arguments: [String]) async throws {
        if let sqlite = catalog as? SQLiteCatalog {
            try await sqlite.rawWrite { db in try db.execute(sql: sql, arguments: StatementArguments(arguments)) }
        } else if let postgres = catalog as? PostgresCatalog {
            var numbered = ""
            var index = 0
            for character in sql {
                if character == "?" {
                    index += 1
                    numbered += "$\(index)"
                } else {
                    numbered.append(character)
                }
            }
            try await postgres.rawExecute(numbered, arguments)
        }
    }

    /// The SQLite catalog (tests of SQLite-only features run on the embedded default only).
    var sqlite: SQLiteCatalog {
        get throws {
            guard let catalog = catalog as? SQLiteCatalog else {
                throw TestVectors.VectorError(message: "this test needs the SQLite catalog")
            }
            return catalog
        }
    }

    /// A restart of the vault with a changed custody for wmp, on the same catalog and blobs.
    func restart(wmp custody: any KeyCustodian) {
        wmp = custody
        let clock = clock
        engine = VaultEngine(catalog: catalog, blobs: blobs, custodians: [force: custody, try! ForceID(force: "gmp"): gmp],
                             signer: engine.signer, logger: logger, settings: settings, now: { clock.now })
    }

    /// Streams `bytes` in uneven pieces, as a network would deliver them.
    func upload(_ bytes: [UInt8], sealed: Bool = false, dataset: DatasetID? = nil, principal: Principal? = nil,
                through instance: VaultEngine? = nil) async throws -> ExtractRecord
    {
        let upload = try await (instance ?? engine).beginUpload(principal: principal ?? uploader, force: force,
                                                  dataset: dataset ?? self.dataset, sealed: sealed, requestID: "t")
        var offset = 0
        var step = 1000
        while offset < bytes.count {
            let end = min(offset + step, bytes.count)
            try await upload.append(ByteBuffer(bytes: bytes[offset..<end]))
            offset = end
            step = step * 2 + 7
        }
        return try await upload.commit()
    }

    func read(_ principal: Principal? = nil, useCase: String? = "serious-violence", dataset: DatasetID? = nil)
        async throws -> [UInt8]
    {
        let reader = try await engine.openCurrent(principal: principal ?? analyst, force: force,
                                                  dataset: dataset ?? self.dataset, useCaseID: useCase, requestID: "r")
        var output = [UInt8]()
        try await reader.read(0..<reader.plaintextSize) { output.append(contentsOf: $0.readableBytesView) }
        return output
    }

    func audit() async throws -> [AuditRecord] {
        try await catalog.auditRecords(force: force)
    }

    /// Every blob stored (files under the blob root, or object keys under the S3 prefix), to prove nothing is left
    /// behind.
    func blobFiles() async throws -> [String] {
        if let s3 = blobs as? S3BlobStore { return try await s3.listKeys().sorted() }
        let root = directory.file("blobs")
        guard let walker = FileManager.default.enumerator(atPath: root) else { return [] }
        return walker.compactMap { $0 as? String }.filter {
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: "\(root)/\($0)", isDirectory: &isDirectory)
            return !isDirectory.boolValue
        }.sorted()
    }
}

final class TestClock: @unchecked Sendable {
    private let lock = NSLock()
    private var value: UnixTime = currentUnixTime()
    var now: UnixTime {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
    func advance(_ seconds: Int64) {
        lock.lock()
        value += seconds
        lock.unlock()
    }
}

@Suite("Vault engine on the embedded default")
struct EngineTests {
    @Test("an upload becomes current; an authorised read returns it, whole and by range; both are audited",
          arguments: TestBackend.all)
    func uploadAndRead(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let payload = testBytes(count: 100_000)
        let record = try await vault.upload(payload)
        #expect(record.state == .current)
        #expect(record.plaintextSize == 100_000)
        #expect(try await vault.read() == payload)

        let reader = try await vault.engine.openCurrent(principal: vault.analyst, force: vault.force,
                                                        dataset: vault.dataset, useCaseID: "serious-violence",
                                                        requestID: "range")
        var part = [UInt8]()
        try await reader.read(16_000..<40_000) { part.append(contentsOf: $0.readableBytesView) }
        #expect(part == Array(payload[16_000..<40_000]))

        let audit = try await vault.audit()
        #expect(audit.map(\.action) == ["use-case.create", "upload", "read", "read"])
        #expect(audit.map(\.seq) == [1, 2, 3, 4])
        #expect(audit[2].outcome == .allowed && audit[2].useCase == "serious-violence")
        #expect(audit[2].principal == "analyst-1")
        // The blob on disk is ciphertext: none of the payload is visible in it.
        let blob = Data(try #require(try await vault.blobBytes(record.identity)))
        #expect(blob.count == Int(record.ciphertextSize))
        #expect(blob.range(of: Data(payload[5000..<5064])) == nil)
    } }

    @Test("a new upload archives the previous extract with an expiry; archives are never readable live",
          arguments: TestBackend.all)
    func weeklyReplacement(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let first = try await vault.upload(Array("week 1".utf8))
        vault.clock.advance(7 * 86_400)
        let second = try await vault.upload(Array("week 2".utf8))
        #expect(try await vault.read() == Array("week 2".utf8))

        let archived = try #require(try await vault.catalog.extract(force: vault.force, id: first.identity.extract))
        #expect(archived.state == .archived)
        #expect(archived.archivedAt == vault.clock.now)
        #expect(archived.expiresAt == vault.clock.now + 365 * 86_400)

        await #expect(throws: VaultError(.archivedExtract, "")) {
            try await vault.engine.openExtract(principal: vault.analyst, force: vault.force,
                                               extract: first.identity.extract, useCaseID: "serious-violence",
                                               requestID: "x")
        }
        let live = try await vault.engine.openExtract(principal: vault.analyst, force: vault.force,
                                                      extract: second.identity.extract, useCaseID: "serious-violence",
                                                      requestID: "y")
        #expect(live.record.identity.extract == second.identity.extract)

        // Archives are listed to custodians and ops, never to analysts.
        let listed = try await vault.engine.listExtracts(principal: vault.ops, force: vault.force, dataset: nil,
                                                         archived: true, requestID: "l")
        #expect(listed.map(\.identity.extract) == [first.identity.extract])
        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.engine.listExtracts(principal: vault.analyst, force: vault.force, dataset: nil, archived: true,
                                               requestID: "l")
        }
        #expect(try await vault.audit().contains { $0.action == "archive" && $0.target.hasSuffix("\(first.identity.extract)") })
    } }

    @Test("each refusal names its rule and is audited", arguments: TestBackend.all, [
        ("no use case", "use_case_required"), ("unknown use case", "no_such_use_case"),
        ("not named", "not_named"), ("not yet valid", "outside_validity_window"),
        ("expired", "outside_validity_window"), ("dataset not covered", "dataset_not_covered"),
        ("revoked", "use_case_revoked"), ("other force", "other_force"), ("uploader reads", "role_required"),
        ("malformed use case id", "no_such_use_case"),
    ])
    func refusals(_ backend: TestBackend, _ refusal: (situation: String, code: String)) async throws {
        try await backend.run { try await refused(refusal.situation, code: refusal.code) }
    }

    func refused(_ situation: String, code: String) async throws {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("rows".utf8))
        _ = try await vault.upload(Array("other".utf8), dataset: try DatasetID(dataset: "custody"))
        let base = UseCase(force: vault.force, id: try ResourceID("modern-slavery"), description: "MS",
                           lawfulBasis: "basis", datasets: [vault.dataset], principals: [vault.analyst.id])
        var useCase: String? = "modern-slavery"
        var principal = vault.analyst
        var dataset = vault.dataset
        var stored = base
        switch situation {
        case "no use case": useCase = nil
        case "unknown use case": useCase = "no-such-thing"
        case "not named": stored.principals = ["someone-else"]
        case "not yet valid": stored.validFrom = vault.clock.now + 3600
        case "expired": stored.validUntil = vault.clock.now - 1; stored.validFrom = vault.clock.now - 7200
        case "dataset not covered": dataset = try DatasetID(dataset: "custody")
        case "other force": principal = vault.gmpAnalyst
        case "uploader reads": principal = vault.uploader
        case "malformed use case id": useCase = "../../etc"
        default: break
        }
        try await vault.engine.putUseCase(principal: vault.custodian, stored, requestID: "uc")
        if situation == "revoked" {
            _ = try await vault.engine.revokeUseCase(principal: vault.custodian, force: vault.force,
                                                     id: stored.id, requestID: "rv")
        }
        let error = await #expect(throws: VaultError.self) {
            try await vault.read(principal, useCase: useCase, dataset: dataset)
        }
        #expect(error?.code.rawValue == code)
        // Another force's analyst writes nothing into this force's chain: its refusal is in the platform's.
        let chain = situation == "other force" ? ForceID.platform : vault.force
        let last = try #require(try await vault.catalog.auditRecords(force: chain).last)
        if chain == .platform { #expect(last.detail["force"] == .string(vault.force.rawValue)) }
        #expect(last.action == "read")
        #expect(last.outcome == .denied)
        #expect(last.principal == principal.id)
        #expect(last.detail["reason"]?.stringValue == code)
    }

    @Test("use cases: only a custodian of the force manages them; every change is audited", arguments: TestBackend.all)
    func useCaseManagement(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let useCase = UseCase(force: vault.force, id: try ResourceID("offender-management"), description: "IOM",
                              lawfulBasis: "basis", datasets: [vault.dataset], principals: [vault.analyst.id])
        for principal in [vault.analyst, vault.uploader, vault.ops, vault.auditor,
                          Principal(id: "custodian-gmp", grants: [.custodian: [try ForceID(force: "gmp")]])] {
            await #expect(throws: VaultError.self) {
                try await vault.engine.putUseCase(principal: principal, useCase, requestID: "x")
            }
        }
        try await vault.engine.putUseCase(principal: vault.custodian, useCase, requestID: "create")
        var changed = useCase
        changed.principals.append("analyst-2")
        try await vault.engine.putUseCase(principal: vault.custodian, changed, requestID: "update")
        let listed = try await vault.engine.listUseCases(principal: vault.auditor, force: vault.force, requestID: "list")
        #expect(listed.first { $0.id == useCase.id }?.principals == ["analyst-1", "analyst-2"])
        _ = try await vault.engine.revokeUseCase(principal: vault.custodian, force: vault.force, id: useCase.id,
                                                 requestID: "revoke")
        await #expect(throws: VaultError(.notFound, "")) {
            try await vault.engine.revokeUseCase(principal: vault.custodian, force: vault.force,
                                                 id: try ResourceID("nothing-here"), requestID: "x")
        }
        let actions = try await vault.audit().filter { $0.useCase == "offender-management" }.map { "\($0.action):\($0.outcome.rawValue)" }
        #expect(actions == ["use-case.put:denied", "use-case.put:denied", "use-case.put:denied", "use-case.put:denied",
                            "use-case.create:allowed", "use-case.update:allowed", "use-case.revoke:allowed"])
        // gmp's custodian has no role in wmp: its refusal is in the platform's chain, not wmp's.
        let outsider = try await vault.catalog.auditRecords(force: .platform).map { "\($0.principal):\($0.action)" }
        #expect(outsider == ["custodian-gmp:use-case.put"])
    } }

    @Test("a sealed upload is verified in full and served; the platform never needed the plaintext",
          arguments: TestBackend.all)
    func sealedUpload(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let payload = testBytes(count: 70_000, seed: 3)
        _ = try vault.directory.write("extract.csv", payload)
        let sealed = try await SealedFile.seal(inputPath: vault.directory.file("extract.csv"),
                                               outputPath: vault.directory.file("x.vault"), dataset: vault.dataset,
                                               custody: vault.wmp)
        let record = try await vault.upload(try vault.directory.read("x.vault"), sealed: true)
        #expect(record.source == .sealed)
        #expect(record.identity.extract == sealed.header.identity.extract)
        #expect(record.ciphertextSHA256 == sealed.header.ciphertextSHA256)
        #expect(try await vault.read() == payload)
        // The same file again is a duplicate, not a second current extract.
        await #expect(throws: VaultError(.duplicateExtract, "")) {
            try await vault.upload(try vault.directory.read("x.vault"), sealed: true)
        }
    } }

    @Test("bad sealed uploads are refused and leave nothing: tampered, truncated, other force, other dataset, junk",
          arguments: TestBackend.all)
    func badSealedUploads(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let payload = testBytes(count: 50_000, seed: 9)
        _ = try vault.directory.write("extract.csv", payload)
        _ = try await SealedFile.seal(inputPath: vault.directory.file("extract.csv"),
                                      outputPath: vault.directory.file("wmp.vault"), dataset: vault.dataset,
                                      custody: vault.wmp)
        _ = try await SealedFile.seal(inputPath: vault.directory.file("extract.csv"),
                                      outputPath: vault.directory.file("gmp.vault"), dataset: vault.dataset,
                                      custody: vault.gmp)
        _ = try await SealedFile.seal(inputPath: vault.directory.file("extract.csv"),
                                      outputPath: vault.directory.file("other.vault"),
                                      dataset: try DatasetID(dataset: "custody"), custody: vault.wmp)
        let good = try vault.directory.read("wmp.vault")
        var tampered = good
        tampered[tampered.count - 30_000] ^= 0x04
        let cases: [(String, [UInt8], String)] = [
            ("tampered", tampered, "integrity_failure"),
            ("truncated", Array(good.prefix(good.count - 500)), "truncated"),
            ("other force", try vault.directory.read("gmp.vault"), "wrong_force"),
            ("other dataset", try vault.directory.read("other.vault"), "malformed_header"),
            ("no header", Array("just,some,csv\n1,2,3\n".utf8), "malformed_header"),
            ("header only", Array(good.prefix(100)), "malformed_header"),
        ]
        for (name, body, code) in cases {
            let error = await #expect(throws: VaultError.self, "\(name)") {
                try await vault.upload(body, sealed: true)
            }
            #expect(error?.code.rawValue == code, "\(name): \(String(describing: error))")
        }
        #expect(try await vault.catalog.extracts(force: vault.force, dataset: nil,
                                                 states: Set(ExtractState.allCases)).isEmpty)
        #expect(try await vault.blobFiles().isEmpty)
    } }

    @Test("an interrupted upload leaves no extract and no blob; the previous extract stays current",
          arguments: TestBackend.all)
    func interruptedUpload(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("week 1".utf8))
        let before = try await vault.blobFiles()
        do {
            let upload = try await vault.engine.beginUpload(principal: vault.uploader, force: vault.force,
                                                            dataset: vault.dataset, sealed: false, requestID: "cut")
            try await upload.append(ByteBuffer(bytes: testBytes(count: 3 << 20)))
            // The client goes away: the upload is dropped without a commit.
        }
        #expect(try await vault.blobFiles() == before)
        #expect(try await vault.read() == Array("week 1".utf8))
        #expect(try await vault.catalog.extracts(force: vault.force, dataset: nil, states: [.uploading]).isEmpty)
    } }

    @Test("two uploads committing at once both land: one current, one archived, never two current",
          arguments: TestBackend.all)
    func concurrentUploads(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await withThrowingTaskGroup(of: ExtractRecord.self) { group in
            for i in 0..<6 {
                group.addTask { try await vault.upload(Array("upload \(i)".utf8)) }
            }
            for try await _ in group {}
        }
        let current = try await vault.catalog.extracts(force: vault.force, dataset: vault.dataset, states: [.current])
        let archived = try await vault.catalog.extracts(force: vault.force, dataset: vault.dataset, states: [.archived])
        #expect(current.count == 1)
        #expect(archived.count == 5)
        #expect(try await vault.blobFiles().count == 6)
    } }

    @Test("uploads left behind by a crash are collected: their row and blob go", arguments: TestBackend.all)
    func staleUploads(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let identity = ExtractIdentity(force: vault.force, dataset: vault.dataset, extract: .generate())
        let dataKey = try await vault.wmp.generateDataKey(for: identity.wrapContext)
        let blob = try await vault.blobs.create(identity)
        try await blob.write([UInt8](repeating: 1, count: 100))
        try await vault.catalog.beginUpload(ExtractRecord(
            identity: identity, state: .uploading, wrappedKey: dataKey.wrapped, plaintextSize: 0, ciphertextSize: 0,
            ciphertextSHA256: [], source: .plaintext, uploadedBy: "x", createdAt: vault.clock.now - 7200))
        try await blob.commit()
        #expect(try await vault.blobFiles().count == 1)
        #expect(try await vault.engine.collectStaleUploads(olderThan: 3600) == 1)
        #expect(try await vault.blobFiles().isEmpty)
        #expect(try await vault.catalog.extract(force: vault.force, id: identity.extract) == nil)
    } }

    @Test("an upload whose commit fails after the database committed it is current, with its blob; the archive too",
          arguments: TestBackend.storages)
    func ambiguousCommit(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture(catalog: { try AmbiguousCommitCatalog($0) })
        let faulty = try #require(vault.catalog as? AmbiguousCommitCatalog)
        let first = try await vault.upload(Array("week 1".utf8))
        faulty.failNextUploadCommit()
        let second = try await vault.upload(Array("week 2".utf8))
        #expect(faulty.failed)
        #expect(second.state == .current)
        #expect(try await vault.read() == Array("week 2".utf8))
        #expect(try await vault.blobBytes(second.identity) != nil, "the committed extract lost its blob")
        #expect(try await vault.catalog.extract(force: vault.force, id: first.identity.extract)?.state == .archived)
        #expect(try await vault.blobBytes(first.identity) != nil)
        // The catalog's own rule: a committed row is never abandoned, so its blob is never collected.
        #expect(try await vault.catalog.abandonUpload(force: vault.force, extract: second.identity.extract) == false)
        #expect(try await vault.catalog.extract(force: vault.force, id: second.identity.extract)?.state == .current)
    } }

    @Test("a read that streams is checked again: revoking its use case or archiving its extract ends it, audited",
          arguments: TestBackend.storages, ["revoked", "archived"])
    func streamRecheck(_ backend: TestBackend, _ change: String) async throws { try await backend.run {
        var settings = LifecycleSettings()
        settings.streamRecheckBytes = 1  // before every buffer after the first (about 1 MiB each)
        let vault = try await EngineFixture(settings: settings)
        let payload = testBytes(count: 4 << 20, seed: 4)
        _ = try await vault.upload(payload)
        let reader = try await vault.engine.openCurrent(principal: vault.analyst, force: vault.force,
                                                        dataset: vault.dataset, useCaseID: "serious-violence",
                                                        requestID: "stream")
        var received = 0
        let error = await #expect(throws: VaultError.self) {
            try await reader.read(0..<reader.plaintextSize) { buffer in
                if received == 0 {
                    if change == "revoked" {
                        _ = try await vault.engine.revokeUseCase(principal: vault.custodian, force: vault.force,
                                                                 id: try ResourceID("serious-violence"), requestID: "rv")
                    } else {
                        _ = try await vault.upload(Array("next week".utf8))
                    }
                }
                received += buffer.readableBytes
            }
        }
        #expect(error?.code == (change == "revoked" ? .useCaseRevoked : .archivedExtract))
        #expect(received > 0 && received < payload.count, "\(received) of \(payload.count) bytes went out")
        let last = try #require(try await vault.audit().last { $0.requestID == "stream" })
        #expect(last.action == "read" && last.outcome == .denied)
        #expect(last.detail["reason"]?.stringValue == error?.code.rawValue)
    } }

    @Test("the catalog reopens with its data; uploads by a non-uploader are refused and audited",
          arguments: TestBackend.all)
    func reopenAndUploadRefusal(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("kept".utf8))
        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.upload(Array("nope".utf8), principal: vault.analyst)
        }
        await #expect(throws: VaultError(.otherForce, "")) {
            try await vault.upload(Array("nope".utf8),
                                   principal: Principal(id: "ingest-gmp", grants: [.uploader: [try ForceID(force: "gmp")]]))
        }
        let (reopened, runner) = try await Storage.openCatalog(vault.catalogLocation, logger: logger)
        defer { runner?.cancel() }
        let current = try await reopened.currentExtract(force: vault.force, dataset: vault.dataset)
        #expect(current?.plaintextSize == 4)
        let denied = try await reopened.auditRecords(force: vault.force).filter { $0.outcome == .denied }
        #expect(denied.map(\.principal) == ["analyst-1"])
        // gmp's uploader has no role in wmp: its refusal is in the platform's chain.
        #expect(try await reopened.auditRecords(force: .platform).map(\.principal) == ["ingest-gmp"])
    } }
}

@Suite("Vault engine: review fixes")
struct EngineReviewTests {
    @Test("a read is recorded only while its extract is still current; an archived one is refused, not served",
          arguments: TestBackend.all)
    func readRace(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let first = try await vault.upload(Array("week 1".utf8))
        _ = try await vault.upload(Array("week 2".utf8))
        // What an opener that looked up `first` just before the second upload committed would now try to record.
        let recorded = try await vault.catalog.appendAuditIfCurrent(
            force: vault.force, extract: first.identity.extract,
            audit: [AuditEntry(force: vault.force, principal: "analyst-1", action: "read", target: "x",
                               outcome: .allowed, requestID: "race")])
        #expect(!recorded)
        #expect(try await vault.audit().contains { $0.requestID == "race" } == false)
        // Asking for the old extract by id is refused and audited; the new one is served.
        await #expect(throws: VaultError(.archivedExtract, "")) {
            try await vault.engine.openExtract(principal: vault.analyst, force: vault.force,
                                               extract: first.identity.extract, useCaseID: "serious-violence",
                                               requestID: "old")
        }
        #expect(try await vault.read() == Array("week 2".utf8))
        let archive = try await vault.audit().filter { $0.action == "archive" }
        #expect(archive.count == 1)
        #expect(archive.first?.target.hasSuffix(first.identity.extract.rawValue) == true)
    } }

    @Test("a revoked use case stays revoked when it is put again", arguments: TestBackend.all)
    func revocationIsFinal(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("rows".utf8))
        let id = try ResourceID("serious-violence")
        _ = try await vault.engine.revokeUseCase(principal: vault.custodian, force: vault.force, id: id, requestID: "r")
        let useCase = try #require(try await vault.catalog.useCase(force: vault.force, id: id))
        var again = useCase
        again.revokedAt = nil
        let stored = try await vault.engine.putUseCase(principal: vault.custodian, again, requestID: "p")
        #expect(stored.revokedAt != nil)
        #expect(try await vault.catalog.useCase(force: vault.force, id: id)?.revokedAt != nil)
        await #expect(throws: VaultError(.useCaseRevoked, "")) { try await vault.read() }
    } }

    @Test("an empty upload is refused and changes nothing", arguments: TestBackend.all)
    func emptyUpload(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("real data".utf8))
        await #expect(throws: VaultError(.invalidParameter, "")) { try await vault.upload([]) }
        #expect(try await vault.read() == Array("real data".utf8))
    } }

    @Test("refused listings are audited; a force the vault does not serve answers like a served one, its refusal in the platform's chain",
          arguments: TestBackend.all)
    func listingRefusals(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.engine.listExtracts(principal: vault.analyst, force: vault.force, dataset: nil, archived: true,
                                               requestID: "l")
        }
        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.engine.exportAudit(principal: vault.analyst, force: vault.force, since: .sequence(0),
                                               requestID: "a")
        }
        let denied = try await vault.audit().filter { $0.outcome == .denied }.map(\.action)
        #expect(denied == ["list.archives", "audit.export"])
        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.engine.listExtracts(principal: vault.analyst, force: try ForceID(force: "nowhere"),
                                                dataset: nil, archived: true, requestID: "l")
        }
        #expect(try await vault.catalog.auditRecords(force: try ForceID(force: "nowhere")).isEmpty)
        let platform = try await vault.catalog.auditRecords(force: .platform)
        #expect(platform.map(\.action) == ["list.archives"])
        #expect(platform.first?.detail["force"] == .string("nowhere"))
    } }
}

/// A custodian that notes the name of the thread each of its operations runs on, then passes it through.
final class ThreadProbeCustodian: KeyCustodian, @unchecked Sendable {
    let base: any KeyCustodian
    private let lock = NSLock()
    private var names: [String] = []
    init(base: any KeyCustodian) { self.base = base }
    var force: ForceID { base.force }
    var threads: [String] { lock.withLock { names } }

    private func note() {
        // Linux names the calling thread in /proc/thread-self/comm.
        let name = ((try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        lock.withLock { names.append(name) }
    }

    func activeMasterKey() async throws -> KEKID { note(); return try await base.activeMasterKey() }
    func rotate() async throws -> KEKID { note(); return try await base.rotate() }
    func generateDataKey(for context: WrapContext) async throws -> DataKey {
        note()
        return try await base.generateDataKey(for: context)
    }
    func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        note()
        return try await base.unwrap(wrapped, context: context, justification: justification)
    }
    func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        note()
        return try await base.rewrap(wrapped, context: context, to: kek, justification: justification)
    }
    func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        note()
        return try await base.createArchiveKey(for: extract)
    }
    func retire(_ kek: KEKID) async throws { note(); try await base.retire(kek) }
    func destroy(_ kek: KEKID) async throws { note(); try await base.destroy(kek) }
    func forgetDestroyed(_ keks: [KEKID]) async throws { note(); try await base.forgetDestroyed(keks) }
    func status() async throws -> [KeyInfo] { note(); return try await base.status() }
}

@Suite("Custody off the cooperative pool")
struct CustodyThreadTests {
    @Test("a local backend's operations (keyring lock and fsync, PKCS#11 calls) run on the blocking-work threads",
          arguments: TestBackend.all)
    func localCustodyRunsOnBlockingThreads(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let probe = ThreadProbeCustodian(base: vault.wmp)
        vault.restart(wmp: probe)
        let payload = testBytes(count: 40_000, seed: 7)
        _ = try await vault.upload(payload)
        _ = try await vault.upload(testBytes(count: 1000, seed: 8))  // archives the first: an archive key, a rewrap
        #expect(try await vault.read() == testBytes(count: 1000, seed: 8))
        let threads = probe.threads
        #expect(threads.count >= 4, "\(threads)")
        // NIOThreadPool names its threads TP-#N; the cooperative pool's threads are not named so.
        #expect(threads.allSatisfy { $0.hasPrefix("TP-#") }, "\(threads)")
    } }
}
