import Foundation
import KeyCustody
import Logging
import Testing
import VaultTestSupport

/// The PKCS#11 backend against a real token (SoftHSM2), in both passes of `make test`: the formats, the key
/// protections, persistence, and the failures an HSM operator meets (wrong PIN, missing module, lost sessions, a key
/// deleted behind the vault's back, a token that goes away and comes back).
@Suite("PKCS#11 custody on SoftHSM2", .serialized)
struct PKCS11Tests {
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
    let force = try! ForceID(force: "wmp")
    let module = TestCustody.module

    func pin(_ text: String = TestCustody.userPIN) -> SecureBytes { TestCustody.secret(text) }

    func context(_ extract: ExtractID = ExtractID.generate()) throws -> WrapContext {
        WrapContext(force: force, dataset: try DatasetID(dataset: "crime"), extract: extract)
    }

    let read = Justification(principal: "analyst-1", useCase: "uc", purpose: .useCaseRead, requestID: "r")
    let rewrap = Justification(principal: "vaultd", purpose: .rewrap, requestID: "k")

    /// A token with master key 1 of `wmp`, opened read-write.
    func freshCustody() throws -> (String, PKCS11Custody) { try TestCustody.freshToken(force: force, prefix: "unit") }

    @Test("the token's AES-GCM reproduces the Wycheproof vectors DESIGN 5.2 uses (256-bit key, 96-bit IV, 128-bit tag)")
    func wycheproofThroughTheToken() throws {
        struct File: Decodable {
            struct Group: Decodable {
                let keySize, ivSize, tagSize: Int
                let tests: [Test]
            }
            struct Test: Decodable {
                let tcId: Int
                let key, iv, aad, msg, ct, tag, result: String
            }
            let testGroups: [Group]
        }
        guard let file = try TestVectors.load(File.self, "wycheproof/aes_gcm_test.json") else { return }
        let token = try TestCustody.newToken("kat")
        var ran = 0
        var failures: [Int] = []
        for group in file.testGroups where group.keySize == 256 && group.ivSize == 96 && group.tagSize == 128 {
            for test in group.tests {
                let expected = hexBytes(test.ct) + hexBytes(test.tag)
                let result = try PKCS11Administration.knownAnswerGCM(
                    module: module, tokenLabel: token, pin: pin(), key: hexBytes(test.key), iv: hexBytes(test.iv),
                    aad: hexBytes(test.aad), plaintext: hexBytes(test.msg), ciphertextAndTag: expected)
                let passed = test.result == "valid"
                    ? result.sealed == expected && result.opened == hexBytes(test.msg)
                    : result.opened == nil
                if !passed { failures.append(test.tcId) }
                ran += 1
            }
        }
        print("wycheproof aes_gcm_test.json through SoftHSM2's CKM_AES_GCM: \(ran) vectors, failed: \(failures)")
        #expect(ran > 30)
        #expect(failures.isEmpty)
    }

