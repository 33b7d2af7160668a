import Foundation
import KeyCustody
import Testing
import VaultTestSupport

extension RunningVault {
    /// Runs the `vault` CLI as `principal` against this vaultd.
    func cli(_ arguments: [String], as principal: String) throws -> CommandResult {
        try Binaries.run("vault", arguments, environment: [
            "HOME": directory.file("home"), "VAULT_ADDR": "https://127.0.0.1:\(port)",
            "VAULT_CACERT": pki.caCertificate, "VAULT_TOKEN": tokens[principal]!,
        ], currentDirectory: directory.path)
    }

    /// Some history on wmp/crime: two uploads, a use case, allowed and refused reads.
    func makeHistory() throws {
        let week1 = try directory.write("week1.csv", testBytes(count: 50_000, seed: 21))
        let week2 = try directory.write("week2.csv", testBytes(count: 40_000, seed: 22))
        #expect(try upload("wmp", "crime", file: week1, as: "ingest-wmp").status == 201)
        #expect(try putUseCase("wmp", "serious-violence", datasets: ["crime"], principals: ["analyst-1"],
                               as: "custodian-wmp").status == 200)
        #expect(try putUseCase("wmp", "offender-management", datasets: ["crime"], principals: ["analyst-1"],
                               as: "custodian-wmp").status == 200)
        let url = "\(base)/wmp/datasets/crime/current"
        #expect(try curl(["\(url)?use_case=serious-violence"], as: "analyst-1").status == 200)
        #expect(try upload("wmp", "crime", file: week2, as: "ingest-wmp").status == 201)
        #expect(try curl(["\(url)?use_case=serious-violence"], as: "analyst-1").status == 200)
        #expect(try curl(["\(url)?use_case=offender-management"], as: "analyst-1").status == 200)
        #expect(try curl(["\(url)?use_case=serious-violence"], as: "analyst-gmp").status == 403)
        #expect(try curl(["\(url)?use_case=serious-violence"], as: "analyst-own").status == 403)
    }

    var pid: Int32 { process.processIdentifier }
}

@Suite("accountability: the audit chain, exports and metrics against vaultd", .serialized)
struct AccountabilityTests {
    @Test("a DPO exports the chain, verifies it offline, finds every read under a use case; tampering is named",
          arguments: TestBackend.all)
    func dpoWorkflow(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        try vault.makeHistory()

        // The public key: served by vaultd, identical to the file in the data directory.
        let served = try vault.cli(["audit", "public-key", "--out", "audit.pub"], as: "dpo-wmp")
        #expect(served.status == 0, "\(served.stderr)")
        #expect(try vault.directory.read("audit.pub") == vault.directory.read("data/audit-signing.pub"))
        #expect(try vault.curl(["https://127.0.0.1:\(vault.port)/v1/audit/public-key"]).text
            == String(decoding: try vault.directory.read("audit.pub"), as: UTF8.self))

