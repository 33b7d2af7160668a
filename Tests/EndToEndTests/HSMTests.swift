import Foundation
import KeyCustody
import Testing
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// vaultd with forces on PKCS#11 tokens (SoftHSM2), driven as an operator and a custodian would, following the
/// README: moving a force from its keyring to its token, and a token that goes away and comes back.
@Suite("vaultd with an HSM", .serialized)
struct HSMTests {
    @Test("README walkthrough: a keyring force moves to its token with vault keys migrate, then its keyring keys die",
          arguments: TestBackend.all)
    func migrateThroughVaultd(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault(settings: "rewrap_batch_size = 2\nshred_interval_seconds = 0", backend: "keyring")
        try vault.makeHistory()
        let other = try vault.directory.write("stops.csv", testBytes(count: 70_000, seed: 31))
        #expect(try vault.upload("wmp", "stops", file: other, as: "ingest-wmp").status == 201)
        for index in 0..<4 {
            let file = try vault.directory.write("ds-\(index).csv", testBytes(count: 2000 + index, seed: UInt64(index)))
            #expect(try vault.upload("wmp", "ds-\(index)", file: file, as: "ingest-wmp").status == 201)
        }
        #expect(try vault.putUseCase("wmp", "stops-review", datasets: ["stops"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)

        // 1. The force's token exists (here SoftHSM2); 2. its custody-file entry becomes pkcs11, keeping the keyring
        // lines; 3. vaultd restarts with the PIN in its environment.
        let token = try TestCustody.newToken("wmp")
        let keys = try String(contentsOfFile: vault.directory.file("keys.toml"), encoding: .utf8)
        let moved = keys.replacingOccurrences(of: """
            [forces.wmp]
            backend = "keyring"
            """, with: """
            [forces.wmp]
            backend = "pkcs11"
            module = "\(TestCustody.module)"
            token = "\(token)"
            pin_env = "VAULT_PIN_WMP"
            """)
        #expect(moved != keys)
        _ = try vault.directory.write("keys.toml", Array(moved.utf8))
        vault.addSecrets(["VAULT_PIN_WMP": TestCustody.userPIN, "SOFTHSM2_CONF": try TestCustody.softHSMConfiguration()])
        vault.stop()
        // This start dies (SIGKILL) after the second batch is rewrapped on the token, before the catalog write.
        try await vault.start(environment: ["VAULT_CRASH_AT": "rewrap.batch-rewrapped:2"])
        let check = try Binaries.run("vaultd", ["custody", "check", "--custody", vault.directory.file("keys.toml")],
                                     environment: vault.secrets.merging(vault.passphrases) { $1 })
        #expect(check.status == 0, "\(check.stderr)")

        // 4. The custodian migrates; the job is killed midway and finishes after the restart, each key once.
        let migrated = try vault.cli(["keys", "migrate", "--force", "wmp", "--to", "pkcs11"], as: "custodian-wmp")
        #expect(migrated.status == 0, "\(migrated.stderr)")
        #expect(migrated.stdout.contains("fmk:wmp:1 -> fmk:wmp:2"), "\(migrated.stdout)")
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        try await vault.start()
        var status = try JSONParser.parse("{}")
        for _ in 0..<100 {
            status = try JSONParser.parse(try vault.cli(["keys", "status", "--force", "wmp", "--json"],
                                                        as: "custodian-wmp").stdout)
            if status["rewrap"]?["remaining"]?.integerValue == 0 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(status["active"]?.stringValue == "fmk:wmp:2")
        #expect(status["rewrap"]?["remaining"]?.integerValue == 0)
        #expect(status["rewrap"]?["failed"]?.integerValue == 0)
        // Six current extracts (crime, stops, ds-0...3), each moved exactly once across the two processes.
        #expect(status["rewrap"]?["processed"]?.integerValue == 6, "\(status.canonicalString)")
        let refused = try vault.cli(["keys", "migrate", "--force", "wmp", "--to", "pkcs11"], as: "analyst-1")
        #expect(refused.status == 9)
        let twice = try vault.cli(["keys", "migrate", "--force", "wmp", "--to", "pkcs11"], as: "custodian-wmp")
        #expect(twice.status == 8 && twice.stderr.contains("already on token"), "\(twice.stderr)")
        // gmp never had a token: the refusal says what to configure.
        let gmp = try vault.cli(["keys", "migrate", "--force", "gmp", "--to", "pkcs11"], as: "custodian-wmp")
        #expect(gmp.status != 0)

        // Reads are unchanged, and now unwrap on the token.
        let crime = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                   as: "analyst-1")
        let week2 = try vault.directory.read("week2.csv")
        #expect(crime.status == 200 && crime.body == week2)
        // 5. Once v1 is retired the custodian destroys it (in the keyring); reads go on, across a restart too.
        var destroyed: CommandResult?
        for _ in 0..<100 {
            destroyed = try vault.cli(["keys", "destroy", "--force", "wmp", "--version", "1"], as: "custodian-wmp")
            if destroyed?.status == 0 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(destroyed?.status == 0, "\(destroyed?.stderr ?? "")")
        vault.stop()
        try await vault.start()
        let stops = try vault.curl(["\(vault.base)/wmp/datasets/stops/current?use_case=stops-review"], as: "analyst-1")
        let stopsFile = try vault.directory.read("stops.csv")
        #expect(stops.status == 200 && stops.body == stopsFile)
        let listing = try vault.cli(["keys", "status", "--force", "wmp", "--json"], as: "custodian-wmp")
        let after = try JSONParser.parse(listing.stdout)
        let states = after["master_keys"]?.arrayValue?.map { "\($0["id"]?.stringValue ?? "")=\($0["state"]?.stringValue ?? "")" }
        #expect(states == ["fmk:wmp:1=destroyed", "fmk:wmp:2=active"])
        // New uploads wrap on the token; the audit trail names the move.
        let week3 = try vault.directory.write("week3.csv", testBytes(count: 1000, seed: 33))
        let uploaded = try vault.upload("wmp", "crime", file: week3, as: "ingest-wmp")
        #expect(uploaded.json["kek"] as? String == "fmk:wmp:2", "\(uploaded.json)")
        let audit = try vault.cli(["audit", "export", "--force", "wmp", "--out", "trail.ndjson"], as: "dpo-wmp")
        #expect(audit.status == 0, "\(audit.stderr)")
        let trail = try String(contentsOfFile: vault.directory.file("trail.ndjson"), encoding: .utf8)
        #expect(trail.contains("\"action\":\"keys.migrate\""))
        #expect(!trail.contains(TestCustody.userPIN))
        vault.stop()
    } }

