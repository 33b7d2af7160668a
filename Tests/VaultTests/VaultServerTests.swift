import Foundation
import KeyCustody
import Logging
import Testing
import VaultTestSupport

@testable import Vault

/// What `vaultd serve` does before it serves, in process: the library's `VaultServer` opens custody and storage and
/// does the start-up duties.
@Suite("vaultd start-up in process")
struct VaultServerTests {
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
    let force = try! ForceID(force: "wmp")

    /// A vaultd directory with keyring custody for wmp, TLS files and `settings` in vaultd.toml.
    func directory(settings: String = "") throws
        -> (directory: TemporaryDirectory, configuration: ServerConfiguration, passphraseVariable: String)
    {
        let directory = try TemporaryDirectory("vault-startup")
        let variable = "VAULT_TEST_STARTUP_PASSPHRASE_\(UInt32.random(in: 0...UInt32.max))"
        let custody = try TestCustody.custodyTable(force: "wmp", directory: directory, passphraseVariable: variable,
                                                   passphrase: "startup passphrase", backend: "keyring")
        setenv(variable, "startup passphrase", 1)
        _ = try directory.write("keys.toml", Array(custody.table.utf8))
        _ = try DevPKI(directory: directory.file("tls"), clients: [], foreign: [])
        _ = try directory.write("vaultd.toml", Array("""
            listen = "127.0.0.1:1"
            data_dir = "data"
            custody = "keys.toml"
            instance = "startup-test"
            \(settings)

            [tls]
            certificate = "tls/server.pem"
            private_key = "tls/server.key"
            client_ca = "tls/ca.pem"

            [[principals]]
            id = "custodian-wmp"
            custodian = ["wmp"]
            """.utf8))
        return (directory, try ServerConfiguration.load(path: directory.file("vaultd.toml")), variable)
    }

    @Test("start-up collects a crashed upload, frees this instance's old leases, records custody, scrubs the secret")
    func startUpDuties() async throws {
        let (directory, configuration, variable) = try directory()
        let now = currentUnixTime()
        let stale = ExtractIdentity(force: force, dataset: try DatasetID(dataset: "crime"), extract: .generate())
        do {
            // What a killed vaultd left: an upload that never committed, and a job lease of its previous life.
            try FileBlobStore.makeDirectory(configuration.dataDirectory)
            let catalog = try SQLiteCatalog(path: configuration.catalogPath)
            let wrapped = try WrappedKey(kek: .master(force: force, version: 1), iv: SecureRandom.bytes(count: 12),
                                         ciphertext: SecureRandom.bytes(count: 48))
            try await catalog.beginUpload(ExtractRecord(
                identity: stale, state: .uploading, wrappedKey: wrapped, plaintextSize: 0, ciphertextSize: 0,
                ciphertextSHA256: [], source: .plaintext, uploadedBy: "ingest", createdAt: now - 7200))
            #expect(try await catalog.takeLease("rewrap:wmp", holder: "startup-test#1", seconds: 3600, now: now))
        }
        #expect(getenv(variable) != nil)
        let server = try await VaultServer.open(configuration: configuration, logger: logger,
                                                scrubStorageSecrets: false)
        let catalog = server.engine.catalog
        #expect(try await catalog.extract(force: force, id: stale.extract) == nil)
        #expect(try await catalog.takeLease("rewrap:wmp", holder: "other#1", seconds: 30, now: now))
        let lines = try await catalog.auditLines(force: force, after: 0, through: .max, limit: 10)
        #expect(lines.contains { String(decoding: $0.line, as: UTF8.self).contains(#""action":"custody.open""#) })
        #expect(getenv(variable) == nil, "the keyring passphrase stays in the environment")
        withExtendedLifetime(directory) {}
    }

