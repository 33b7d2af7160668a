import Foundation
import KeyCustody
import Logging
import Testing
import VaultTestSupport

func secret(_ text: String) -> SecureBytes {
    var bytes = Array(text.utf8)
    return SecureBytes(consuming: &bytes)
}

let testLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
let passphrase = "correct horse battery staple"

func makeKeyring(_ directory: TemporaryDirectory, force: String = "wmp", name: String = "wmp.keyring") throws
    -> KeyringCustody
{
    try KeyringCustody.create(at: directory.file(name), force: try ForceID(force: force),
                              passphrase: secret(passphrase), parameters: .interactive, logger: testLogger)
}

func context(force: String = "wmp", dataset: String = "crime", extract: ExtractID = .generate()) throws -> WrapContext {
    WrapContext(force: try ForceID(force: force), dataset: try DatasetID(dataset: dataset), extract: extract)
}

let readJustification = Justification(principal: "analyst-1", useCase: "serious-violence", purpose: .useCaseRead,
                                      requestID: "r1")
let rewrapJustification = Justification(principal: "vaultd", purpose: .rewrap, requestID: "r2")

@Suite("Keyring custody")
struct KeyringTests {
    @Test("create, reopen, and unwrap what was wrapped; the file holds no key bytes in the clear")
    func roundTrip() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let ctx = try context()
        let dataKey = try await custody.generateDataKey(for: ctx)
        #expect(dataKey.wrapped.kek.description == "fmk:wmp:1")
        let reopened = try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                               logger: testLogger)
        let key = try await reopened.unwrap(dataKey.wrapped, context: ctx, justification: readJustification)
        #expect(key == dataKey.key)
        let status = try await reopened.status()
        #expect(status.map(\.id.description) == ["fmk:wmp:1"])
        #expect(status.first?.state == .active)
        let file = try directory.read("wmp.keyring")
        let text = String(decoding: file, as: UTF8.self)
        #expect(text.hasPrefix(#"{"force":"wmp","format":"vault-keyring-v1","kdf":{"alg":"argon2id13""#))
        #expect(!text.contains(Base64.encode(dataKey.key.withUnsafeBytes { Array($0) })))
    }

    @Test("wrong passphrase, truncation, edits and wrong force each give their own error; the file is untouched")
    func openFailures() async throws {
        let directory = try TemporaryDirectory()
        _ = try makeKeyring(directory)
        let path = directory.file("wmp.keyring")
        let original = try directory.read("wmp.keyring")

        #expect(throws: CustodyError(.wrongPassphrase, "")) {
            try KeyringCustody.open(at: path, passphrase: secret("not the passphrase"), logger: testLogger)
        }
        #expect(throws: CustodyError(.wrongForce, "")) {
            try KeyringCustody.open(at: path, passphrase: secret(passphrase), expectedForce: try ForceID(force: "gmp"),
                                    logger: testLogger)
        }
        #expect(try directory.read("wmp.keyring") == original)

        let truncated = try directory.write("truncated.keyring", Array(original.prefix(original.count / 2)))
        let error = #expect(throws: CustodyError.self) {
            try KeyringCustody.open(at: truncated, passphrase: secret(passphrase), logger: testLogger)
        }
        #expect(error?.code == .keyringMalformed)
        #expect(error?.message.contains("truncated") == true)

        // A flipped character inside the sealed data: authentication fails.
        var text = String(decoding: original, as: UTF8.self)
        let sealedStart = text.range(of: "\"sealed\":\"")!.upperBound
        let position = text.index(sealedStart, offsetBy: 10)
        let replacement: Character = text[position] == "A" ? "B" : "A"
        text.replaceSubrange(position...position, with: String(replacement))
        let edited = try directory.write("edited.keyring", Array(text.utf8))
        #expect(throws: CustodyError(.wrongPassphrase, "")) {
            try KeyringCustody.open(at: edited, passphrase: secret(passphrase), logger: testLogger)
        }
        // The force renamed in the outer document: the AAD no longer matches.
        let renamed = try directory.write(
            "renamed.keyring", Array(String(decoding: original, as: UTF8.self)
                .replacingOccurrences(of: "\"force\":\"wmp\"", with: "\"force\":\"gmp\"").utf8))
        #expect(throws: CustodyError(.wrongPassphrase, "")) {
            try KeyringCustody.open(at: renamed, passphrase: secret(passphrase), logger: testLogger)
        }
        // Structural edits are named precisely.
        for (name, from, to) in [
            ("format", "vault-keyring-v1", "vault-keyring-v2"), ("kdf", "argon2id13", "argon2i13"),
            ("ops", "\"opslimit\":2", "\"opslimit\":100000"), ("salt", "\"salt\":\"", "\"salt\":\"AAAA"),
        ] {
            let bad = try directory.write("\(name).keyring", Array(String(decoding: original, as: UTF8.self)
                .replacingOccurrences(of: from, with: to).utf8))
            #expect(throws: CustodyError(.keyringMalformed, "")) {
                try KeyringCustody.open(at: bad, passphrase: secret(passphrase), logger: testLogger)
            }
        }
        #expect(throws: CustodyError(.io, "")) {
            try KeyringCustody.open(at: directory.file("missing.keyring"), passphrase: secret(passphrase),
                                    logger: testLogger)
        }
        #expect(try directory.read("wmp.keyring") == original)
    }

    @Test("unknown KEK, another force's key, a swapped context and a destroyed key are each refused")
    func unwrapFailures() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let ctx = try context()
        let dataKey = try await custody.generateDataKey(for: ctx)

        let unknown = try WrappedKey(kek: try KEKID("fmk:wmp:9"), iv: dataKey.wrapped.iv,
                                     ciphertext: dataKey.wrapped.ciphertext)
        await #expect(throws: CustodyError(.unknownKey, "")) {
            try await custody.unwrap(unknown, context: ctx, justification: readJustification)
        }
        await #expect(throws: CustodyError(.wrongForce, "")) {
            try await custody.unwrap(dataKey.wrapped, context: try context(force: "gmp", extract: ctx.extract),
                                     justification: readJustification)
        }
        for other in [try context(dataset: "custody", extract: ctx.extract), try context()] {
            await #expect(throws: CustodyError(.contextMismatch, "")) {
                try await custody.unwrap(dataKey.wrapped, context: other, justification: readJustification)
            }
        }
        var tampered = dataKey.wrapped.ciphertext
        tampered[3] ^= 0x40
        await #expect(throws: CustodyError(.contextMismatch, "")) {
            try await custody.unwrap(try WrappedKey(kek: dataKey.wrapped.kek, iv: dataKey.wrapped.iv, ciphertext: tampered),
                                     context: ctx, justification: readJustification)
        }
        // A read needs a use case; rewrap is not an unwrap purpose.
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.unwrap(dataKey.wrapped, context: ctx,
                                     justification: Justification(principal: "a", purpose: .useCaseRead, requestID: "x"))
        }
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.unwrap(dataKey.wrapped, context: ctx, justification: rewrapJustification)
        }
        #expect(throws: CustodyError(.malformedWrappedKey, "")) {
            try WrappedKey(json: .object(["kek": .string("fmk:wmp:1"), "alg": .string("A128GCM"),
                                          "iv": .string(Base64.encode(dataKey.wrapped.iv)),
                                          "ct": .string(Base64.encode(dataKey.wrapped.ciphertext))]))
        }
        #expect(try WrappedKey(json: dataKey.wrapped.json) == dataKey.wrapped)
    }

    @Test("rotation: v2 active, v1 retiring then retired then destroyed; rewrap moves keys; lineage dies with v1")
    func rotation() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let ctx = try context()
        let dataKey = try await custody.generateDataKey(for: ctx)
        let v2 = try await custody.rotate()
        #expect(v2.description == "fmk:wmp:2")
        #expect(try await custody.activeMasterKey() == v2)
        let states = Dictionary(uniqueKeysWithValues: try await custody.status().map { ($0.id.description, $0.state) })
        #expect(states == ["fmk:wmp:1": .retiring, "fmk:wmp:2": .active])

        // Old wrapped keys still unwrap while v1 is retiring; new keys go under v2.
        #expect(try await custody.unwrap(dataKey.wrapped, context: ctx, justification: readJustification) == dataKey.key)
        #expect(try await custody.generateDataKey(for: try context()).wrapped.kek == v2)

        let moved = try await custody.rewrap(dataKey.wrapped, context: ctx, to: v2, justification: rewrapJustification)
        #expect(moved.kek == v2)
        #expect(try await custody.unwrap(moved, context: ctx, justification: readJustification) == dataKey.key)
        await #expect(throws: CustodyError(.keyStateConflict, "")) {
            try await custody.rewrap(dataKey.wrapped, context: ctx, to: try KEKID("fmk:wmp:1"),
                                     justification: rewrapJustification)
        }
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.rewrap(dataKey.wrapped, context: ctx, to: v2, justification: readJustification)
        }

        let v1 = try KEKID("fmk:wmp:1")
        await #expect(throws: CustodyError(.keyStateConflict, "")) { try await custody.destroy(v1) }
        await #expect(throws: CustodyError(.keyStateConflict, "")) { try await custody.retire(v2) }
        try await custody.retire(v1)
        try await custody.destroy(v1)
        await #expect(throws: CustodyError(.keyDestroyed, "")) {
            try await custody.unwrap(dataKey.wrapped, context: ctx, justification: readJustification)
        }
        // The tombstone survives a reopen and still has no key bytes.
        let reopened = try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                               logger: testLogger)
        let reopenedStates = Dictionary(uniqueKeysWithValues: try await reopened.status().map { ($0.id.description, $0.state) })
        #expect(reopenedStates == ["fmk:wmp:1": .destroyed, "fmk:wmp:2": .active])
        await #expect(throws: CustodyError(.keyDestroyed, "")) {
            try await reopened.unwrap(dataKey.wrapped, context: ctx, justification: readJustification)
        }
        #expect(try await reopened.unwrap(moved, context: ctx, justification: readJustification) == dataKey.key)
        await #expect(throws: CustodyError(.readOnly, "")) { try await reopened.rotate() }
        #expect(try await custody.rotate().description == "fmk:wmp:3")
    }

    @Test("archive keys: rewrap under AK, unwrap only for archive retrieval, destroy shreds the key")
    func archiveKeys() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let ctx = try context()
        let dataKey = try await custody.generateDataKey(for: ctx)
        let ak = try await custody.createArchiveKey(for: ctx.extract)
        #expect(ak.description == "ak:wmp:\(ctx.extract)")
        #expect(try await custody.createArchiveKey(for: ctx.extract) == ak)
        let archived = try await custody.rewrap(dataKey.wrapped, context: ctx, to: ak, justification: rewrapJustification)
        #expect(archived.kek == ak)
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.unwrap(archived, context: ctx, justification: readJustification)
        }
        let retrieval = Justification(principal: "analyst-1", useCase: "serious-violence",
                                      purpose: .archiveRetrieval, requestID: "r3")
        #expect(try await custody.unwrap(archived, context: ctx, justification: retrieval) == dataKey.key)
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.unwrap(dataKey.wrapped, context: ctx, justification: retrieval)
        }
        // An archived key never moves again: not back under a master key (that would bypass dual control), not
        // under another extract's archive key (that would break crypto-shredding of one archive).
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.rewrap(archived, context: ctx, to: try await custody.activeMasterKey(),
                                     justification: rewrapJustification)
        }
        let other = try context()
        let otherAK = try await custody.createArchiveKey(for: other.extract)
        await #expect(throws: CustodyError(.purposeRefused, "")) {
            try await custody.rewrap(dataKey.wrapped, context: ctx, to: otherAK, justification: rewrapJustification)
        }
        try await custody.destroy(ak)
        await #expect(throws: CustodyError(.keyDestroyed, "")) {
            try await custody.unwrap(archived, context: ctx, justification: retrieval)
        }
        await #expect(throws: CustodyError(.keyDestroyed, "")) { try await custody.createArchiveKey(for: ctx.extract) }
        let info = try await custody.status().first { $0.id == ak }
        #expect(info?.state == .destroyed)
        #expect(info?.kind == .archive)
    }

    @Test("passphrase change: the old passphrase stops working, the keys stay")
    func changePassphrase() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let ctx = try context()
        let dataKey = try await custody.generateDataKey(for: ctx)
        #expect(throws: CustodyError(.passphraseUnavailable, "")) { try custody.changePassphrase(to: secret("short")) }
        try custody.changePassphrase(to: secret("a brand new passphrase"))
        let path = directory.file("wmp.keyring")
        #expect(throws: CustodyError(.wrongPassphrase, "")) {
            try KeyringCustody.open(at: path, passphrase: secret(passphrase), logger: testLogger)
        }
        let reopened = try KeyringCustody.open(at: path, passphrase: secret("a brand new passphrase"), logger: testLogger)
        #expect(try await reopened.unwrap(dataKey.wrapped, context: ctx, justification: readJustification) == dataKey.key)
    }

    @Test("one writer at a time: a second writer is refused with the holder's pid; readers need no lock")
    func writerLock() async throws {
        let directory = try TemporaryDirectory()
        let writer = try makeKeyring(directory)
        let path = directory.file("wmp.keyring")
        let error = #expect(throws: CustodyError.self) {
            try KeyringCustody.open(at: path, passphrase: secret(passphrase), mode: .readWrite, logger: testLogger)
        }
        #expect(error?.code == .keyringLocked)
        #expect(error?.message.contains("pid \(getpid())") == true)
        let reader = try KeyringCustody.open(at: path, passphrase: secret(passphrase), logger: testLogger)
        await #expect(throws: CustodyError(.readOnly, "")) { try await reader.rotate() }
        _ = writer
    }

    @Test("a failed write changes neither the file nor the keys in memory")
    func failedWrite() async throws {
        let directory = try TemporaryDirectory()
        let custody = try makeKeyring(directory)
        let original = try directory.read("wmp.keyring")
        // Move the directory away: the temporary file cannot be created, so the rotation must fail cleanly.
        let moved = directory.path + "-moved"
        try FileManager.default.moveItem(atPath: directory.path, toPath: moved)
        await #expect(throws: CustodyError(.io, "")) { try await custody.rotate() }
        try FileManager.default.moveItem(atPath: moved, toPath: directory.path)
        #expect(try await custody.activeMasterKey().description == "fmk:wmp:1")
        #expect(try await custody.status().count == 1)
        #expect(try directory.read("wmp.keyring") == original)
        #expect(try directory.entries() == ["wmp.keyring", "wmp.keyring.lock"])
        // And it works again once the cause is gone.
        #expect(try await custody.rotate().description == "fmk:wmp:2")
    }

    @Test("create never overwrites an existing file")
    func createRefusesOverwrite() throws {
        let directory = try TemporaryDirectory()
        let existing = try directory.write("wmp.keyring", Array("precious".utf8))
        #expect(throws: CustodyError(.alreadyExists, "")) {
            try KeyringCustody.create(at: existing, force: try ForceID(force: "wmp"), passphrase: secret(passphrase),
                                      parameters: .interactive, logger: testLogger)
        }
        #expect(try directory.read("wmp.keyring") == Array("precious".utf8))
    }

    @Test("the custody file: Keys.example parses; mistakes are named")
    func custodyConfiguration() throws {
        let example = TestVectors.packageRoot.appendingPathComponent("Keys.example").path
        let configuration = try CustodyConfiguration.load(path: example)
        #expect(configuration.forces.count >= 2)
        for force in configuration.forces {
            guard case .keyring(_, let source) = force.backend else { continue }
            if case .environment(let name) = source { #expect(name.hasPrefix("VAULT_PASSPHRASE_")) }
        }
        let cases: [(String, CustodyError.Code)] = [
            ("[forces.wmp]\nbackend = \"keyring\"\nkeyring = \"k\"\n", .invalidConfiguration),
            ("[forces.wmp]\nbackend = \"keyring\"\nkeyring = \"k\"\npassphrase_env = \"A\"\npassphrase_file = \"f\"\n",
             .invalidConfiguration),
            ("[forces.WMP]\nbackend = \"keyring\"\nkeyring = \"k\"\npassphrase_env = \"A\"\n", .invalidConfiguration),
            ("[forces.wmp]\nbackend = \"keyring\"\nkeyring = \"k\"\npassphrase_envv = \"A\"\n", .invalidConfiguration),
            ("[forces.wmp]\nbackend = \"vault\"\n", .invalidConfiguration),
            // A remote force names where its custody service is; it holds no key material on the platform.
            ("[forces.wmp]\nbackend = \"remote\"\n", .invalidConfiguration),
            ("[forces.wmp]\nbackend = \"remote\"\nurl = \"https://c:9443\"\nca = \"ca.pem\"\n"
             + "client_certificate = \"c.pem\"\nclient_key = \"c.key\"\ncustody_key = \"k.pub\"\n"
             + "passphrase_env = \"A\"\n", .invalidConfiguration),
            ("[forces.wmp]\nbackend = \"pkcs11\"\n", .invalidConfiguration),
            ("[forces.wmp\n", .invalidConfiguration),
            ("", .invalidConfiguration),
        ]
        for (text, code) in cases {
            let error = #expect(throws: CustodyError.self) {
                try CustodyConfiguration.parse(text, source: "test.toml", baseDirectory: "/etc/vault")
            }
            #expect(error?.code == code, "\(text)")
        }
        let parsed = try CustodyConfiguration.parse(
            "[forces.wmp]\nbackend = \"keyring\"\nkeyring = \"k/wmp.keyring\"\npassphrase_file = \"/run/s\"\n",
            source: "t", baseDirectory: "/etc/vault")
        #expect(parsed.forces.first?.backend == .keyring(path: "/etc/vault/k/wmp.keyring", passphrase: .file("/run/s")))
    }

    @Test("the custody file opens a force's keyring with the passphrase from its configured variable")
    func openThroughConfiguration() async throws {
        let directory = try TemporaryDirectory()
        _ = try makeKeyring(directory)
        let passphraseFile = try directory.write("pass", Array((passphrase + "\n").utf8))
        let config = try directory.write("keys.toml", Array("""
            [forces.wmp]
            backend = "keyring"
            keyring = "wmp.keyring"
            passphrase_file = "\(passphraseFile)"
            """.utf8))
        let configuration = try CustodyConfiguration.load(path: config)
        let custody = try configuration.open(try ForceID(force: "wmp"), mode: .readOnly, logger: testLogger)
        #expect(try await custody.activeMasterKey().description == "fmk:wmp:1")
        #expect(throws: CustodyError(.invalidConfiguration, "")) {
            try configuration.open(try ForceID(force: "gmp"), mode: .readOnly, logger: testLogger)
        }
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        components(separatedBy: target).joined(separator: replacement)
    }
}