        let exported = try vault.cli(["audit", "export", "--force", "wmp", "--out", "wmp-audit.ndjson"], as: "dpo-wmp")
        #expect(exported.status == 0, "\(exported.stderr)")
        let verified = try vault.cli(["audit", "verify", "wmp-audit.ndjson", "--public-key", "audit.pub"],
                                     as: "dpo-wmp")
        #expect(verified.status == 0, "\(verified.stderr)")
        #expect(verified.stdout.hasPrefix("verified: force wmp, records 1–"), "\(verified.stdout)")
        // The DPO keeps the head it printed; the next export must extend it.
        let head = try #require(verified.stdout.split(separator: "\n").first { $0.hasPrefix("head ") }?
            .split(separator: " ")[1])
        #expect(try vault.cli(["audit", "export", "--force", "wmp", "--out", "wmp-audit-2.ndjson"], as: "dpo-wmp")
            .status == 0)
        let extended = try vault.cli(["audit", "verify", "wmp-audit-2.ndjson", "--public-key", "audit.pub",
                                      "--since-head", String(head)], as: "dpo-wmp")
        #expect(extended.status == 0 && extended.stdout.contains("extends the head verified before"),
                "\(extended.stdout)\(extended.stderr)")
        let headSeq = head.split(separator: ":")[0]
        let stranger = try vault.cli(["audit", "verify", "wmp-audit-2.ndjson", "--public-key", "audit.pub",
                                      "--since-head", "\(headSeq):" + String(repeating: "f", count: 64)],
                                     as: "dpo-wmp")
        #expect(stranger.status == 3 && stranger.stderr.contains("does not extend it"), "\(stranger.stderr)")

        // The independent implementation of DESIGN 5.5 agrees.
        let python = ProcessInfo.processInfo.environment["VAULT_PYTHON"] ?? "/usr/bin/python3"
        let script = TestVectors.packageRoot.appendingPathComponent("Tests/interop/vault_format.py").path
        let independent = try Binaries.run(python, [script, "audit-verify", "wmp-audit.ndjson", "audit.pub"],
                                           currentDirectory: vault.directory.path)
        #expect(independent.status == 0, "\(independent.stderr)")

        // Every record is there: token creation, custody opened at start, uploads, archival, use cases, reads.
        let lines = try String(contentsOfFile: vault.directory.file("wmp-audit.ndjson"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        let actions = Set(lines.compactMap { try? AuditRecord(line: Array($0.utf8)).action })
        for action in ["token.create", "custody.open", "upload", "archive", "use-case.create", "read", "audit.export"] {
            #expect(actions.contains(action), "missing \(action)")
        }
        // No secret of any kind in the trail: tokens, passphrases.
        for (_, token) in vault.tokens { #expect(!lines.joined().contains(token)) }
        for (_, passphrase) in vault.passphrases { #expect(!lines.joined().contains(passphrase)) }

        // A subject-access / breach question: every read of wmp/crime under serious-violence.
        let search = try vault.cli(["audit", "search", "--force", "wmp", "--dataset", "crime", "--use-case",
                                    "serious-violence", "--action", "read", "--json"], as: "dpo-wmp")
        #expect(search.status == 0, "\(search.stderr)")
        let reads = try search.stdout.split(separator: "\n").map { try AuditRecord(line: Array($0.utf8)) }
        #expect(reads.count == 3, "\(search.stdout)")
        #expect(reads.filter { $0.outcome == .allowed }.map(\.principal) == ["analyst-1", "analyst-1"])
        #expect(reads.filter { $0.outcome == .denied }.map(\.principal) == ["analyst-own"])
        // gmp's analyst has no role in wmp: its refused read is in the platform's chain, which ops search.
        let platform = try vault.cli(["audit", "search", "--force", "platform", "--principal", "analyst-gmp",
                                      "--json"], as: "ops-1")
        #expect(platform.status == 0, "\(platform.stderr)")
        let outsider = try platform.stdout.split(separator: "\n").map { try AuditRecord(line: Array($0.utf8)) }
        #expect(outsider.map(\.action) == ["read"] && outsider.first?.outcome == .denied)
        #expect(outsider.first?.detail["force"] == .string("wmp") && outsider.first?.target == "wmp/crime")
        #expect(try vault.cli(["audit", "search", "--force", "platform"], as: "dpo-wmp").status == 9)
        #expect(reads.allSatisfy { $0.useCase == "serious-violence" && $0.target.hasPrefix("wmp/crime") })
        let table = try vault.cli(["audit", "search", "--force", "wmp", "--outcome", "denied"], as: "dpo-wmp")
        #expect(table.stdout.contains("analyst-own  read  wmp/crime  denied  use_case=serious-violence  reason=not_named"),
                "\(table.stdout)")
        let badFilter = try vault.cli(["audit", "search", "--force", "wmp", "--from", "last tuesday"], as: "dpo-wmp")
        // Malformed input: exit 6, as `vault --help` documents.
        #expect(badFilter.status == 6 && badFilter.stderr.contains("RFC 3339"), "\(badFilter.stderr)")
        // Only the force's auditors.
        let analyst = try vault.cli(["audit", "export", "--force", "wmp"], as: "analyst-1")
        #expect(analyst.status == 9 && analyst.stderr.contains("role_required"))

        // Tampering: edit a record, remove one, swap two, insert one. Each is refused (exit 3), naming the record.
        let records = lines.enumerated().filter { $0.element.hasPrefix("{\"action\"") }.map(\.offset)
        func tampered(_ name: String, _ change: (inout [String]) -> Void) throws -> CommandResult {
            var copy = lines
            change(&copy)
            _ = try vault.directory.write(name, Array((copy.joined(separator: "\n") + "\n").utf8))
            return try vault.cli(["audit", "verify", name, "--public-key", "audit.pub"], as: "dpo-wmp")
        }
        let seq = { (index: Int) in (try? AuditRecord(line: Array(lines[index].utf8)).seq) ?? -1 }
        let edited = try tampered("edited.ndjson") { $0[records[4]] = $0[records[4]].replacingOccurrences(
            of: "\"outcome\":\"allowed\"", with: "\"outcome\":\"denied\"") }
        #expect(edited.status == 3 && edited.stderr.contains("record seq \(seq(records[4])) ") && edited.stderr.contains("altered"),
                "\(edited.stderr)")
        let removed = try tampered("removed.ndjson") { $0.remove(at: records[5]) }
        #expect(removed.status == 3 && removed.stderr.contains("seq \(seq(records[5])) is missing"), "\(removed.stderr)")
        let reordered = try tampered("reordered.ndjson") { $0.swapAt(records[6], records[7]) }
        #expect(reordered.status == 3 && reordered.stderr.contains("reordered"), "\(reordered.stderr)")
        let inserted = try tampered("inserted.ndjson") { $0.insert($0[records[2]], at: records[8]) }
        #expect(inserted.status == 3 && inserted.stderr.contains("record seq \(seq(records[2])) appears a second time"),
                "\(inserted.stderr)")
        #expect(inserted.stderr.split(separator: "\n").count == 1)
        // The independent verifier refuses them too.
        for name in ["edited.ndjson", "removed.ndjson", "reordered.ndjson", "inserted.ndjson"] {
            #expect(try Binaries.run(python, [script, "audit-verify", name, "audit.pub"],
                                     currentDirectory: vault.directory.path).status != 0, "\(name)")
        }
        // Another vault's key: refused; a file that is not a key: malformed (exit 6).
        let other = try Ed25519.PrivateKey().publicKey.pem
        _ = try vault.directory.write("other.pub", Array(other.utf8))
        let wrongKey = try vault.cli(["audit", "verify", "wmp-audit.ndjson", "--public-key", "other.pub"], as: "dpo-wmp")
        #expect(wrongKey.status == 3 && wrongKey.stderr.contains("does not verify with the public key"))
        let notKey = try vault.cli(["audit", "verify", "wmp-audit.ndjson", "--public-key", "wmp-audit.ndjson"],
                                   as: "dpo-wmp")
        #expect(notKey.status == 6, "\(notKey.stderr)")

        // An export from a sequence number verifies on its own, anchored to the checkpoint before it.
        let last = seq(records.last!)
        let partial = try vault.cli(["audit", "export", "--force", "wmp", "--since", String(last), "--out",
                                     "partial.ndjson"], as: "dpo-wmp")
        #expect(partial.status == 0, "\(partial.stderr)")
        let partialVerified = try vault.cli(["audit", "verify", "partial.ndjson", "--public-key", "audit.pub"],
                                            as: "dpo-wmp")
        #expect(partialVerified.stdout.contains("records \(last + 1)–"), "\(partialVerified.stdout) \(partialVerified.stderr)")
    } }

    @Test("a custodian exports a current extract as a sealed file that decrypts offline with the keyring alone",
          arguments: TestBackend.all)
    func sealedExport(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        try vault.makeHistory()
        let exported = try vault.cli(["export", "--force", "wmp", "--dataset", "crime", "--out", "crime.vault"],
                                     as: "custodian-wmp")
        #expect(exported.status == 0, "\(exported.stderr)")
        let decrypted = try vault.offline("decrypt", "wmp", ["--in", "crime.vault", "--out", "crime.csv"])
        #expect(decrypted.status == 0, "\(decrypted.stderr)")
        #expect(try vault.directory.read("crime.csv") == vault.directory.read("week2.csv"))
        // The independent reader of DESIGN 5.4 opens it too, given the keyring (a token's keys never leave it).
        if !TestCustody.isPKCS11 {
            let python = ProcessInfo.processInfo.environment["VAULT_PYTHON"] ?? "/usr/bin/python3"
            let script = TestVectors.packageRoot.appendingPathComponent("Tests/interop/vault_format.py").path
            let independent = try Binaries.run(python, [script, "decrypt", "wmp.keyring", "crime.vault", "crime-py.csv"],
                                               environment: ["VAULT_PASSPHRASE": vault.passphrases["VAULT_PASSPHRASE_WMP"]!],
                                               currentDirectory: vault.directory.path)
            #expect(independent.status == 0, "\(independent.stderr)")
            #expect(try vault.directory.read("crime-py.csv") == vault.directory.read("week2.csv"))
        }

        // Only the force's custodians; an archived extract is not exported through this path.
        let analyst = try vault.cli(["export", "--force", "wmp", "--dataset", "crime", "--out", "a.vault"],
                                    as: "analyst-1")
        #expect(analyst.status == 9 && !vault.directory.exists("a.vault"))
        let other = try vault.cli(["export", "--force", "wmp", "--dataset", "crime", "--out", "b.vault"],
                                  as: "custodian-other")
        #expect(other.status == 9 && other.stderr.contains("other_force"))
        let archives = try vault.curl(["\(vault.base)/wmp/archives"], as: "ops-1")
        let archivedID = try #require((archives.json["archives"] as? [[String: Any]])?.first?["extract"] as? String)
        let archived = try vault.cli(["export", "--force", "wmp", "--dataset", "crime", "--extract", archivedID,
                                      "--out", "c.vault"], as: "custodian-wmp")
        #expect(archived.status == 9 && archived.stderr.contains("archived_extract") && !vault.directory.exists("c.vault"))
        // The output is never overwritten unless asked.
        let again = try vault.cli(["export", "--force", "wmp", "--dataset", "crime", "--out", "crime.vault"],
                                  as: "custodian-wmp")
        #expect(again.status == 8)

        let search = try vault.cli(["audit", "search", "--force", "wmp", "--action", "export", "--json"], as: "dpo-wmp")
        let exports = try search.stdout.split(separator: "\n").map { try AuditRecord(line: Array($0.utf8)) }
        // The analyst's and the archived extract's refusals; gmp's custodian's is in the platform's chain.
        #expect(exports.map(\.outcome) == [.allowed, .denied, .denied], "\(search.stdout)")
        #expect(exports.first?.principal == "custodian-wmp")
    } }

    @Test("fail closed: when audit records cannot be written nothing is served (503), and vaultd recovers by itself",
          arguments: TestBackend.all)
    func auditWriteFailure(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        try vault.makeHistory()
        let readURL = "\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"
        let ready = "https://127.0.0.1:\(vault.port)/readyz"
        #expect(try vault.curl([ready]).status == 200)

        // A real fault: the catalog cannot commit a transaction (a full disk for SQLite, a read-only database for
        // PostgreSQL).
        try vault.catalogWritable(false)
        let read = try vault.curl([readURL], as: "analyst-1")
        #expect(read.status == 503 && read.errorCode == "audit_unavailable", "\(read.status) \(read.text)")
        #expect(read.body.count < 1000, "no extract bytes may be sent")
        let refused = try vault.curl([readURL], as: "analyst-gmp")
        #expect(refused.status == 503, "a refusal that cannot be recorded is not answered either")
        let useCase = try vault.putUseCase("wmp", "late", datasets: ["crime"], principals: ["analyst-1"],
                                           as: "custodian-wmp")
        #expect(useCase.status == 503 && useCase.errorCode == "audit_unavailable")
        let upload = try vault.upload("wmp", "crime", file: vault.directory.file("week1.csv"), as: "ingest-wmp")
        #expect(upload.status >= 500)
        let notReady = try vault.curl([ready])
        #expect(notReady.status == 503 && notReady.text.contains("audit trail not writable"), "\(notReady.text)")
        #expect(try vault.curl(["https://127.0.0.1:\(vault.port)/healthz"]).status == 200)
        let cli = try vault.cli(["read", "--force", "wmp", "--dataset", "crime", "--use-case", "serious-violence",
                                 "--out", "during.csv"], as: "analyst-1")
        #expect(cli.status == 12 && cli.stderr.contains("audit_unavailable") && !vault.directory.exists("during.csv"))

        // The cause goes away: vaultd becomes ready again without a restart.
        try vault.catalogWritable(true)
        var recovered = false
        for _ in 0..<50 where !recovered {
            try await Task.sleep(for: .milliseconds(200))
            recovered = try vault.curl([ready]).status == 200
        }
        #expect(recovered)
        let after = try vault.curl([readURL], as: "analyst-1")
        let week2 = try vault.directory.read("week2.csv")
        #expect(after.status == 200 && after.body == week2)
        // Nothing half-done: the failed upload left week 2 current, the use case was not created, and the chain
        // holds no trace of the refused actions and still verifies.
        #expect(try vault.curl(["\(vault.base)/wmp/use-cases"], as: "custodian-wmp").text.contains("\"late\"") == false)
        _ = try vault.cli(["audit", "public-key", "--out", "audit.pub"], as: "dpo-wmp")
        #expect(try vault.cli(["audit", "export", "--force", "wmp", "--out", "after.ndjson"], as: "dpo-wmp").status == 0)
        let verified = try vault.cli(["audit", "verify", "after.ndjson", "--public-key", "audit.pub"], as: "dpo-wmp")
        #expect(verified.status == 0, "\(verified.stderr)")
        let metrics = try vault.curl(["https://127.0.0.1:\(vault.port)/metrics"], as: "ops-1")
        #expect(metrics.text.contains("vault_audit_write_failures_total "), "\(metrics.text)")
        #expect(!metrics.text.contains("vault_audit_write_failures_total 0\n"))
    } }

    @Test("metrics: Prometheus text for ops with requests, bytes, custody latency, refusals, audit failures, expiry",
          arguments: TestBackend.all)
    func metrics(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        try vault.makeHistory()
        let url = "https://127.0.0.1:\(vault.port)/metrics"
        let reply = try vault.curl([url], as: "ops-1")
        #expect(reply.status == 200)
        #expect(reply.headers.lowercased().contains("content-type: text/plain; version=0.0.4"))
        let text = reply.text
        for expected in [
            "vault_http_requests_total{method=\"GET\",route=\"/v1/forces/{force}/datasets/{dataset}/current\",status=\"200\"} 3",
            "vault_http_requests_total{method=\"PUT\",route=\"/v1/forces/{force}/datasets/{dataset}/extracts\",status=\"201\"} 2",
            "vault_bytes_encrypted_total{force=\"wmp\"} 90000",
            "vault_bytes_decrypted_total{force=\"wmp\"} 130000",
            "vault_reads_refused_total{force=\"wmp\",reason=\"other_force\"} 1",
            "vault_reads_refused_total{force=\"wmp\",reason=\"not_named\"} 1",
            "vault_audit_write_failures_total 0",
            "vault_archives_past_expiry{force=\"wmp\"} 0",
            "vault_custody_operation_duration_seconds_count{force=\"wmp\",operation=\"unwrap\"} 3",
            "vault_custody_operation_duration_seconds_count{force=\"wmp\",operation=\"generate_data_key\"} 2",
        ] {
            #expect(text.contains(expected), "missing: \(expected)")
        }
        #expect(text.contains("vault_custody_operation_duration_seconds_bucket{force=\"wmp\",operation=\"unwrap\",le=\"5e-05\"}")
            || text.contains("operation=\"unwrap\",le=\"0.00005\"}"), "custody latency buckets in microseconds")
        // Ids of extracts never become labels; neither do tokens.
        #expect(!text.contains("extract=") && !text.contains("vt_"))
        // Operators only.
        let analyst = try vault.curl([url], as: "analyst-1")
        #expect(analyst.status == 403 && analyst.errorCode == "role_required")
        #expect(try vault.curl([url]).status == 401)
    } }
}