    @Test("a missing audit signing key is refused on a catalog that has checkpoints, never silently replaced")
    func missingAuditKey() async throws {
        let (directory, configuration, _) = try directory()
        do {
            // What a vaultd whose key file was lost left behind: a chain with a signed checkpoint.
            try FileBlobStore.makeDirectory(configuration.dataDirectory)
            let catalog = try SQLiteCatalog(path: configuration.catalogPath)
            try await catalog.appendAudit([AuditEntry(force: force, time: currentUnixTime(), principal: "vaultd",
                                                      action: "custody.open", target: "wmp", outcome: .allowed,
                                                      requestID: "x")])
            #expect(try await catalog.checkpointAudit(force: force, now: currentUnixTime(),
                                                      signer: AuditSigner(key: Ed25519.PrivateKey())) != nil)
        }
        #expect(!AuditSigner.exists(in: configuration.dataDirectory))
        let error = await #expect(throws: VaultError.self) {
            _ = try await VaultServer.open(configuration: configuration, logger: logger, scrubStorageSecrets: false)
        }
        #expect(error?.code == .malformedAudit)
        #expect(error?.message.contains("audit-signing.key is missing, but the catalog holds checkpoints") == true)
        #expect(!AuditSigner.exists(in: configuration.dataDirectory), "a new key was made")
        withExtendedLifetime(directory) {}
    }

    @Test("[audit_key] puts the audit key on a token: generated there on first start, found again, no key file; checkpoints verify with the published public key; a token without it is refused once the catalog holds checkpoints", .enabled(if: TestBackend.softHSMPresent))
    func auditKeyOnToken() async throws {
        let token = try TestCustody.newToken("audit-key")
        let pinVariable = "VAULT_TEST_AUDIT_PIN_\(UInt32.random(in: 0...UInt32.max))"
        let settings = """
            [audit_key]
            module = "\(TestCustody.module)"
            token = "\(token)"
            pin_env = "\(pinVariable)"
            """
        let (directory, configuration, passphraseVariable) = try directory(settings: settings)
        #expect(configuration.auditKey?.label == "vault-audit")
        setenv(pinVariable, TestCustody.userPIN, 1)
        let published: Ed25519.PublicKey
        do {
            // The first server is released (and with it the keyring's writer lock) before the next start.
            let server = try await VaultServer.open(configuration: configuration, logger: logger,
                                                    scrubStorageSecrets: false)
            #expect(server.engine.signer.onToken)
            #expect(getenv(pinVariable) == nil, "the token PIN stays in the environment")
            #expect(!AuditSigner.exists(in: configuration.dataDirectory), "a key file was written")
            published = try Ed25519.PublicKey(pem: String(decoding: try directory.read("data/audit-signing.pub"),
                                                          as: UTF8.self))
            #expect(published == server.engine.signer.publicKey)
            let checkpoint = try #require(try await server.engine.catalog.checkpointAudit(
                force: force, now: currentUnixTime(), signer: server.engine.signer))
            #expect(published.isValidSignature(checkpoint.signature, for: checkpoint.signedBytes))
        }
        // A restart finds the same key on the token (vaultd scrubbed both secrets: set them again).
        setenv(pinVariable, TestCustody.userPIN, 1)
        setenv(passphraseVariable, "startup passphrase", 1)
        do {
            let again = try await VaultServer.open(configuration: configuration, logger: logger,
                                                   scrubStorageSecrets: false)
            #expect(again.engine.signer.publicKey == published)
        }
        // Pointed at a token without the key, on a catalog that holds checkpoints: refused, nothing generated.
        var elsewhere = configuration
        elsewhere.auditKey?.token = try TestCustody.newToken("audit-empty")
        setenv(pinVariable, TestCustody.userPIN, 1)
        setenv(passphraseVariable, "startup passphrase", 1)
        let error = await #expect(throws: VaultError.self) {
            _ = try await VaultServer.open(configuration: elsewhere, logger: logger, scrubStorageSecrets: false)
        }
        #expect(error?.code == .malformedAudit)
        #expect(error?.message.contains("vault-audit on token \(elsewhere.auditKey!.token) is missing") == true)
        #expect(try !PKCS11SigningKey.exists(module: TestCustody.module, tokenLabel: elsewhere.auditKey!.token,
                                             pin: TestCustody.secret(TestCustody.userPIN), label: "vault-audit",
                                             logger: logger))
        unsetenv(pinVariable)
        withExtendedLifetime(directory) {}
    }

    @Test("a [rotation] entry for a force the custody file does not serve is refused before anything opens")
    func unservedRotation() async throws {
        let (directory, configuration, _) = try directory(settings: "[rotation]\ngmp = 30\n")
        let error = await #expect(throws: CustodyError.self) {
            _ = try await VaultServer.open(configuration: configuration, logger: logger, scrubStorageSecrets: false)
        }
        #expect(error?.message == "[rotation] names force gmp, which the custody file does not serve")
        withExtendedLifetime(directory) {}
    }
}

@Suite("process protection")
struct ProcessProtectionTests {
    @Test("protectMemory leaves no core dump and makes the process undumpable (vaultd, the custody service, the CLI)")
    func undumpable() {
        DaemonProcess.protectMemory()
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_CORE.rawValue), &limit)
        #expect(limit.rlim_cur == 0 && limit.rlim_max == 0)
        #expect(!DaemonProcess.isDumpable)
    }
}
