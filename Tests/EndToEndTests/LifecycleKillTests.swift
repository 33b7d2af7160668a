import Foundation
import KeyCustody
import Logging
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// DESIGN section 3: "a crash mid-rotation / mid-shred leaving data lost, duplicated or half-visible". vaultd is
/// killed with SIGKILL (`VAULT_CRASH_AT` makes it kill itself at a named step, exactly like `kill -9` there) during
/// a rotation's rewrap job and during shredding, restarted, and the jobs finish with nothing lost or done twice.
@Suite("key lifecycle against vaultd: kill -9 mid-rotation and mid-shred", .serialized)
struct LifecycleKillTests {
    func json(_ result: CommandResult) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any] ?? [:]
    }

    func keyStatus(_ vault: RunningVault) throws -> [String: Any] {
        let result = try vault.cli(["keys", "status", "--force", "wmp", "--json"], as: "custodian-wmp")
        #expect(result.status == 0, "\(result.stderr)")
        return json(result)
    }

    func rewrap(_ status: [String: Any], _ field: String) -> Int {
        ((status["rewrap"] as? [String: Any])?[field] as? Int) ?? -1
    }

    /// vaultd's catalog, opened beside it (the pool of a PostgreSQL catalog closes when the test process ends).
    func catalog(_ vault: RunningVault) async throws -> any Catalog {
        try await Storage.openCatalog(vault.catalogLocation, logger: Logger(label: "test")).catalog
    }

    @Test("a rotation's rewrap job killed after a batch, and between custody and catalog, resumes exactly once",
          arguments: TestBackend.all)
    func killedRotation(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault(settings: "rewrap_batch_size = 4\nshred_interval_seconds = 0")
        let datasets = (0..<18).map { "ds-\($0)" }
        var contents: [String: [UInt8]] = [:]
        for (index, dataset) in datasets.enumerated() {
            contents[dataset] = testBytes(count: 3000 + index, seed: UInt64(100 + index))
            let file = try vault.directory.write("\(dataset).csv", contents[dataset]!)
            #expect(try vault.upload("wmp", dataset, file: file, as: "ingest-wmp").status == 201)
        }
        #expect(try vault.putUseCase("wmp", "serious-violence", datasets: datasets, principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        // Run 1: dies right after the second batch committed.
        vault.stop()
        try await vault.start(environment: ["VAULT_CRASH_AT": "rewrap.batch-applied:2"])
        let rotated = try vault.cli(["keys", "rotate", "--force", "wmp"], as: "custodian-wmp")
        #expect(rotated.status == 0, "\(rotated.stderr)")
        #expect(rotated.stdout.contains("fmk:wmp:1 -> fmk:wmp:2"))
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        let afterFirst = try await catalog(vault).keyUsage(force: try ForceID(force: "wmp")).references
        #expect(afterFirst[.master(force: try ForceID(force: "wmp"), version: 2)] == 8)
        // Run 2: custody rewraps the next batch, then vaultd dies before the catalog write.
        try await vault.start(environment: ["VAULT_CRASH_AT": "rewrap.batch-rewrapped"])
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        let afterSecond = try await catalog(vault).keyUsage(force: try ForceID(force: "wmp")).references
        #expect(afterSecond[.master(force: try ForceID(force: "wmp"), version: 2)] == 8)
        // Run 3: reads and uploads work while the job finishes by itself.
        try await vault.start()
        let read = try vault.curl(["\(vault.base)/wmp/datasets/ds-0/current?use_case=serious-violence"], as: "analyst-1")
        #expect(read.status == 200 && read.body == contents["ds-0"])
        var status = try keyStatus(vault)
        for _ in 0..<100 where rewrap(status, "remaining") != 0 {
            try await Task.sleep(for: .milliseconds(200))
            status = try keyStatus(vault)
        }
        #expect(rewrap(status, "remaining") == 0)
        #expect(rewrap(status, "failed") == 0)
        // Exactly 18 keys moved: counted once each, across three processes.
        #expect(rewrap(status, "processed") == 18)
        let masters = (status["master_keys"] as? [[String: Any]]) ?? []
        #expect(masters.first { $0["id"] as? String == "fmk:wmp:1" }?["state"] as? String == "retired")
        #expect(masters.first { $0["id"] as? String == "fmk:wmp:1" }?["wraps"] as? Int == 0)
        #expect(masters.first { $0["id"] as? String == "fmk:wmp:2" }?["wraps"] as? Int == 18)
        for dataset in datasets {
            let reply = try vault.curl(["\(vault.base)/wmp/datasets/\(dataset)/current?use_case=serious-violence"],
                                       as: "analyst-1")
            #expect(reply.status == 200 && reply.body == contents[dataset], "\(dataset)")
        }
        // The audit trail's rewrap records add up to 18, and the chain still verifies.
        let export = vault.directory.file("audit.ndjson")
        #expect(try vault.cli(["audit", "export", "--force", "wmp", "--out", export], as: "dpo-wmp").status == 0)
        let lines = try String(contentsOfFile: export, encoding: .utf8).split(separator: "\n")
        let moved = lines.compactMap { line -> Int? in
            guard let record = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                record["action"] as? String == "keys.rewrap" else { return nil }
            return (record["detail"] as? [String: Any])?["count"] as? Int
        }
        #expect(moved.reduce(0, +) == 18)
        let verified = try vault.cli(["audit", "verify", export, "--public-key",
                                      vault.directory.file("data/audit-signing.pub")], as: "dpo-wmp")
        #expect(verified.status == 0, "\(verified.stdout) \(verified.stderr)")
        // The retired version can go now; the active one cannot.
        #expect(try vault.cli(["keys", "destroy", "--force", "wmp", "--version", "2"], as: "custodian-wmp").status == 8)
        let destroyed = try vault.cli(["keys", "destroy", "--force", "wmp", "--version", "1"], as: "custodian-wmp")
        #expect(destroyed.status == 0, "\(destroyed.stderr)")
        let again = try vault.curl(["\(vault.base)/wmp/datasets/ds-17/current?use_case=serious-violence"],
                                   as: "analyst-1")
        #expect(again.status == 200 && again.body == contents["ds-17"])
    } }

    @Test("shredding killed after key destruction, blob deletion and commit resumes; two-custodian retrieval; holds",
          arguments: TestBackend.all)
    func killedShredding(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault(settings: "shred_interval_seconds = 1")
        let weeks = (0..<4).map { testBytes(count: 20_000 + $0, seed: UInt64(200 + $0)) }
        var extracts: [String] = []
        for (index, week) in weeks.enumerated() {
            let file = try vault.directory.write("week\(index).csv", week)
            let reply = try vault.upload("wmp", "crime", file: file, as: "ingest-wmp")
            #expect(reply.status == 201)
            extracts.append(reply.json["extract"] as? String ?? "")
        }
        #expect(try vault.putUseCase("wmp", "serious-violence", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        let (a1, a2, a3) = (extracts[0], extracts[1], extracts[2])
        let force = try ForceID(force: "wmp")
        // A legal hold on a3: early shredding is refused (409, exit 8).
        #expect(try vault.cli(["archives", "hold", "--force", "wmp", "--extract", a3, "--reason", "Case 7/2026"],
                              as: "custodian-wmp").status == 0)
        let refused = try vault.cli(["shred", "--force", "wmp", "--extract", a3, "--reason", "tidy up"],
                                    as: "custodian-wmp")
        #expect(refused.status == 8 && refused.stderr.contains("legal hold"), "\(refused.stderr)")
        let listed = try vault.cli(["archives", "list", "--force", "wmp"], as: "ops-1")
        #expect(listed.stdout.contains("HELD (Case 7/2026)"))

        // Kill 1: after the archive key is destroyed, before the blob is deleted.
        vault.stop()
        try await vault.start(environment: ["VAULT_CRASH_AT": "shred.keys-destroyed"])
        let early = try vault.cli(["shred", "--force", "wmp", "--extract", a1, "--reason", "disclosure complete"],
                                  as: "custodian-wmp")
        #expect(early.status != 0)
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        #expect(try await vault.blobExists(a1))
        #expect(try await catalog(vault).extract(force: force, id: try ExtractID(a1))?.state == .shredding)
        // Kill 2: the scheduler resumes a1 at start, deletes the blob, dies before the commit.
        try await vault.start(environment: ["VAULT_CRASH_AT": "shred.blobs-deleted"])
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        #expect(try await !vault.blobExists(a1))
        #expect(try await catalog(vault).extract(force: force, id: try ExtractID(a1))?.state == .shredding)
        // Kill 3: the scheduler finishes a1 (reach 1), then a2's early shred commits (reach 2) and vaultd dies.
        try await vault.start(environment: ["VAULT_CRASH_AT": "shred.finished:2"])
        for _ in 0..<100 {
            if try await catalog(vault).extract(force: force, id: try ExtractID(a1))?.state == .shredded { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        _ = try vault.cli(["shred", "--force", "wmp", "--extract", a2, "--reason", "superseded"], as: "custodian-wmp")
        #expect(await vault.waitForDeath(seconds: 30) == SIGKILL)
        try await vault.start()

        // Each shredded archive has exactly one certificate, which verifies offline; reads answer 410 with it.
        let publicKey = vault.directory.file("data/audit-signing.pub")
        for extract in [a1, a2] {
            let record = try #require(try await catalog(vault).extract(force: force, id: try ExtractID(extract)))
            #expect(record.state == .shredded)
            let list = try vault.cli(["certificates", "list", "--force", "wmp", "--extract", extract, "--json"],
                                     as: "dpo-wmp")
            #expect(((json(list)["certificates"] as? [Any]) ?? []).count == 1, "\(list.stdout)")
            let id = try #require(record.certificate)
            let file = vault.directory.file("\(extract).cert")
            #expect(try vault.cli(["certificates", "show", "--force", "wmp", id, "--out", file], as: "dpo-wmp")
                .status == 0)
            let verified = try vault.cli(["certificates", "verify", file, "--public-key", publicKey], as: "dpo-wmp")
            #expect(verified.status == 0 && verified.stdout.contains("verdict pending"), "\(verified.stdout)")
            let gone = try vault.curl(["\(vault.base)/wmp/extracts/\(extract)?use_case=serious-violence"],
                                      as: "analyst-1")
            #expect(gone.status == 410)
            #expect(gone.errorCode == "shredded")
            #expect(((gone.json["error"] as? [String: Any])?["certificate"] as? String) == id)
            let read = try vault.cli(["read", "--force", "wmp", "--archive", extract, "--use-case",
                                      "serious-violence", "--out", vault.directory.file("gone.out")], as: "analyst-1")
            #expect(read.status == 13, "\(read.stderr)")
        }
        // A tampered certificate fails verification (exit 3).
        let certificateFile = vault.directory.file("\(a1).cert")
        let text = try String(contentsOfFile: certificateFile, encoding: .utf8)
        try text.replacingOccurrences(of: "disclosure complete", with: "disclosure completE")
            .write(toFile: certificateFile, atomically: true, encoding: .utf8)
        #expect(try vault.cli(["certificates", "verify", certificateFile, "--public-key", publicKey], as: "dpo-wmp")
            .status == 3)

        // Every archive not shredded is still readable: a3 through a dual-control retrieval, the current on the
        // live path.
        let requested = try vault.cli(["archives", "request", "--force", "wmp", "--extract", a3, "--use-case",
                                       "serious-violence", "--reason", "Case 7/2026 disclosure", "--json"],
                                      as: "analyst-1")
        #expect(requested.status == 0, "\(requested.stderr)")
        let retrieval = try #require(json(requested)["id"] as? String)
        let output = vault.directory.file("a3.out")
        let approve = ["archives", "approve", "--force", "wmp", "--retrieval", retrieval]
        #expect(try vault.cli(approve, as: "custodian-wmp").status == 0)
        let twice = try vault.cli(approve, as: "custodian-wmp")
        #expect(twice.status == 9 && twice.stderr.contains("duplicate_approval"), "\(twice.stderr)")
        let early3 = try vault.cli(["read", "--force", "wmp", "--archive", a3, "--use-case", "serious-violence",
                                    "--out", output], as: "analyst-1")
        #expect(early3.status == 9 && early3.stderr.contains("approval_pending"), "\(early3.stderr)")
        let granted = try vault.cli(approve, as: "custodian-2")
        #expect(granted.status == 0 && granted.stdout.contains("granted to analyst-1"), "\(granted.stdout)")
        let read3 = try vault.cli(["read", "--force", "wmp", "--archive", a3, "--use-case", "serious-violence",
                                   "--out", output], as: "analyst-1")
        #expect(read3.status == 0, "\(read3.stderr)")
        #expect(try vault.directory.read("a3.out") == weeks[2])
        let current = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                     as: "analyst-1")
        #expect(current.status == 200 && current.body == weeks[3])
        // The held archive is untouched by the scheduler; releasing the hold is audited.
        #expect(try await catalog(vault).extract(force: force, id: try ExtractID(a3))?.state == .archived)
        #expect(try vault.cli(["archives", "release", "--force", "wmp", "--extract", a3, "--reason", "case closed"],
                              as: "custodian-wmp").status == 0)
        let dry = try vault.cli(["shred", "--expired", "--dry-run"], as: "ops-1")
        #expect(dry.status == 0 && dry.stdout.contains("would shred 0 archive(s)"), "\(dry.stdout)")
    } }
}
