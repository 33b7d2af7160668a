import Foundation
import KeyCustody
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Two vaultd processes on different ports share one PostgreSQL catalog, one bucket and the keyring files (shared
/// mode). They serve the same data; a rotation's rewrap and a shred sweep run while both are up; the instance that
/// holds the rewrap lease is killed with SIGKILL mid-job, and the other takes the job over. Nothing is rewrapped or
/// shredded twice. Runs in the PostgreSQL + S3 pass.
@Suite(.serialized) struct TwoInstanceTests {
    final class SecondInstance {
        let pid: pid_t
        let port: Int
        var running = true

        init(beside vault: RunningVault, environment extra: [String: String]) async throws {
            port = try freeLoopbackPort()
            var config = try String(contentsOfFile: vault.directory.file("vaultd.toml"), encoding: .utf8)
            config = config.replacingOccurrences(of: "listen = \"127.0.0.1:\(vault.port)\"",
                                                 with: "listen = \"127.0.0.1:\(port)\"")
                .replacingOccurrences(of: "instance = \"vaultd-a\"", with: "instance = \"vaultd-b\"")
            _ = try vault.directory.write("vaultd-b.toml", Array(config.utf8))
            var environment = vault.secrets
            environment["PATH"] = "/usr/bin:/bin"
            environment.merge(extra) { $1 }
            pid = try Subprocess.spawn(Binaries.path("vaultd"), ["serve", "--config", vault.directory.file("vaultd-b.toml")],
                                       environment: environment, logPath: vault.directory.file("vaultd-b.log"))
            for _ in 0..<200 {
                if (try? vault.curl(["https://127.0.0.1:\(port)/healthz"]))?.status == 200 { return }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw TestVectors.VectorError(message: "the second vaultd did not become healthy: "
                + ((try? String(contentsOfFile: vault.directory.file("vaultd-b.log"), encoding: .utf8))?.suffix(1500)
                    ?? ""))
        }

        var base: String { "https://127.0.0.1:\(port)/v1/forces" }

        /// Whether it is still running (reaps it once it died).
        func alive() -> Bool {
            guard running else { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { running = false }
            return running
        }

        deinit { if running { _ = Subprocess.stop(pid, signal: SIGKILL) } }
    }

    func psql(_ vault: RunningVault, _ sql: String) throws -> String {
        guard case .postgres(let url) = vault.catalogLocation else { return "" }
        let psql = (ProcessInfo.processInfo.environment["VAULT_TEST_PG_BIN"] ?? "/usr/bin") + "/psql"
        let result = try Binaries.run(psql, ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                                      environment: TestStorage.environment)
        #expect(result.status == 0, "\(result.stderr)")
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("two vaultd instances serve the same data; a rotation and a shred sweep run with one killed midway",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing), .timeLimit(.minutes(5)))
    func twoInstances() async throws { try await TestBackend.postgresS3.run {
        let crash = ["VAULT_CRASH_AT": "rewrap.batch-applied:3"]
        let a = try await RunningVault(settings: """
            rewrap_batch_size = 4
            shred_interval_seconds = 1
            job_lease_seconds = 8
            instance = "vaultd-a"
            """)
        a.stop()
        try await a.start(environment: crash)
        let b = try await SecondInstance(beside: a, environment: crash)
        let datasets = (0..<16).map { "ds-\($0)" }
        #expect(try a.putUseCase("wmp", "serious-violence", datasets: datasets, principals: ["analyst-1"],
                                 as: "custodian-wmp").status == 200)
        // Uploads through both instances; every extract reads back byte for byte through the other one.
        var contents: [String: [UInt8]] = [:]
        for (index, dataset) in datasets.enumerated() {
            let first = try a.directory.write("\(dataset)-1.csv", testBytes(count: 2000 + index, seed: UInt64(index)))
            #expect(try a.upload("wmp", dataset, file: first, as: "ingest-wmp").status == 201)
            contents[dataset] = try a.directory.read("\(dataset)-1.csv")
            if index < 6 {
                // A second week through B archives the first.
                let second = try a.directory.write("\(dataset)-2.csv", testBytes(count: 3000 + index, seed: UInt64(50 + index)))
                let reply = try a.curl(["-X", "PUT", "--data-binary", "@\(second)", "-H",
                                        "Content-Type: application/octet-stream", "\(b.base)/wmp/datasets/\(dataset)/extracts"],
                                       as: "ingest-wmp")
                #expect(reply.status == 201, "\(reply.text)")
                contents[dataset] = try a.directory.read("\(dataset)-2.csv")
            }
        }
        for dataset in datasets {
            let viaB = try a.curl(["\(b.base)/wmp/datasets/\(dataset)/current?use_case=serious-violence"], as: "analyst-1")
            #expect(viaB.status == 200 && viaB.body == contents[dataset], "\(dataset) via B")
            let viaA = try a.curl(["\(a.base)/wmp/datasets/\(dataset)/current?use_case=serious-violence"], as: "analyst-1")
            #expect(viaA.status == 200 && viaA.body == contents[dataset], "\(dataset) via A")
        }
        // The six archives reach the end of their retention (the catalog's clock moves on): both instances' shred
        // sweeps, every second, now compete for them.
        #expect(try psql(a, "UPDATE extracts SET expires_at = 1 WHERE state = 'archived' RETURNING 1")
            .split(separator: "\n").count == 6)
        // A rotation through B; both instances' key jobs compete for its rewrap (4 batches of 4). Whichever holds
        // the lease dies with SIGKILL after its third batch; the other takes the job over when the lease expires.
        let rotated = try a.curl(["-X", "POST", "\(b.base)/wmp/keys/rotate"], as: "custodian-wmp")
        #expect(rotated.status == 202, "\(rotated.text)")
        var aliveA = true, aliveB = true
        for _ in 0..<300 where aliveA && aliveB {
            try await Task.sleep(for: .milliseconds(100))
            aliveA = a.process.isRunning
            aliveB = b.alive()
        }
        #expect(aliveA != aliveB, "exactly one instance died at the crash point (A alive \(aliveA), B \(aliveB))")
        let survivor = aliveA ? a.base : b.base
        // The survivor finishes the job after the dead instance's lease expires. Its key status is one snapshot, so
        // "nothing remains" comes only with every key counted.
        var status: [String: Any] = [:]
        for _ in 0..<300 {
            status = try a.curl(["\(survivor)/wmp/keys"], as: "custodian-wmp").json
            if (status["rewrap"] as? [String: Any])?["remaining"] as? Int == 0 { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        let rewrap = status["rewrap"] as? [String: Any] ?? [:]
        #expect(rewrap["remaining"] as? Int == 0, "\(status)")
        #expect(rewrap["processed"] as? Int == 16, "every current key moved once: \(rewrap)")
        #expect(rewrap["failed"] as? Int == 0)
        // No key moved twice: each current extract's lineage is exactly v1 then v2.
        #expect(try psql(a, """
            SELECT count(*) FROM (SELECT extract FROM extract_keks k JOIN extracts e ON e.force = k.force
                AND e.id = k.extract WHERE e.state = 'current' GROUP BY extract HAVING count(*) <> 2) AS odd
            """) == "0")
        #expect(try psql(a, "SELECT count(*) FROM extract_keks WHERE kek = 'fmk:wmp:2'") == "16")
        // Every archive shredded exactly once: one certificate and one shred record each.
        for _ in 0..<100 where try psql(a, "SELECT count(*) FROM extracts WHERE state = 'shredded'") != "6" {
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(try psql(a, "SELECT count(*) FROM extracts WHERE state = 'shredded'") == "6")
        #expect(try psql(a, "SELECT count(*) FROM certificates") == "6")
        #expect(try psql(a, "SELECT count(*) FROM audit_records WHERE action = 'shred'") == "6")
        #expect(try psql(a, "SELECT count(*) FROM extracts WHERE state = 'archived'") == "0")
        // And the survivor still serves everything, under the new master key.
        for dataset in datasets {
            let reply = try a.curl(["\(survivor)/wmp/datasets/\(dataset)/current?use_case=serious-violence"],
                                   as: "analyst-1")
            #expect(reply.status == 200 && reply.body == contents[dataset], "\(dataset) at the end")
        }
        let leases = try psql(a, "SELECT count(*) FROM leases")
        #expect(leases == "0" || leases == "1", "leases left: \(leases)")
    } }
}
