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
    @Test("README walkthrough: a keyring force moves to its token with vault keys migrate, then its keyring keys die")
    func migrateThroughVaultd() throws {
        let vault = try RunningVault(backend: "keyring")
        try vault.makeHistory()
        let other = try vault.directory.write("stops.csv", testBytes(count: 70_000, seed: 31))
        #expect(try vault.upload("wmp", "stops", file: other, as: "ingest-wmp").status == 201)
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
        try vault.start()
        let check = try Binaries.run("vaultd", ["custody", "check", "--custody", vault.directory.file("keys.toml")],
                                     environment: vault.secrets.merging(vault.passphrases) { $1 })
        #expect(check.status == 0, "\(check.stderr)")

        // 4. The custodian migrates and waits for the rewrap job.
        let migrated = try vault.cli(["keys", "migrate", "--force", "wmp", "--to", "pkcs11", "--wait", "--json"],
                                     as: "custodian-wmp")
        #expect(migrated.status == 0, "\(migrated.stderr)")
        let status = try JSONParser.parse(migrated.stdout)
        #expect(status["active"]?.stringValue == "fmk:wmp:2")
        #expect(status["rewrap"]?["remaining"]?.integerValue == 0)
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
            Thread.sleep(forTimeInterval: 0.2)
        }
        #expect(destroyed?.status == 0, "\(destroyed?.stderr ?? "")")
        vault.stop()
        try vault.start()
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
    }

    @Test("the token goes away (its sessions cut, then its files gone): 503 token_unavailable, and it recovers")
    func tokenGoneAndBack() throws {
        let vault = try RunningVault(backend: "pkcs11")
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
            Thread.sleep(forTimeInterval: 0.2)
            after = try vault.curl([url], as: "analyst-1")
        }
        #expect(after.status == 200 && after.body == expected, "\(after.status) \(after.errorCode ?? "-")")
        vault.stop()
    }
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