    @Test("the token goes away (its sessions cut, then its files gone): 503 token_unavailable, and it recovers",
          arguments: TestBackend.all)
    func tokenGoneAndBack(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault(backend: "pkcs11")
        try vault.makeHistory()
        let url = "\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"
        let expected = try vault.directory.read("week2.csv")
        #expect(try vault.curl([url], as: "analyst-1").body == expected)

        // The token's directory disappears from under vaultd (as a removed or failed device would).
        let configuration = try String(contentsOfFile: try TestCustody.softHSMConfiguration(), encoding: .utf8)
        let tokens = try #require(configuration.split(separator: "\n").first { $0.hasPrefix("directories.tokendir") }?
            .split(separator: "=").last?.trimmingCharacters(in: .whitespaces))
        let label = try #require(vault.tokenLabel("wmp"))
        let directory = try #require(try FileManager.default.contentsOfDirectory(atPath: tokens).first { entry in
            let info = "\(tokens)/\(entry)/token.object"
            return (try? Data(contentsOf: URL(fileURLWithPath: info)))
                .map { String(decoding: $0, as: UTF8.self).contains(label) } ?? false
        })
        try FileManager.default.moveItem(atPath: "\(tokens)/\(directory)", toPath: "\(tokens)/../away-\(directory)")
        let during = try vault.curl([url], as: "analyst-1")
        // Whatever the token says, the read fails closed with a JSON error and vaultd stays up.
        #expect(during.status >= 500 || during.status == 200, "status \(during.status)")
        if during.status != 200 {
            #expect(during.errorCode != nil, "\(String(decoding: during.body, as: UTF8.self))")
        }
        print("read with the token's files gone: HTTP \(during.status) \(during.errorCode ?? "-")")
        #expect(try vault.curl(["https://127.0.0.1:\(vault.port)/healthz"]).status == 200)
        try FileManager.default.moveItem(atPath: "\(tokens)/../away-\(directory)", toPath: "\(tokens)/\(directory)")
        // Back: within a few seconds (the module is restarted at most every two seconds) reads work again.
        var after = try vault.curl([url], as: "analyst-1")
        for _ in 0..<50 where after.status != 200 {
            try await Task.sleep(for: .milliseconds(200))
            after = try vault.curl([url], as: "analyst-1")
        }
        #expect(after.status == 200 && after.body == expected, "\(after.status) \(after.errorCode ?? "-")")
        vault.stop()
    } }
}

