import Foundation
import KeyCustody
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A force's own custody service as a real process (`vaultd custody serve`, through the library's
/// `LocalCustodyService`) in a directory of its own, fronting the backend under test, with curl and CLI helpers.
final class CustodyProcess: @unchecked Sendable {
    let force: String
    let directory: TemporaryDirectory
    let service: LocalCustodyService
    let passphrase = "wyp custody passphrase 42"
    let secrets: [String: String]
    var tokens: [String: String] { service.tokens }
    var pki: DevPKI { service.pki }
    var platformPKI: DevPKI { service.platformPKI }

    init(force: String) async throws {
        self.force = force
        directory = try TemporaryDirectory("custody-e2e")
        let custody = try TestCustody.custodyTable(force: force, directory: directory,
                                                   passphraseVariable: "VAULT_PASSPHRASE_" + force.uppercased(),
                                                   passphrase: passphrase)
        secrets = custody.environment
        service = try LocalCustodyService(force: try ForceID(force: force), directory: directory.path,
                                          vaultdPath: Binaries.path("vaultd"), custodyTable: custody.table,
                                          environment: custody.environment,
                                          custodians: ["custodian-\(force)", "custodian2-\(force)"],
                                          auditors: ["dpo-\(force)"])
        for (principal, token) in service.tokens { _ = try directory.write("\(principal).token", Array(token.utf8)) }
        try await start()
    }

    var url: String { service.url }
    var publicKeyFile: String { service.publicKeyFile }

    func start() async throws {
        try service.spawn()
        for _ in 0..<200 {
            if (try? curl(["\(url)/healthz"]))?.status == 200 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw TestVectors.VectorError(message: "the custody service did not become healthy: "
            + ((try? String(contentsOfFile: directory.file("custody.log"), encoding: .utf8))?.suffix(1500) ?? ""))
    }

    /// SIGKILL, as a crash or a pulled cable would.
    func kill() { service.kill() }

    /// The platform's custody-file table for this force, with the public files it needs copied into `platform`.
    func remoteTable(in platform: TemporaryDirectory) throws -> String {
        try service.remoteTable(copyingInto: platform.path)
    }

    /// curl against the service: as one of the force's people (`as`), or with the platform's client certificate.
    func curl(_ arguments: [String], as principal: String? = nil, platform: Bool = false) throws -> RunningVault.Reply {
        let out = directory.file("curl-\(UUID().uuidString.prefix(8)).out")
        var args = ["-sS", "--cacert", pki.caCertificate, "-o", out, "-w", "%{http_code}"]
        if let principal { args += ["-H", "Authorization: Bearer \(tokens[principal]!)"] }
        if platform {
            args += ["--cert", platformPKI.clientCertificate("vaultd-a"), "--key", platformPKI.clientKey("vaultd-a")]
        }
        let result = try Binaries.run("/usr/bin/curl", args + arguments)
        let body = (try? Data(contentsOf: URL(fileURLWithPath: out))).map { [UInt8]($0) } ?? []
        try? FileManager.default.removeItem(atPath: out)
        return RunningVault.Reply(status: Int(result.stdout) ?? 0, body: body, headers: "", curlStatus: result.status)
    }

    /// The `vault` CLI against the service as one of its people.
    func vault(_ arguments: [String], as principal: String) throws -> CommandResult {
        try Binaries.run("vault", arguments, environment: [
            "VAULT_CUSTODY_ADDR": url, "VAULT_CUSTODY_CACERT": pki.caCertificate,
            "VAULT_CUSTODY_TOKEN_FILE": directory.file("\(principal).token"),
        ])
    }
}

/// The trust test (DESIGN 3 and 6.3): a force's custody service and the platform's vaultd as separate processes
/// with separate data directories on loopback; force wyp is remote, force wmp is on the backend under test. It shows
/// the force's main job through its own custody; that the platform holds no key material of wyp and cannot decrypt
/// its extracts alone; that custody refuses what the platform cannot prove (even with the platform's catalog edited);
/// that the force witnesses the platform's log and notices an altered record or an unrecorded unwrap; and that a
/// custody service killed mid-job stops only its own force, loses nothing, and resumes.
@Suite(.serialized)
struct TrustTests {
    static let wypPrincipals: [(String, String)] = [
        ("ingest-wyp", "uploader = [\"wyp\"]"), ("analyst-wyp", "analyst = [\"wyp\"]"),
        ("custodian-wyp", "custodian = [\"wyp\"]"), ("custodian2-wyp", "custodian = [\"wyp\"]"),
        ("dpo-wyp", "auditor = [\"wyp\"]"), ("ops-wyp", "ops = [\"wyp\"]"),
    ]