    @Test("keys are generated on the token, sensitive and not extractable; wrapped keys have the DESIGN 5.2 shape")
    func keysStayOnTheToken() async throws {
        let (token, custody) = try freshCustody()
        let context = try context()
        let data = try await custody.generateDataKey(for: context)
        #expect(data.wrapped.kek == .master(force: force, version: 1))
        #expect(data.wrapped.iv.count == 12 && data.wrapped.ciphertext.count == 48)
        let json = data.wrapped.canonicalText
        #expect(json.contains("\"alg\":\"A256GCM\"") && json.contains("\"kek\":\"fmk:wmp:1\""))
        let back = try await custody.unwrap(try WrappedKey(json: try JSONParser.parse(json)), context: context,
                                           justification: read)
        #expect(back == data.key)

        let protection = try PKCS11Administration.keyProtection(module: module, tokenLabel: token, pin: pin(),
                                                                keyLabel: "fmk:wmp:1")
        #expect(protection == .init(sensitive: true, extractable: false, onToken: true, valueReadable: false,
                                    keyBytes: 32))

        // Bound to its context: another extract's AAD does not open it, and the error says so.
        let other = await #expect(throws: CustodyError.self) {
            _ = try await custody.unwrap(data.wrapped, context: try self.context(), justification: self.read)
        }
        #expect(other?.code == .contextMismatch)
        // Archive keys refuse the live read path, as with the keyring.
        let extract = context.extract
        let ak = try await custody.createArchiveKey(for: extract)
        let archived = try await custody.rewrap(data.wrapped, context: context, to: ak, justification: rewrap)
        let refused = await #expect(throws: CustodyError.self) {
            _ = try await custody.unwrap(archived, context: context, justification: self.read)
        }
        #expect(refused?.code == .purposeRefused)
    }

    @Test("states survive a restart: rotation, retirement, archive keys and tombstones are read back from the token")
    func persistence() async throws {
        let (token, custody) = try freshCustody()
        let context = try context()
        let data = try await custody.generateDataKey(for: context)
        let v2 = try await custody.rotate()
        let moved = try await custody.rewrap([RewrapItem(wrapped: data.wrapped, context: context)], to: v2,
                                             justification: rewrap)
        let onV2 = try moved[0].get()
        try await custody.retire(.master(force: force, version: 1))
        try await custody.destroy(.master(force: force, version: 1))
        let ak = try await custody.createArchiveKey(for: ExtractID.generate())
        try await custody.destroy([ak])

        let reopened = try PKCS11Custody.open(module: module, tokenLabel: token, pin: pin(), force: force,
                                              mode: .readOnly, logger: logger)
        let states = try await reopened.status().map { "\($0.id)=\($0.state.rawValue)" }
        #expect(states == ["fmk:wmp:1=destroyed", "fmk:wmp:2=active", "\(ak)=destroyed"])
        #expect(try await reopened.activeMasterKey() == v2)
        #expect(try await reopened.unwrap(onV2, context: context, justification: read) == data.key)
        let gone = await #expect(throws: CustodyError.self) {
            _ = try await reopened.unwrap(data.wrapped, context: context, justification: self.read)
        }
        #expect(gone?.code == .keyDestroyed)
        // The destroyed key objects are gone from the token itself, not just marked.
        #expect(try PKCS11Administration.destroyKeyObject(module: module, tokenLabel: token, pin: pin(),
                                                          keyLabel: "fmk:wmp:1") == false)
        // A read-only custody refuses changes.
        let readOnly = await #expect(throws: CustodyError.self) { _ = try await reopened.rotate() }
        #expect(readOnly?.code == .readOnly)
    }

    @Test("rotations at once get distinct versions; a tampered wrapped key fails alone and the token keeps working")
    func concurrentRotationsAndTampering() async throws {
        let (_, custody) = try freshCustody()
        let context = try context()
        let data = try await custody.generateDataKey(for: context)
        let versions = try await withThrowingTaskGroup(of: KEKID.self) { group in
            for _ in 0..<4 { group.addTask { try await custody.rotate() } }
            var all: [KEKID] = []
            for try await id in group { all.append(id) }
            return all
        }
        #expect(Set(versions).count == 4)
        let masters = try await custody.status().filter { $0.kind == .master }
        #expect(masters.map(\.id.description) == (1...5).map { "fmk:wmp:\($0)" })
        #expect(masters.filter { $0.state == .active }.map(\.id) == [.master(force: force, version: 5)])
        // Flip one ciphertext byte: context_mismatch, many times over, and the token still serves.
        var bytes = data.wrapped.ciphertext
        bytes[0] ^= 1
        let tampered = try WrappedKey(kek: data.wrapped.kek, iv: data.wrapped.iv, ciphertext: bytes)
        for _ in 0..<20 {
            let error = await #expect(throws: CustodyError.self) {
                _ = try await custody.unwrap(tampered, context: context, justification: self.read)
            }
            #expect(error?.code == .contextMismatch)
        }
        #expect(try await custody.unwrap(data.wrapped, context: context, justification: read) == data.key)
    }

    @Test("a wrong PIN, a missing module, an unknown token and an empty token are clear errors without the PIN")
    func openingFailures() throws {
        // A token this process has not logged in to yet (a login is shared by every session of a process).
        let token = try TestCustody.newToken("pin")
        let wrong = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.open(module: module, tokenLabel: token, pin: pin("not-the-pin-4321"),
                                       force: force, mode: .readOnly, logger: logger)
        }
        #expect(wrong?.code == .wrongPIN)
        #expect(wrong?.underlying == "pkcs11:CKR_PIN_INCORRECT")
        #expect(wrong.map { !"\($0)".contains("not-the-pin") } == true)

        let missing = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.open(module: "/usr/lib/no-such-hsm/libpkcs11.so", tokenLabel: token, pin: pin(),
                                       force: force, mode: .readOnly, logger: logger)
        }
        #expect(missing?.code == .moduleUnavailable)
        #expect(missing?.message.contains("/usr/lib/no-such-hsm/libpkcs11.so") == true)

        let notAModule = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.open(module: "/etc/hostname", tokenLabel: token, pin: pin(), force: force,
                                       mode: .readOnly, logger: logger)
        }
        #expect(notAModule?.code == .moduleUnavailable)

        let unknown = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.open(module: module, tokenLabel: "no-such-token", pin: pin(), force: force,
                                       mode: .readOnly, logger: logger)
        }
        #expect(unknown?.code == .tokenUnavailable)
        #expect(unknown?.message.contains("no-such-token") == true)

        let empty = try TestCustody.newToken("empty")
        let uninitialised = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.open(module: module, tokenLabel: empty, pin: pin(), force: force,
                                       mode: .readWrite, logger: logger)
        }
        #expect(uninitialised?.code == .unknownKey)
        #expect(uninitialised?.message.contains("vault hsm init") == true)
        _ = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: pin(), force: force, logger: logger)
        let twice = #expect(throws: CustodyError.self) {
            _ = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: pin(), force: force,
                                             logger: logger)
        }
        #expect(twice?.code == .alreadyExists)
    }

    @Test("every session closed under the custody mid-operation: the next operations log in again and succeed")
    func sessionsClosed() async throws {
        let (token, custody) = try freshCustody()
        let context = try context()
        let data = try await custody.generateDataKey(for: context)
        for round in 0..<3 {
            try PKCS11Administration.closeAllSessions(module: module, tokenLabel: token)
            #expect(try await custody.unwrap(data.wrapped, context: context, justification: read) == data.key,
                    "round \(round)")
            let more = try await custody.generateDataKey(for: context)
            try PKCS11Administration.closeAllSessions(module: module, tokenLabel: token)
            #expect(try await custody.unwrap(more.wrapped, context: context, justification: read) == more.key)
        }
        // Concurrent operations while sessions are cut from under them.
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<40 {
                group.addTask {
                    if index % 10 == 0 { try PKCS11Administration.closeAllSessions(module: module, tokenLabel: token) }
                    return try await custody.unwrap(data.wrapped, context: context, justification: read) == data.key
                }
            }
            for try await ok in group { #expect(ok) }
        }
        _ = try await custody.rotate()
        #expect(try await custody.status().count == 2)
    }

    @Test("a key object deleted outside the vault is a clear error naming it; the force's other keys keep working")
    func keyDeletedOutside() async throws {
        let (token, custody) = try freshCustody()
        let context = try context()
        let first = try await custody.generateDataKey(for: context)
        let extract = ExtractID.generate()
        let archiveContext = try self.context(extract)
        let archived = try await custody.generateDataKey(for: archiveContext)
        let ak = try await custody.createArchiveKey(for: extract)
        let underAK = try await custody.rewrap(archived.wrapped, context: archiveContext, to: ak,
                                               justification: rewrap)

        #expect(try PKCS11Administration.destroyKeyObject(module: module, tokenLabel: token, pin: pin(),
                                                          keyLabel: ak.description))
        let retrieval = Justification(principal: "analyst-1", useCase: "uc", purpose: .archiveRetrieval,
                                      requestID: "a")
        let missing = await #expect(throws: CustodyError.self) {
            _ = try await custody.unwrap(underAK, context: archiveContext, justification: retrieval)
        }
        #expect(missing?.code == .keyObjectMissing)
        #expect(missing?.message.contains(ak.description) == true)
        #expect(missing?.message.contains("deleted outside the vault") == true)
        // The master key is untouched.
        #expect(try await custody.unwrap(first.wrapped, context: context, justification: read) == first.key)
        // Shredding that archive still completes: the record catches up with the token.
        try await custody.destroy([ak])
        #expect(try await custody.status().first { $0.id == ak }?.state == .destroyed)
    }

    @Test("the custody file: a pkcs11 force with its PIN source; mistakes are named")
    func configuration() throws {
        let good = try CustodyConfiguration.parse("""
            [forces.nyp]
            backend = "pkcs11"
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token = "nyp-vault"
            pin_file = "secrets/nyp.pin"

            [forces.wmp]
            backend = "pkcs11"
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token = "wmp-vault"
            pin_env = "VAULT_PIN_WMP"
            keyring = "wmp.keyring"
            passphrase_env = "VAULT_PASSPHRASE_WMP"
            """, source: "keys.toml", baseDirectory: "/etc/vault")
        #expect(good.forces.map(\.backend) == [
            .pkcs11(module: "/usr/lib/softhsm/libsofthsm2.so", token: "nyp-vault",
                    pin: .file("/etc/vault/secrets/nyp.pin"), earlier: nil),
            .pkcs11(module: "/usr/lib/softhsm/libsofthsm2.so", token: "wmp-vault", pin: .environment("VAULT_PIN_WMP"),
                    earlier: .init(path: "/etc/vault/wmp.keyring", passphrase: .environment("VAULT_PASSPHRASE_WMP"))),
        ])
        #expect(good.forces[1].backend.secretVariables == ["VAULT_PIN_WMP", "VAULT_PASSPHRASE_WMP"])
        let mistakes: [(String, String)] = [
            ("backend = \"pkcs11\"\ntoken = \"t\"\npin_env = \"P\"", "module"),
            ("backend = \"pkcs11\"\nmodule = \"lib.so\"\ntoken = \"t\"\npin_env = \"P\"", "absolute"),
            ("backend = \"pkcs11\"\nmodule = \"/m.so\"\npin_env = \"P\"", "token"),
            ("backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"", "pin_env or pin_file"),
            ("backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"P\"\npin_file = \"f\"", "not both"),
            ("backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"P\"\nkeyring = \"k\"",
             "earlier keyring needs"),
            ("backend = \"keyring\"\nkeyring = \"k\"\npassphrase_env = \"P\"\npin_env = \"X\"", "belongs to backend"),
            ("backend = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"1234\"", "unknown key \"pin\""),
        ]
        for (body, expected) in mistakes {
            let error = #expect(throws: CustodyError.self) {
                _ = try CustodyConfiguration.parse("[forces.wmp]\n" + body, source: "keys.toml", baseDirectory: ".")
            }
            #expect(error?.code == .invalidConfiguration)
            #expect(error?.message.contains(expected) == true, "\(error?.message ?? "") should mention \(expected)")
        }
    }
}
