import Foundation
import KeyCustody
import Logging
import Testing
import VaultTestSupport

@testable import Vault

/// `vault keys migrate --to pkcs11`: a force on a keyring moves onto its token (SoftHSM2) without re-uploading,
/// resumably, and its keyring's master keys can then be destroyed. Runs in both passes of `make test`.
@Suite("moving a force from its keyring to its HSM", .serialized)
struct MigrationTests {
    let read = Justification(principal: "analyst-1", useCase: "serious-violence", purpose: .useCaseRead,
                             requestID: "r")

    @Test("every wrapped key moves to the token's master key across a restart; reads, archives and shredding keep working",
          arguments: TestBackend.all)
    func migrate(_ backend: TestBackend) async throws { try await backend.run {
        var settings = LifecycleSettings()
        settings.rewrapBatchSize = 2
        let f = try await EngineFixture(settings: settings, wmpOnKeyring: true)
        let keyring = try #require(f.wmp as? KeyringCustody)
        let datasets = try ["crime", "custody", "intel", "stops", "arrests"].map { try DatasetID(dataset: $0) }
        try await f.engine.putUseCase(principal: f.custodian, UseCase(
            force: f.force, id: try ResourceID("serious-violence"), description: "duty", lawfulBasis: "s.8",
            datasets: datasets, principals: [f.analyst.id]), requestID: "uc")
        var contents: [DatasetID: [UInt8]] = [:]
        let oldArchive = try await f.upload(testBytes(count: 30_000, seed: 99), dataset: datasets[0])
        for (index, dataset) in datasets.enumerated() {
            contents[dataset] = testBytes(count: 20_000 + index, seed: UInt64(index + 1))
            _ = try await f.upload(contents[dataset]!, dataset: dataset)
        }
        let archived = try #require(try await f.catalog.extract(force: f.force, id: oldArchive.identity.extract))
        #expect(archived.wrappedKey.kek == .archive(force: f.force, extract: oldArchive.identity.extract))

        // The custody file now says pkcs11 with the keyring kept; vaultd restarts with it.
        let token = try TestCustody.newToken("move")
        let pin = TestCustody.secret(TestCustody.userPIN)
        let onToken = try MigratingCustody.open(module: TestCustody.module, tokenLabel: token, pin: pin,
                                                force: f.force, earlier: keyring, mode: .readWrite, logger: logger)
        f.restart(wmp: onToken)
        #expect(try await onToken.activeMasterKey() == .master(force: f.force, version: 1), "still the keyring's")
        #expect(try await f.read(dataset: datasets[1]) == contents[datasets[1]])

        // Only a custodian migrates; the new version is created on the token.
        await #expect(throws: VaultError.self) {
            _ = try await f.engine.migrateMasterKey(principal: f.analyst, force: f.force, to: "pkcs11", requestID: "x")
        }
        let rotation = try await f.engine.migrateMasterKey(principal: f.custodian, force: f.force, to: "pkcs11",
                                                           requestID: "m")
        #expect(rotation.from == .master(force: f.force, version: 1))
        #expect(rotation.to == .master(force: f.force, version: 2))
        #expect(try PKCS11Administration.keyProtection(module: TestCustody.module, tokenLabel: token, pin: pin,
                                                       keyLabel: "fmk:wmp:2").extractable == false)
        let again = await #expect(throws: CustodyError.self) {
            _ = try await f.engine.migrateMasterKey(principal: f.custodian, force: f.force, to: "pkcs11",
                                                    requestID: "m2")
        }
        #expect(again?.code == .keyStateConflict)

        // One pass of the job (batches of 2), then the force as a restarted vaultd opens it from the custody file.
        _ = try await f.engine.runKeyJobs(force: f.force)
        let keysFile = try f.directory.write("keys.toml", Array("""
            [forces.wmp]
            backend = "pkcs11"
            module = "\(TestCustody.module)"
            token = "\(token)"
            pin_env = "VAULT_TEST_MIGRATION_PIN"
            keyring = "wmp.keyring"
            passphrase_env = "VAULT_TEST_MIGRATION_PASSPHRASE"
            """.utf8))
        setenv("VAULT_TEST_MIGRATION_PIN", TestCustody.userPIN, 1)
        setenv("VAULT_TEST_MIGRATION_PASSPHRASE", "wmp passphrase 123", 1)
        // What a restarted vaultd (or `vaultd custody check`) opens from the custody file: both halves of the force.
        let reopened = try CustodyConfiguration.load(path: keysFile).open(f.force, mode: .readOnly, logger: logger)
        #expect(try await reopened.activeMasterKey() == .master(force: f.force, version: 2))
        let masters = try await reopened.status().filter { $0.kind == .master }
        #expect(masters.map(\.id.description) == ["fmk:wmp:1", "fmk:wmp:2"])
        #expect([.retiring, .retired].contains(masters[0].state) && masters[1].state == .active, "\(masters)")
        let midway = try #require(try await f.catalog.extracts(force: f.force, dataset: datasets[0],
                                                                states: [.current]).first)
        #expect(try await reopened.unwrap(midway.wrappedKey, context: midway.identity.wrapContext,
                                          justification: read).count == 32)
        // An upload after the move: its key is wrapped on the token, and the extract it replaces gets a token AK.
        let replaced = try #require(try await f.catalog.extracts(force: f.force, dataset: datasets[2],
                                                                  states: [.current]).first)
        contents[datasets[2]] = testBytes(count: 5_000, seed: 42)
        let fresh = try await f.upload(contents[datasets[2]]!, dataset: datasets[2])
        #expect(fresh.wrappedKey.kek == .master(force: f.force, version: 2))
        let second = try #require(try await f.catalog.extract(force: f.force, id: replaced.identity.extract))
        #expect(second.wrappedKey.kek == .archive(force: f.force, extract: replaced.identity.extract))

        _ = try await f.engine.runKeyJobsToCompletion(force: f.force)
        let status = try await f.engine.keyStatus(force: f.force)
        #expect(status.active == .master(force: f.force, version: 2))
        #expect(status.remaining == 0 && status.failures.isEmpty)
        #expect(status.keys.first { $0.id == .master(force: f.force, version: 1) }?.state == .retired)
        #expect(status.references[.master(force: f.force, version: 1)] ?? 0 == 0)
        #expect(status.rotations.last?.processed ?? 0 >= 4)
        for dataset in datasets {
            let current = try #require(try await f.catalog.extracts(force: f.force, dataset: dataset,
                                                                     states: [.current]).first)
            #expect(current.wrappedKey.kek == .master(force: f.force, version: 2), "\(dataset)")
            #expect(try await f.read(dataset: dataset) == contents[dataset], "\(dataset)")
        }

        // The keyring's master key can now be destroyed; reads go on from the token.
        _ = try await f.engine.destroyMasterKey(principal: f.custodian, force: f.force, version: 1, requestID: "d")
        #expect(try await keyring.status().first { $0.id == .master(force: f.force, version: 1) }?.state == .destroyed)
        #expect(try await f.read(dataset: datasets[3]) == contents[datasets[3]])
        // The archive from before the move is still under its keyring archive key, readable through retrieval
        // custody, and shredding it destroys that key in the keyring.
        let retrieval = Justification(principal: "analyst-1", useCase: "serious-violence",
                                      purpose: .archiveRetrieval, requestID: "a")
        _ = try await onToken.unwrap(archived.wrappedKey, context: archived.identity.wrapContext,
                                     justification: retrieval)
        _ = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: archived.identity.extract,
                                            reason: "retention reached", requestID: "s")
        // Its key is gone from the keyring: destroyed, and (its certificate complete, v1 destroyed) its tombstone
        // removed too.
        #expect(try await keyring.status().first { $0.id == archived.wrappedKey.kek } == nil)
        #expect(try await f.catalog.certificates(force: f.force, extract: archived.identity.extract).last?.verdict
            == .complete)
        // The newer archive's key lives on the token; shredding destroys the token object.
        _ = try await f.engine.shredArchive(principal: f.custodian, force: f.force, extract: replaced.identity.extract,
                                            reason: "retention reached", requestID: "s2")
        #expect(try PKCS11Administration.destroyKeyObject(module: TestCustody.module, tokenLabel: token, pin: pin,
                                                          keyLabel: second.wrappedKey.kek.description) == false)
        // The audit trail names the move.
        let records = try await f.audit()
        #expect(records.contains { $0.action == "keys.migrate" && $0.outcome == .allowed })
        #expect(records.contains { $0.action == "keys.migrate" && $0.outcome != .allowed && $0.principal == "analyst-1" })
    } }

    @Test("a force on a keyring alone cannot migrate: the error says what the custody file needs",
          arguments: TestBackend.all)
    func noTokenConfigured(_ backend: TestBackend) async throws { try await backend.run {
        let f = try await EngineFixture(wmpOnKeyring: true)
        // A conflict (409 over HTTP, not the internal error it was): the custody file has to change first.
        let error = await #expect(throws: VaultError.self) {
            _ = try await f.engine.migrateMasterKey(principal: f.custodian, force: f.force, to: "pkcs11",
                                                    requestID: "m")
        }
        #expect(error?.code == .conflict)
        #expect((error?.cause as? CustodyError)?.code == .unsupportedBackend)
        #expect(error?.message.contains("backend = \"pkcs11\"") == true)
        #expect(try await f.wmp.activeMasterKey() == .master(force: f.force, version: 1))
    } }
}