    func sqlite(_ vault: RunningVault, _ sql: String) throws -> String {
        let script = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute(sys.argv[2]).fetchall(); "
            + "c.commit(); print('\\n'.join('|'.join(str(v) for v in row) for row in r))"
        let result = try Binaries.run("/usr/bin/python3", ["-c", script, vault.directory.file("data/catalog.sqlite"), sql])
        #expect(result.status == 0, "\(sql): \(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A signed read request, as `vault read --signing-key` makes one.
    func signed(_ key: PrincipalSigningKey, dataset: String, extract: String = ReadRequest.currentExtract,
                purpose: Justification.Purpose = .useCaseRead, useCase: String = "serious-violence") throws
        -> SignedReadRequest
    {
        SignedReadRequest(signing: ReadRequest(
            force: try ForceID(force: "wyp"), dataset: try DatasetID(dataset: dataset), extract: extract,
            principal: key.principal, purpose: purpose, useCase: useCase, issued: currentUnixTime()), with: key.key)
    }

    func waitFor(_ what: String, seconds: Double = 30, _ condition: () throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try !condition() {
            guard Date() < deadline else { throw TestVectors.VectorError(message: "timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    @Test("the force holds the keys: custody decides, witnesses the platform, and survives being killed",
          .timeLimit(.minutes(8)), arguments: TestBackend.custodies)
    func forceHoldsTheKeys(_ backend: TestBackend) async throws { try await backend.run {
        let custody = try await CustodyProcess(force: "wyp")
        let vault = try await RunningVault(
            settings: "audit_checkpoint_seconds = 1\nrewrap_batch_size = 1\nshred_interval_seconds = 0\n"
                + "use_case_sync_seconds = 3600",
            embedded: true, extraForces: "", extraPrincipals: Self.wypPrincipals)
        // The remote table goes in now that the platform directory exists; vaultd restarts with it.
        vault.stop()
        let table = try custody.remoteTable(in: vault.directory)
        let keys = try String(contentsOfFile: vault.directory.file("keys.toml"), encoding: .utf8)
        _ = try vault.directory.write("keys.toml", Array((keys + "\n" + table).utf8))
        try await vault.start()
        let base = "\(vault.base)/wyp"

        // The analyst's own signing key, registered at the force by a custodian; the force's use case, authored
        // there.
        let analystDirectory = try TemporaryDirectory("analyst")
        let keyFile = analystDirectory.file("analyst-wyp.key")
        #expect(try Binaries.run("vault", ["keys", "principal-init", "--principal", "analyst-wyp", "--out", keyFile])
            .status == 0)
        let analystKey = try PrincipalSigningKey.load(path: keyFile)
        var result = try custody.vault(["custody", "principal-put", "--force", "wyp", "--principal", "analyst-wyp",
                                        "--public-key", keyFile + ".pub"], as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        result = try custody.vault(["use-case", "put", "--server", custody.url, "--ca-file", custody.pki.caCertificate,
                                    "--token-file", custody.directory.file("custodian-wyp.token"), "--force", "wyp",
                                    "--id", "serious-violence", "--description", "SV duty", "--lawful-basis", "s.8",
                                    "--dataset", "crime", "--dataset", "intel", "--principal", "analyst-wyp"],
                                   as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        // The platform refuses to author the remote force's use cases.
        let platformPut = try vault.putUseCase("wyp", "serious-violence", datasets: ["crime"],
                                               principals: ["analyst-wyp"], as: "custodian-wyp")
        #expect(platformPut.status == 409 && platformPut.errorCode == "managed_by_force_custody", "\(platformPut.text)")

        // The main job through the force's custody: a plaintext upload, a sealed one, signed reads.
        let cli = ["VAULT_ADDR": "https://127.0.0.1:\(vault.port)", "VAULT_CACERT": vault.pki.caCertificate]
        func vaultCLI(_ arguments: [String], as principal: String) throws -> CommandResult {
            var environment = cli
            environment["VAULT_TOKEN"] = vault.tokens[principal]!
            return try Binaries.run("vault", arguments, environment: environment,
                                    currentDirectory: vault.directory.path)
        }
        let week1 = testBytes(count: 40_000, seed: 11), week2 = testBytes(count: 30_000, seed: 12)
        let first = try vault.upload("wyp", "crime", file: try vault.directory.write("w1.csv", week1), as: "ingest-wyp")
        #expect(first.status == 201, "\(first.text)")
        let week1ID = try #require(first.json["extract"] as? String)
        let intel = testBytes(count: 25_000, seed: 13)
        let plainIntel = try custody.directory.write("intel.csv", intel)
        var sealArguments = ["encrypt", "--dataset", "intel", "--in", plainIntel, "--out",
                             custody.directory.file("intel.vault")]
        sealArguments += TestCustody.isPKCS11 ? ["--custody", custody.directory.file("keys.toml"), "--force", "wyp"]
            : ["--keyring", custody.directory.file("wyp.keyring")]
        var sealEnvironment = custody.secrets
        sealEnvironment["VAULT_PASSPHRASE"] = custody.passphrase
        result = try Binaries.run("vault", sealArguments, environment: sealEnvironment)
        #expect(result.status == 0, "seal at the force: \(result.stderr)")
        let sealed = try vault.upload("wyp", "intel", file: custody.directory.file("intel.vault"), as: "ingest-wyp",
                                      sealed: true)
        #expect(sealed.status == 201, "\(sealed.text)")
        for (dataset, expected) in [("crime", week1), ("intel", intel)] {
            let out = analystDirectory.file("\(dataset).out")
            result = try vaultCLI(["read", "--force", "wyp", "--dataset", dataset, "--use-case", "serious-violence",
                                   "--out", out, "--signing-key", keyFile], as: "analyst-wyp")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(try analystDirectory.read("\(dataset).out") == expected)
        }

        // Refused by custody, whatever the platform says: unsigned, replayed, re-targeted, forged.
        let read = "\(base)/datasets/crime/current?use_case=serious-violence"
        func readWith(_ request: SignedReadRequest?, _ url: String = "") throws -> RunningVault.Reply {
            var arguments = [url.isEmpty ? read : url]
            if let request { arguments += ["-H", "X-Vault-Read-Request: \(request.headerValue)"] }
            return try vault.curl(arguments, as: "analyst-wyp")
        }
        func refused(_ reply: RunningVault.Reply, _ reason: String) {
            #expect(reply.status == 403 && reply.errorCode == "custody_refused" && reply.text.contains(reason),
                    "\(reason): \(reply.status) \(reply.text)")
        }
        refused(try readWith(nil), "signed_request_required")
        let once = try signed(analystKey, dataset: "crime")
        #expect(try readWith(once).body == week1)
        refused(try readWith(once), "signed_request_replayed")
        refused(try readWith(try signed(analystKey, dataset: "intel")), "signed_request_mismatch")
        refused(try readWith(try signed(PrincipalSigningKey(principal: "analyst-wyp"), dataset: "crime")),
                "signed_request_invalid")
        // The platform's own client certificate, used directly against custody (an operator with the platform's
        // files): no key without the analyst's fresh signature either.
        /// An unwrap asked of custody directly with the platform's certificate, for the current extract of `dataset`.
        func direct(_ signedRequest: SignedReadRequest?, dataset: String = "crime", useCase: String = "serious-violence")
            throws -> RunningVault.Reply
        {
            let row = try sqlite(vault, "SELECT id || '|' || wrapped_key FROM extracts WHERE force = 'wyp' "
                                        + "AND dataset = '\(dataset)' AND state = 'current'")
            let parts = row.split(separator: "|", maxSplits: 1).map(String.init)
            var justification: [String: JSONValue] = [
                "principal": .string("analyst-wyp"), "purpose": .string("use-case-read"),
                "request_id": .string("req-\(UUID().uuidString.prefix(8).lowercased())"), "use_case": .string(useCase),
            ]
            if let signedRequest { justification["signed_request"] = signedRequest.envelope }
            let body = JSONValue.object([
                "wrapped": try JSONParser.parse(parts[1]),
                "context": .object(["force": .string("wyp"), "dataset": .string(dataset), "extract": .string(parts[0])]),
                "justification": .object(justification),
            ])
            return try custody.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                                     body.canonicalString, "\(custody.url)/v1/forces/wyp/keys/unwrap"], platform: true)
        }
        #expect(try direct(nil).errorCode == "signed_request_required")
        #expect(try direct(once).errorCode == "signed_request_replayed")
        #expect(try direct(try signed(PrincipalSigningKey(principal: "analyst-wyp"), dataset: "crime")).errorCode
            == "signed_request_invalid")
        // Revoked at the force; the platform's catalog edited to say it is not: custody still refuses.
        result = try custody.vault(["use-case", "revoke", "--server", custody.url, "--ca-file",
                                    custody.pki.caCertificate, "--token-file",
                                    custody.directory.file("custodian-wyp.token"), "--force", "wyp", "--id",
                                    "serious-violence"], as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        _ = try sqlite(vault, "UPDATE use_cases SET revoked_at = NULL WHERE force = 'wyp'")
        refused(try readWith(try signed(analystKey, dataset: "crime")), "use_case_revoked")
        // Authorised again, under a new id (a revoked use case stays revoked).
        result = try custody.vault(["use-case", "put", "--server", custody.url, "--ca-file", custody.pki.caCertificate,
                                    "--token-file", custody.directory.file("custodian-wyp.token"), "--force", "wyp",
                                    "--id", "sv-2", "--description", "SV duty", "--lawful-basis", "s.8",
                                    "--dataset", "crime", "--dataset", "intel", "--principal", "analyst-wyp"],
                                   as: "custodian-wyp")
        #expect(result.status == 0)

        // Archive, and a retrieval the platform grants but custody refuses until two custodians approve there.
        #expect(try vault.upload("wyp", "crime", file: try vault.directory.write("w2.csv", week2), as: "ingest-wyp")
            .status == 201)
        let request = try vault.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                                      "{\"use_case\":\"sv-2\",\"reason\":\"case 42\"}",
                                      "\(base)/archives/\(week1ID)/retrievals"], as: "analyst-wyp")
        #expect(request.status == 201, "\(request.text)")
        let retrievalID = try #require(request.json["id"] as? String)
        for custodian in ["custodian-wyp", "custodian2-wyp"] {
            #expect(try vault.curl(["-X", "POST", "\(base)/retrievals/\(retrievalID)/approve"], as: custodian)
                .status == 200)
        }
        let archiveOut = analystDirectory.file("archive.out")
        func readArchive() throws -> CommandResult {
            try vaultCLI(["read", "--force", "wyp", "--dataset", "crime", "--archive", week1ID, "--use-case", "sv-2",
                          "--out", archiveOut, "--overwrite", "--signing-key", keyFile], as: "analyst-wyp")
        }
        result = try readArchive()
        #expect(result.status == 9 && result.stderr.contains("no_grant"), "\(result.stderr)")
        for custodian in ["custodian-wyp", "custodian2-wyp"] {
            result = try custody.vault(["custody", "approve", "--force", "wyp", "--archive", week1ID, "--analyst",
                                        "analyst-wyp", "--use-case", "sv-2"], as: custodian)
            #expect(result.status == 0, "\(result.stderr)")
        }
        result = try readArchive()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try analystDirectory.read("archive.out") == week1)