@Suite("the HSM commands", .serialized)
struct HSMCommandTests {
    @Test("vault hsm init on the token make test initialised with softhsm2-util; custody check names a wrong PIN",
          arguments: TestBackend.all)
    func initAndCheck(_ backend: TestBackend) async throws { try await backend.run {
        let directory = try TemporaryDirectory("vault-hsm-cli")
        // `make test` initialises this token with softhsm2-util; run alone, the test makes its own.
        let token = try ProcessInfo.processInfo.environment["VAULT_TEST_CI_TOKEN"]
            .flatMap { label in try PKCS11Administration.tokenLabels(module: TestCustody.module).contains(label) ? label : nil }
            ?? TestCustody.newToken("cli")
        let force = "t\(UUID().uuidString.prefix(6).lowercased())"
        let keys = try directory.write("keys.toml", Array("""
            [forces.\(force)]
            backend = "pkcs11"
            module = "\(TestCustody.module)"
            token = "\(token)"
            pin_file = "pin"
            """.utf8))
        _ = try directory.write("pin", Array("\(TestCustody.userPIN)\n".utf8))
        let environment = ["SOFTHSM2_CONF": try TestCustody.softHSMConfiguration()]
        let before = try Binaries.run("vaultd", ["custody", "check", "--custody", keys], environment: environment)
        #expect(before.status != 0 && before.stdout.contains("vault hsm init"), "\(before.stdout)\(before.stderr)")

        let created = try Binaries.run("vault", ["hsm", "init", "--custody", keys, "--force", force],
                                       environment: environment)
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("fmk:\(force):1 created on token \(token)"))
        let again = try Binaries.run("vault", ["hsm", "init", "--custody", keys, "--force", force],
                                     environment: environment)
        #expect(again.status == 8 && again.stderr.contains("already holds"), "\(again.stderr)")
        let check = try Binaries.run("vaultd", ["custody", "check", "--custody", keys], environment: environment)
        #expect(check.status == 0 && check.stdout.contains("fmk:\(force):1"), "\(check.stdout)\(check.stderr)")

        // Seal and open a file offline through the token.
        _ = try directory.write("in.csv", testBytes(count: 40_000, seed: 3))
        let sealed = try Binaries.run("vault", ["encrypt", "--custody", keys, "--force", force, "--dataset", "crime",
                                                "--in", "in.csv", "--out", "in.vault"],
                                      environment: environment, currentDirectory: directory.path)
        #expect(sealed.status == 0, "\(sealed.stderr)")
        let opened = try Binaries.run("vault", ["decrypt", "--custody", keys, "--force", force, "--in", "in.vault",
                                                "--out", "out.csv"], environment: environment,
                                      currentDirectory: directory.path)
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(try directory.read("out.csv") == directory.read("in.csv"))

        // A wrong PIN: exit 2 from the offline command, one clear line, the PIN nowhere.
        _ = try directory.write("pin", Array("wrong-pin-998877\n".utf8))
        let wrong = try Binaries.run("vault", ["decrypt", "--custody", keys, "--force", force, "--in", "in.vault",
                                               "--out", "out2.csv"], environment: environment,
                                     currentDirectory: directory.path)
        #expect(wrong.status == 2, "\(wrong.stderr)")
        #expect(wrong.stderr.contains("CKR_PIN_INCORRECT") && !wrong.stderr.contains("wrong-pin-998877"))
        #expect(!directory.exists("out2.csv"))
        let missing = try Binaries.run("vault", ["decrypt", "--custody", keys, "--in", "in.vault", "--out", "o"],
                                       environment: environment, currentDirectory: directory.path)
        #expect(missing.status == 64 && missing.stderr.contains("--force"))
    } }

    @Test("vault bench custody prints both backends side by side", arguments: TestBackend.all)
    func bench(_ backend: TestBackend) async throws { try await backend.run {
        let result = try Binaries.run("vault", ["bench", "custody", "--operations", "300", "--json"],
                                      environment: ["SOFTHSM2_CONF": try TestCustody.softHSMConfiguration()])
        #expect(result.status == 0, "\(result.stderr)")
        let json = try JSONParser.parse(result.stdout)
        let figures = json["custody"]?.arrayValue ?? []
        #expect(figures.compactMap { $0["backend"]?.stringValue } == ["keyring", "pkcs11"])
        for figure in figures {
            #expect((figure["unwrap_per_second"]?.integerValue ?? 0) > 0)
            #expect((figure["rewrap_p99_us"]?.integerValue ?? 0) >= (figure["rewrap_p50_us"]?.integerValue ?? 0))
        }
    } }
}

extension RunningVault {
    /// The label of `force`'s token in the custody file (pkcs11 forces).
    func tokenLabel(_ force: String) -> String? {
        guard let keys = try? String(contentsOfFile: directory.file("keys.toml"), encoding: .utf8) else { return nil }
        var inForce = false
        for line in keys.split(separator: "\n") {
            if line.hasPrefix("[forces.") { inForce = line == "[forces.\(force)]" }
            if inForce, line.hasPrefix("token = ") {
                return String(line.dropFirst("token = ".count)).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        return nil
    }
}
