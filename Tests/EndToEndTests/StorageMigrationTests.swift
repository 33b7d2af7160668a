import Foundation
import KeyCustody
import Testing
import Vault
import VaultTestSupport

/// `vault admin migrate`: an embedded vault (SQLite and files) moves onto PostgreSQL and S3 without re-uploading;
/// the copy is verified by SHA-256, can be run again after an interruption, and the moved vault serves the same
/// bytes with the same audit chain. Runs in the PostgreSQL + S3 pass.
@Suite(.serialized) struct StorageMigrationTests {
    @Test("an embedded vault moves to PostgreSQL and S3: verified, resumable, same reads and audit chain after",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing), .timeLimit(.minutes(4)))
    func migrate() async throws { try await TestBackend.postgresS3.run {
        let vault = try await RunningVault(embedded: true)
        let weeks = [testBytes(count: 40_000, seed: 1), testBytes(count: 7 << 20, seed: 2), testBytes(count: 900, seed: 3)]
        for (index, week) in weeks.enumerated() {
            let file = try vault.directory.write("week\(index).csv", week)
            #expect(try vault.upload("wmp", "crime", file: file, as: "ingest-wmp").status == 201)
        }
        let custody = try vault.directory.write("custody.csv", testBytes(count: 5000, seed: 4))
        #expect(try vault.upload("wmp", "custody", file: custody, as: "ingest-wmp").status == 201)
        #expect(try vault.putUseCase("wmp", "uc", datasets: ["crime", "custody"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        #expect(try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=uc"], as: "analyst-1").body
            == weeks[2])
        vault.stop()

        let url = try TestStorage.newPostgresDatabase()
        let s3 = try await TestStorage.newS3Settings()
        let arguments = ["admin", "migrate", "--from", "sqlite:data/catalog.sqlite", "--to", url,
                         "--blobs-from", "data/blobs", "--blobs-to", s3.url, "--s3-endpoint", s3.endpoint]
        func migrate() throws -> CommandResult {
            try Binaries.run("vault", arguments, environment: TestStorage.environment,
                             currentDirectory: vault.directory.path)
        }
        let first = try migrate()
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("blobs: 4 verified by SHA-256 (4 copied now, 0 already there)"), "\(first.stdout)")
        #expect(first.stdout.contains("audit chain heads match"))
        // An interrupted copy, as if the run had died before the last blob: run again, and only it is sent.
        let store = S3BlobStore(configuration: try s3.resolve())
        let keys = try await store.listKeys()
        #expect(keys.count == 4)
        let identity = try #require(keys.compactMap { key -> ExtractIdentity? in
            let parts = key.split(separator: "/")
            guard parts.count >= 3, parts[parts.count - 2] == "custody" else { return nil }
            return ExtractIdentity(force: try ForceID(force: "wmp"), dataset: try DatasetID(dataset: "custody"),
                                   extract: try ExtractID(String(parts[parts.count - 1].dropLast(4))))
        }.first)
        try await store.delete(identity)
        let second = try migrate()
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout.contains("blobs: 4 verified by SHA-256 (1 copied now, 3 already there)"),
                "\(second.stdout)")
        // The catalog was complete already: no row is copied twice.
        let tableLines = second.stdout.split(separator: "\n").filter { $0.hasPrefix("catalog ") && $0.contains(" rows, ") }
        #expect(tableLines.count == CatalogMigration.tableNames.count, "one line per table: \(tableLines)")
        #expect(tableLines.allSatisfy { $0.contains(" rows, 0 copied now, ") }, "\(tableLines)")
        #expect(CatalogMigration.tableNames.allSatisfy { name in tableLines.contains { $0.hasPrefix("catalog \(name):") } },
                "\(tableLines)")
        // A damaged file is refused, not copied: its SHA-256 differs from the one recorded at upload.
        try await store.delete(identity)
        let path = vault.directory.file("data/blobs/wmp/custody/\(identity.extract).cob")
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[100] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let damaged = try migrate()
        #expect(damaged.status == 3 && damaged.stderr.contains("does not match the SHA-256 recorded"),
                "\(damaged.status) \(damaged.stderr)")
        bytes[100] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(try migrate().status == 0)
        // A password in the URL is refused before anything runs.
        let withPassword = try Binaries.run("vault", ["admin", "migrate", "--from", "sqlite:data/catalog.sqlite",
                                                       "--to", "postgres://vault:hunter2@127.0.0.1:1/x"],
                                            currentDirectory: vault.directory.path)
        #expect(withPassword.status == 64 && !withPassword.stderr.contains("hunter2"), "\(withPassword.stderr)")

        // vaultd on the new storage serves the same bytes, with the same tokens and an unbroken audit chain.
        var config = try String(contentsOfFile: vault.directory.file("vaultd.toml"), encoding: .utf8)
        config = "catalog = \"\(url)\"\n" + config + "\n[blobs]\nurl = \"\(s3.url)\"\nendpoint = \"\(s3.endpoint)\"\n"
        _ = try vault.directory.write("vaultd.toml", Array(config.utf8))
        try FileManager.default.moveItem(atPath: vault.directory.file("data/blobs"),
                                         toPath: vault.directory.file("old-blobs"))
        try FileManager.default.moveItem(atPath: vault.directory.file("data/catalog.sqlite"),
                                         toPath: vault.directory.file("old-catalog.sqlite"))
        vault.addSecrets(TestStorage.environment)
        try await vault.start()
        #expect(try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=uc"], as: "analyst-1").body
            == weeks[2])
        #expect(try vault.curl(["\(vault.base)/wmp/datasets/custody/current?use_case=uc"], as: "analyst-1").body
            == Array(try Data(contentsOf: URL(fileURLWithPath: custody))))
        _ = try vault.cli(["audit", "public-key", "--out", "audit.pub"], as: "dpo-wmp")
        #expect(try vault.cli(["audit", "export", "--force", "wmp", "--out", "moved.ndjson"], as: "dpo-wmp").status == 0)
        let verified = try vault.cli(["audit", "verify", "moved.ndjson", "--public-key", "audit.pub"], as: "dpo-wmp")
        #expect(verified.status == 0, "\(verified.stderr)")
        let upload = try vault.directory.write("week3.csv", testBytes(count: 1234, seed: 9))
        #expect(try vault.upload("wmp", "crime", file: upload, as: "ingest-wmp").status == 201)
    } }
}