        // Rotation with the rewrap job, the old version destroyed, an early shred with a complete certificate.
        result = try vaultCLI(["keys", "rotate", "--force", "wyp", "--wait"], as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try sqlite(vault, "SELECT COUNT(*) FROM extracts WHERE force = 'wyp' AND state = 'current' "
                                  + "AND kek = 'fmk:wyp:2'") == "2")
        try await waitFor("fmk:wyp:1 retired") {
            (try vault.curl(["\(base)/keys"], as: "custodian-wyp").json["master_keys"] as? [[String: Any]])?
                .first { $0["id"] as? String == "fmk:wyp:1" }?["state"] as? String == "retired"
        }
        result = try vaultCLI(["keys", "destroy", "--force", "wyp", "--version", "1"], as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        let shred = try vault.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                                    "{\"reason\":\"case closed\"}", "\(base)/archives/\(week1ID)/shred"],
                                   as: "custodian-wyp")
        #expect(shred.status == 200, "\(shred.text)")
        #expect((shred.json["certificate"] as? [String: Any])?["verdict"] as? String == "complete", "\(shred.text)")

        // The platform side holds no key material of wyp: not in its files, its configuration or its environment.
        for path in FileManager.default.enumerator(atPath: vault.directory.path)?.compactMap({ $0 as? String }) ?? [] {
            guard let data = FileManager.default.contents(atPath: vault.directory.file(path)) else { continue }
            #expect(data.range(of: Data(custody.passphrase.utf8)) == nil, "\(path) holds the passphrase of wyp")
            #expect(data.range(of: Data("vault-keyring-v1".utf8)) == nil || data.range(of: Data("\"force\":\"wyp\"".utf8)) == nil,
                    "\(path) is a keyring of wyp")
        }
        let platformKeys = try String(contentsOfFile: vault.directory.file("keys.toml"), encoding: .utf8)
        let wypTable = platformKeys.components(separatedBy: "[forces.wyp]").last ?? ""
        for key in ["keyring", "passphrase", "pin", "token", "module"] {
            #expect(!wypTable.contains(key + " ") && !wypTable.contains(key + "_"), "keys.toml names a \(key) for wyp")
        }
        let environment = String(decoding: try Data(contentsOf: URL(fileURLWithPath: "/proc/\(vault.pid)/environ")),
                                 as: UTF8.self)
        #expect(!environment.contains(custody.passphrase) && !environment.contains("_WYP="), "\(environment.count)")
        // With everything on the platform side and no custody service, nothing of wyp opens: its export needs the
        // force's keys, which only its custody service holds.
        let exported = try vault.curl(["-o", vault.directory.file("intel-export.vault"),
                                       "\(base)/datasets/intel/export"], as: "custodian-wyp")
        #expect(exported.status == 200)
        let offline = try Binaries.run("vault", ["decrypt", "--custody", vault.directory.file("keys.toml"), "--force",
                                                 "wyp", "--in", vault.directory.file("intel-export.vault"), "--out",
                                                 vault.directory.file("intel.opened")])
        #expect(offline.status != 0 && !FileManager.default.fileExists(atPath: vault.directory.file("intel.opened")),
                "\(offline.stderr)")

        // The force witnesses the platform's log: the DPO's export verifies with the custody key as witness key.
        let exportFile = analystDirectory.file("wyp-audit.ndjson")
        try await waitFor("the witness to cosign the recent records") {
            result = try vaultCLI(["audit", "export", "--force", "wyp", "--out", exportFile, "--overwrite"],
                                  as: "dpo-wyp")
            guard result.status == 0 else { return false }
            let verified = try Binaries.run("vault", ["audit", "verify", exportFile, "--public-key",
                                                      vault.directory.file("data/audit-signing.pub"), "--witness-key",
                                                      custody.publicKeyFile, "--json"])
            guard verified.status == 0, let report = try? JSONParser.parse(verified.stdout) else { return false }
            return (report["not_yet_witnessed"]?.integerValue ?? .max) <= 3
        }
        // And with another key as witness key, it does not.
        let foreign = try Binaries.run("vault", ["audit", "verify", exportFile, "--public-key",
                                                 vault.directory.file("data/audit-signing.pub"), "--witness-key",
                                                 keyFile + ".pub"])
        #expect(foreign.status == 3)
        // In the console: the force's use cases are read-only, pointing at its custody service; its DPO sees the
        // chain verified with the force's witness key and the checkpoint the witness cosigned.
        let custodianPages = try vault.consoleSession(as: "custodian-wyp")
        let useCases = try custodianPages.get("/ui/forces/wyp/use-cases")
        #expect(useCases.status == 200 && useCases.text.contains("keeps its use cases in its own custody service")
                && useCases.text.contains(custody.url) && !useCases.text.contains("new-use-case"), "\(useCases.text)")
        let dpoPages = try vault.consoleSession(as: "dpo-wyp")
        let auditPage = try dpoPages.get("/ui/forces/wyp/audit")
        #expect(auditPage.status == 200 && auditPage.text.contains("form an unbroken chain")
                && auditPage.text.contains("Last checkpoint the force's witness cosigned: seq "), "\(auditPage.text)")
        // The force's own log, kept at its custody service, verifies with its key.
        let own = try custody.curl(["\(custody.url)/v1/forces/wyp/audit"], as: "dpo-wyp")
        _ = try analystDirectory.write("custody-audit.ndjson", own.body)
        #expect(try Binaries.run("vault", ["audit", "verify", analystDirectory.file("custody-audit.ndjson"),
                                           "--public-key", custody.publicKeyFile]).status == 0)
        #expect(own.text.contains("\"reason\":\"signed_request_replayed\""))

        // An unwrap the platform did not record (the platform's certificate, used directly): detected at the next
        // checkpoints, and unwraps stop until a custodian clears the alarm.
        let hidden = try direct(try signed(analystKey, dataset: "crime", useCase: "sv-2"), useCase: "sv-2")
        #expect(hidden.status == 200, "the force's custody granted it: \(hidden.text)")
        try await waitFor("the unrecorded unwrap to raise an alarm", seconds: 40) {
            let alarms = try custody.curl(["\(custody.url)/v1/forces/wyp/alarms"], as: "dpo-wyp")
            return alarms.text.contains("unrecorded_access")
        }
        refused(try readWith(try signed(analystKey, dataset: "crime", useCase: "sv-2"),
                             "\(base)/datasets/crime/current?use_case=sv-2"), "witness_alarm")
        result = try custody.vault(["custody", "clear-alarms", "--force", "wyp", "--reason", "our test unwrap"],
                                   as: "custodian-wyp")
        #expect(result.status == 0, "\(result.stderr)")
        let again = try readWith(try signed(analystKey, dataset: "crime", useCase: "sv-2"),
                                 "\(base)/datasets/crime/current?use_case=sv-2")
        #expect(again.status == 200 && again.body == week2)

        // Custody killed mid-rotation, then used while it is down: wyp waits (503), wmp is served, /readyz names wyp;
        // nothing is lost or done twice, and everything resumes when custody is back.
        #expect(try vault.putUseCase("wmp", "serious-violence", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        let wmpData = testBytes(count: 5_000, seed: 21)
        #expect(try vault.upload("wmp", "crime", file: try vault.directory.write("wmp.csv", wmpData), as: "ingest-wmp")
            .status == 201)
        #expect(try vault.upload("wyp", "intel", file: try vault.directory.write("i2.csv", testBytes(count: 9_000, seed: 3)),
                                 as: "ingest-wyp").status == 201)
        let intelArchive = try sqlite(vault, "SELECT id FROM extracts WHERE force = 'wyp' AND dataset = 'intel' "
                                             + "AND state = 'archived'")
        _ = try sqlite(vault, "UPDATE extracts SET expires_at = 1 WHERE id = '\(intelArchive)'")
        let rotated = try vault.curl(["-X", "POST", "\(base)/keys/rotate"], as: "custodian-wyp")
        #expect(rotated.status == 202, "\(rotated.text)")
        custody.kill()
        let down = try vault.upload("wyp", "crime", file: try vault.directory.write("w3.csv", testBytes(count: 7_000, seed: 4)),
                                    as: "ingest-wyp")
        #expect(down.status == 503 && down.errorCode == "custody_unavailable", "\(down.text)")
        let shredDown = try vault.curl(["-X", "POST", "https://127.0.0.1:\(vault.port)/v1/shred?expired=true&force=wyp"],
                                       as: "ops-wyp")
        #expect(shredDown.status == 503, "\(shredDown.text)")
        #expect(try readWith(try signed(analystKey, dataset: "crime", useCase: "sv-2"),
                             "\(base)/datasets/crime/current?use_case=sv-2").status == 503)
        let wmpRead = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                     as: "analyst-1")
        #expect(wmpRead.status == 200 && wmpRead.body == wmpData, "the other force is served")
        let ready = try vault.curl(["https://127.0.0.1:\(vault.port)/readyz"])
        #expect(ready.status == 200 && ready.text.contains("custody_unavailable") && ready.text.contains("wyp"),
                "\(ready.text)")
        try await custody.start()
        try await waitFor("the rotation's rewrap job to finish", seconds: 40) {
            let status = try vault.curl(["\(base)/keys"], as: "custodian-wyp")
            return (status.json["rewrap"] as? [String: Any])?["remaining"] as? Int == 0
                && (status.json["active"] as? String) == "fmk:wyp:3"
        }
        #expect(try sqlite(vault, "SELECT COUNT(*) FROM extracts WHERE force = 'wyp' AND state = 'current' "
                                  + "AND kek <> 'fmk:wyp:3'") == "0", "every current key moved")
        #expect(try sqlite(vault, "SELECT processed FROM rotations WHERE to_kek = 'fmk:wyp:3'") == "2",
                "each moved once")
        let shredUp = try vault.curl(["-X", "POST", "https://127.0.0.1:\(vault.port)/v1/shred?expired=true&force=wyp"],
                                     as: "ops-wyp")
        #expect(shredUp.status == 200, "\(shredUp.text)")
        #expect(try sqlite(vault, "SELECT state FROM extracts WHERE id = '\(intelArchive)'") == "shredded")
        #expect(try sqlite(vault, "SELECT COUNT(*) FROM certificates WHERE extract = '\(intelArchive)'") == "1")

        // Killed in the middle of an upload's body: the upload fails, the dataset's current extract is untouched, and
        // the same upload works once custody is back.
        // The body comes from a pipe this test writes: custody dies after the first mebibyte, before the body can
        // end, whatever the scheduling (no timing involved).
        let bigBytes = testBytes(count: 3_000_000, seed: 5)
        let big = try vault.directory.write("big.csv", bigBytes)
        let slow = Process()
        slow.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        slow.arguments = ["-sS", "--cacert", vault.pki.caCertificate, "-o", vault.directory.file("slow.out"), "-w",
                          "%{http_code}", "-T", "-", "-H", "Content-Type: application/octet-stream", "-H",
                          "Authorization: Bearer \(vault.tokens["ingest-wyp"]!)", "\(base)/datasets/crime/extracts"]
        let slowStatus = Pipe(), slowBody = Pipe()
        slow.standardOutput = slowStatus
        slow.standardInput = slowBody
        try slow.run()
        slowBody.fileHandleForWriting.write(Data(bigBytes[..<(1 << 20)]))
        custody.kill()
        slowBody.fileHandleForWriting.write(Data(bigBytes[(1 << 20)...]))
        try slowBody.fileHandleForWriting.close()
        slow.waitUntilExit()
        let slowCode = String(decoding: slowStatus.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(slowCode == "503", "the upload killed mid-body: \(slowCode)")
        #expect(try sqlite(vault, "SELECT COUNT(*) FROM extracts WHERE force = 'wyp' AND dataset = 'crime' "
                                  + "AND state = 'current' AND plaintext_size = 30000") == "1")
        #expect(try sqlite(vault, "SELECT COUNT(*) FROM extracts WHERE force = 'wyp' AND state = 'uploading'") == "0")
        try await custody.start()
        #expect(try vault.upload("wyp", "crime", file: big, as: "ingest-wyp").status == 201)
        try await waitFor("readiness without custody trouble") {
            !(try vault.curl(["https://127.0.0.1:\(vault.port)/readyz"]).text.contains("custody_unavailable"))
        }

        // A platform audit record altered in the catalog before the witness saw it: the next submission fails and
        // unwraps stop. Witness rounds now come only at vaultd's start, so the record is surely not witnessed yet.
        vault.stop()
        let config = try String(contentsOfFile: vault.directory.file("vaultd.toml"), encoding: .utf8)
        _ = try vault.directory.write("vaultd.toml", Array(config.replacingOccurrences(
            of: "audit_checkpoint_seconds = 1", with: "audit_checkpoint_seconds = 3600").utf8))
        try await vault.start()
        try await waitFor("the witness to catch up at start") {
            try sqlite(vault, "SELECT COALESCE(MAX(seq), 0) FROM audit_cosignatures WHERE force = 'wyp'")
                == (try sqlite(vault, "SELECT MAX(seq) FROM audit_records WHERE force = 'wyp'"))
        }
        let denied = try vault.curl(["\(base)/datasets/crime/current?use_case=nothing"], as: "analyst-wyp")
        #expect(denied.status == 403)
        vault.stop()
        let newest = try sqlite(vault, "SELECT MAX(seq) FROM audit_records WHERE force = 'wyp'")
        let cosigned = try sqlite(vault, "SELECT COALESCE(MAX(seq), 0) FROM audit_cosignatures WHERE force = 'wyp'")
        #expect(Int(cosigned)! < Int(newest)!, "the newest record is not witnessed yet")
        _ = try sqlite(vault, "DROP TRIGGER audit_records_no_update")
        _ = try sqlite(vault, "UPDATE audit_records SET line = replace(line, '\"outcome\":\"denied\"', "
                              + "'\"outcome\":\"allowed\"') WHERE force = 'wyp' AND seq = \(newest)")
        try await vault.start()
        try await waitFor("the witness to refuse the altered chain", seconds: 30) {
            try custody.curl(["\(custody.url)/v1/forces/wyp/alarms"], as: "dpo-wyp").text.contains("\"cleared\":false")
        }
        refused(try readWith(try signed(analystKey, dataset: "crime", useCase: "sv-2"),
                             "\(base)/datasets/crime/current?use_case=sv-2"), "witness_alarm")
        #expect(try custody.curl(["\(custody.url)/v1/forces/wyp/alarms"], as: "dpo-wyp").text.contains("fork"))
    } }
}
