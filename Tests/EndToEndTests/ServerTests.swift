import Foundation
import KeyCustody
import Logging
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A real vaultd on a free loopback port, with keyrings, a PKI, principals and tokens, driven with curl.
final class RunningVault: @unchecked Sendable {
    let directory: TemporaryDirectory
    let pki: DevPKI
    let port: Int
    private(set) var process: Process
    var tokens: [String: String] = [:]
    let passphrases = ["VAULT_PASSPHRASE_WMP": "wmp passphrase for tests", "VAULT_PASSPHRASE_GMP": "gmp passphrase 42"]
    /// What vaultd needs in its environment to open custody (passphrases, or token PINs and SOFTHSM2_CONF) and to
    /// reach PostgreSQL and S3 when the suite runs on them.
    private(set) var secrets: [String: String] = TestStorage.environment
    /// The catalog and blob store vaultd is configured with (`TestStorage`).
    let catalogLocation: CatalogLocation
    let blobLocation: BlobLocation

    static let principals: [(String, String)] = [
        ("ingest-wmp", "uploader = [\"wmp\"]"), ("ingest-gmp", "uploader = [\"gmp\"]"),
        ("analyst-1", "analyst = [\"wmp\"]"), ("analyst-gmp", "analyst = [\"gmp\"]"),
        ("custodian-wmp", "custodian = [\"wmp\"]"), ("custodian-2", "custodian = [\"wmp\"]"),
        ("ops-1", "ops = [\"wmp\", \"gmp\"]"),
        ("dpo-wmp", "auditor = [\"wmp\"]"),
    ] + MatrixRoles.matrix.flatMap { role in
        [("\(role)-own", "\(role) = [\"wmp\"]"), ("\(role)-other", "\(role) = [\"gmp\"]")]
    }

    /// `backend`: the custody backend of both forces, instead of the one under test. `embedded`: SQLite and files
    /// whatever the storage under test.
    /// `extraForces`: more custody-file tables (a remote force), with `extraPrincipals` of their own.
    /// `s3Endpoint`: where vaultd sends its S3 requests instead of the test server (a proxy in front of it).
    /// `revokedClients`: when set, vaultd checks client certificates against the CA's revocation list, which
    /// revokes these (client certificates are made for analyst-1 and custodian-wmp).
    init(settings: String = "", backend: String? = nil, embedded: Bool = false, extraForces: String = "",
         extraPrincipals: [(String, String)] = [], s3Endpoint: String? = nil, revokedClients: [String]? = nil)
        async throws {
        directory = try TemporaryDirectory("vaultd-e2e")
        var tables = ""
        for (force, variable) in [("wmp", "VAULT_PASSPHRASE_WMP"), ("gmp", "VAULT_PASSPHRASE_GMP")] {
            let custody = try TestCustody.custodyTable(force: force, directory: directory,
                                                       passphraseVariable: variable, passphrase: passphrases[variable]!,
                                                       backend: backend)
            tables += custody.table + "\n"
            secrets.merge(custody.environment) { $1 }
        }
        pki = try DevPKI(directory: directory.file("tls"),
                         clients: revokedClients == nil ? ["analyst-1"] : ["analyst-1", "custodian-wmp"],
                         foreign: ["intruder"])
        if let revokedClients { try pki.writeRevocationList(revoking: revokedClients) }
        port = try freeLoopbackPort()
        tables += extraForces
        _ = try directory.write("keys.toml", Array(tables.utf8))
        let allPrincipals = Self.principals + extraPrincipals
        let principals = allPrincipals.map { "[[principals]]\nid = \"\($0.0)\"\n\($0.1)\n" }.joined(separator: "\n")
        var storage = embedded ? (topLevel: "", table: "", catalog: nil, blobs: nil) : try await TestStorage.vaultdSettings()
        if let s3Endpoint, case .s3(let s3)? = storage.blobs {
            storage.table = storage.table.replacing("endpoint = \"\(s3.endpoint)\"", with: "endpoint = \"\(s3Endpoint)\"")
        }
        catalogLocation = storage.catalog ?? .sqlite(path: directory.file("data/catalog.sqlite"))
        blobLocation = storage.blobs ?? .files(root: directory.file("data/blobs"))
        _ = try directory.write("vaultd.toml", Array("""
            \(storage.topLevel)
            listen = "127.0.0.1:\(port)"
            data_dir = "data"
            custody = "keys.toml"
            \(settings)

            [tls]
            certificate = "tls/server.pem"
            private_key = "tls/server.key"
            client_ca = "tls/ca.pem"
            \(revokedClients == nil ? "" : "client_crl = \"tls/ca.crl\"")

            \(principals)

            \(storage.table)
            """.utf8))
        // One token through `vaultd token create` (the command operators use), the others issued in process on the
        // same catalog: one process start instead of one per principal.
        let created = try Binaries.run("vaultd", ["token", "create", "--config", directory.file("vaultd.toml"),
                                                  "--principal", "analyst-1"], environment: TestStorage.environment)
        guard created.status == 0 else { throw TestVectors.VectorError(message: "token: \(created.stderr)") }
        tokens["analyst-1"] = created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let configuration = try ServerConfiguration.load(path: directory.file("vaultd.toml"))
        let (catalog, runner) = try await Storage.openCatalog(configuration.catalog, logger: Logger(label: "test"))
        defer { runner?.cancel() }
        for (principal, _) in allPrincipals where principal != "analyst-1" {
            guard let grantee = configuration.principals[principal] else { continue }
            let token = try await BearerToken.issue(for: grantee, description: "test", catalog: catalog)
            tokens[principal] = token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        }
        process = Process()
        try await start()
    }

    /// Runs `body` on vaultd's catalog, opened beside it.
    func withCatalog<T: Sendable>(_ body: @escaping @Sendable (any Catalog) async throws -> T) async throws -> T {
        let (catalog, runner) = try await Storage.openCatalog(catalogLocation, logger: Logger(label: "test"))
        defer { runner?.cancel() }
        return try await body(catalog)
    }

    /// The blob store vaultd writes to.
    func blobStore() async throws -> any BlobStore { try await Storage.openBlobs(blobLocation) }

    /// Whether the blob of `extract` (force wmp, dataset crime unless given) exists.
    func blobExists(_ extract: String, force: String = "wmp", dataset: String = "crime") async throws -> Bool {
        let identity = ExtractIdentity(force: try ForceID(force: force), dataset: try DatasetID(dataset: dataset),
                                       extract: try ExtractID(extract))
        return try await TestStorage.blobBytes(try await blobStore(), identity) != nil
    }

    /// Flips one byte of a stored blob (an attacker or a failing disk), in place.
    func tamperBlob(_ extract: String, at offset: Int, force: String = "wmp", dataset: String = "crime") async throws {
        let identity = ExtractIdentity(force: try ForceID(force: force), dataset: try DatasetID(dataset: dataset),
                                       extract: try ExtractID(extract))
        let store = try await blobStore()
        if let files = store as? FileBlobStore {
            let handle = try #require(FileHandle(forUpdatingAtPath: files.path(identity)))
            try handle.seek(toOffset: UInt64(offset))
            let original = try #require(try handle.read(upToCount: 1))
            try handle.seek(toOffset: UInt64(offset))
            handle.write(Data([original[0] ^ 0xFF]))
            try handle.close()
        } else {
            var bytes = try #require(try await TestStorage.blobBytes(store, identity))
            bytes[offset] ^= 0xFF
            try await store.delete(identity)
            let upload = try await store.create(identity)
            try await upload.write(bytes)
            try await upload.commit()
        }
    }

    /// Every blob stored: file paths under the blob root, or object keys under the S3 prefix.
    func blobKeys() async throws -> [String] {
        if let s3 = try await blobStore() as? S3BlobStore { return try await s3.listKeys() }
        return FileManager.default.enumerator(atPath: directory.file("data/blobs"))?
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".cob") } ?? []
    }

    /// A real fault that stops every catalog write: on SQLite, vaultd may write no file beyond its first byte (as on
    /// a full disk); on PostgreSQL, the database turns read-only (as after a failover to a replica) and vaultd's
    /// sessions are cut so its pool reconnects into it. `false` undoes it.
    func catalogWritable(_ writable: Bool) throws {
        switch catalogLocation {
        case .sqlite:
            let limit = try Binaries.run("/usr/bin/prlimit", ["--pid", String(pid),
                                                              writable ? "--fsize=unlimited" : "--fsize=1:unlimited"])
            #expect(limit.status == 0, "\(limit.stderr)")
        case .postgres(let url):
            let database = String(url.split(separator: "/").last ?? "")
            let psql = (ProcessInfo.processInfo.environment["VAULT_TEST_PG_BIN"] ?? "/usr/bin") + "/psql"
            // One statement per -c, each its own transaction; the session itself may write whatever the default.
            let statements = [
                "SET default_transaction_read_only = off",
                "ALTER DATABASE \(database) SET default_transaction_read_only = \(writable ? "off" : "on")",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '\(database)' "
                    + "AND pid <> pg_backend_pid()",
            ]
            let result = try Binaries.run(psql, ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
                                            + statements.flatMap { ["-c", $0] },
                                          environment: TestStorage.environment)
            #expect(result.status == 0, "\(result.stderr)")
        }
    }

    /// Adds environment variables vaultd needs from its next start on (a PIN, SOFTHSM2_CONF).
    func addSecrets(_ more: [String: String]) { secrets.merge(more) { $1 } }

    /// The arguments and environment of an offline `vault encrypt|decrypt` with `force`'s keys: its keyring file, or
    /// its token through the custody file.
    func offlineKeys(_ force: String) -> (arguments: [String], environment: [String: String]) {
        if TestCustody.isPKCS11 {
            return (["--custody", "keys.toml", "--force", force], secrets)
        }
        return (["--keyring", "\(force).keyring"], ["VAULT_PASSPHRASE": passphrases["VAULT_PASSPHRASE_\(force.uppercased())"]!])
    }

    /// Runs `vault encrypt` or `vault decrypt` offline in the vault's directory with `force`'s keys.
    func offline(_ command: String, _ force: String, _ arguments: [String]) throws -> CommandResult {
        let keys = offlineKeys(force)
        return try Binaries.run("vault", [command] + keys.arguments + arguments, environment: keys.environment,
                                currentDirectory: directory.path)
    }

    /// Starts vaultd (again) on the same data, with extra environment variables (`VAULT_CRASH_AT`).
    func start(environment extra: [String: String] = [:]) async throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: Binaries.path("vaultd"))
        process.arguments = ["serve", "--config", directory.file("vaultd.toml")]
        var environment = secrets
        environment["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        environment.merge(extra) { $1 }
        process.environment = environment
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        if !FileManager.default.fileExists(atPath: directory.file("vaultd.log")) {
            FileManager.default.createFile(atPath: directory.file("vaultd.log"), contents: nil)
        }
        let log = FileHandle(forWritingAtPath: directory.file("vaultd.log"))
        log?.seekToEndOfFile()
        process.standardError = log
        try process.run()
        for _ in 0..<200 {
            if let health = try? curl(["https://127.0.0.1:\(port)/healthz"]), health.status == 200 { return }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let running = process.isRunning
        // A crash point may be reached by a job at start, before the first health check answers.
        if !running, extra["VAULT_CRASH_AT"] != nil { return }
        let text = (try? String(contentsOfFile: directory.file("vaultd.log"), encoding: .utf8)) ?? ""
        throw TestVectors.VectorError(message: "vaultd did not become healthy (running: \(running), status "
                                        + "\(running ? 0 : process.terminationStatus)): \(text.suffix(1500))")
    }

    /// Waits until vaultd has exited by itself (a crash point), up to `seconds`; its termination signal, or nil.
    func waitForDeath(seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        guard !process.isRunning else { return nil }
        return process.terminationReason == .uncaughtSignal ? process.terminationStatus : 0
    }

    /// Stops vaultd with SIGKILL (a child of Foundation's Process inherits a blocked SIGTERM) and waits.
    func stop() {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        // SIGKILL: a child started through Foundation's Process inherits a blocked signal mask.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    struct Reply {
        let status: Int
        let body: [UInt8]
        let headers: String
        var text: String { String(decoding: body, as: UTF8.self) }
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
        var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
        let curlStatus: Int32
        /// curl's `time_total`: connect, TLS, request and answer, not curl's own start-up.
        var seconds: Double = .infinity
    }

    /// curl with the test CA; `as` adds a bearer token; `cert` presents a client certificate instead.
    func curl(_ arguments: [String], as principal: String? = nil, cert: String? = nil, key: String? = nil) throws
        -> Reply
    {
        let out = directory.file("curl-\(UUID().uuidString.prefix(8)).out")
        let headers = out + ".headers"
        var args = ["-sS", "--cacert", pki.caCertificate, "-o", out, "-D", headers, "-w", "%{http_code} %{time_total}"]
        if let principal { args += ["-H", "Authorization: Bearer \(tokens[principal]!)"] }
        if let cert { args += ["--cert", cert, "--key", key!] }
        let result = try Binaries.run("/usr/bin/curl", args + arguments, currentDirectory: directory.path)
        let body = (try? Data(contentsOf: URL(fileURLWithPath: out))).map { [UInt8]($0) } ?? []
        let headerText = (try? String(contentsOfFile: headers, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: headers)
        let written = result.stdout.split(separator: " ")
        return Reply(status: written.first.flatMap { Int($0) } ?? 0, body: body, headers: headerText,
                     curlStatus: result.status, seconds: written.count > 1 ? Double(written[1]) ?? .infinity : .infinity)
    }

    var base: String { "https://127.0.0.1:\(port)/v1/forces" }

    func upload(_ force: String, _ dataset: String, file: String, as principal: String, sealed: Bool = false) throws
        -> Reply
    {
        var args = ["-X", "PUT", "--data-binary", "@\(file)", "\(base)/\(force)/datasets/\(dataset)/extracts"]
        args += ["-H", "Content-Type: \(sealed ? "application/vnd.vault.sealed" : "application/octet-stream")"]
        return try curl(args, as: principal)
    }

    func putUseCase(_ force: String, _ id: String, datasets: [String], principals: [String], as principal: String,
                    extra: String = "") throws -> Reply
    {
        let body = """
            {"description":"test","lawful_basis":"Crime and Disorder Act 1998 s.115",\
            "datasets":[\(datasets.map { "\"\($0)\"" }.joined(separator: ","))],\
            "principals":[\(principals.map { "\"\($0)\"" }.joined(separator: ","))]\(extra)}
            """
        return try curl(["-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", body,
                         "\(base)/\(force)/use-cases/\(id)"], as: principal)
    }
}

enum MatrixRoles {
    static let matrix = ["uploader", "analyst", "custodian", "ops", "auditor"]
}

@Suite("vaultd over HTTPS", .serialized)
struct ServerTests {
    @Test("upload, use case, authorised read (whole and ranged), weekly replacement, and the refusals",
          arguments: TestBackend.all)
    func mainJob(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let week1 = try vault.directory.write("week1.csv", testBytes(count: 100_000, seed: 1))
        let week2 = try vault.directory.write("week2.csv", testBytes(count: 70_000, seed: 2))

        let first = try vault.upload("wmp", "crime", file: week1, as: "ingest-wmp")
        #expect(first.status == 201, "\(first.text)")
        #expect(first.json["state"] as? String == "current")
        let firstID = try #require(first.json["extract"] as? String)

        #expect(try vault.putUseCase("wmp", "serious-violence", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        let read = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                  as: "analyst-1")
        #expect(read.status == 200)
        #expect(read.body == testBytes(count: 100_000, seed: 1))

        let ranged = try vault.curl(["-H", "Range: bytes=16380-16399",
                                     "\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                    as: "analyst-1")
        #expect(ranged.status == 206)
        #expect(ranged.body == Array(testBytes(count: 100_000, seed: 1)[16380..<16400]))
        #expect(ranged.headers.lowercased().contains("content-range: bytes 16380-16399/100000"))
        let suffix = try vault.curl(["-H", "Range: bytes=-10",
                                     "\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                    as: "analyst-1")
        #expect(suffix.body == Array(testBytes(count: 100_000, seed: 1).suffix(10)))

        // mTLS: the analyst's client certificate works instead of a token.
        let viaCertificate = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                            cert: vault.pki.clientCertificate("analyst-1"),
                                            key: vault.pki.clientKey("analyst-1"))
        #expect(viaCertificate.status == 200)
        #expect(viaCertificate.body.count == 100_000)

        // Weekly replacement: week 2 becomes current, week 1 is archived and unreadable on the live path.
        let second = try vault.upload("wmp", "crime", file: week2, as: "ingest-wmp")
        #expect(second.status == 201)
        let again = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                   as: "analyst-1")
        #expect(again.body == testBytes(count: 70_000, seed: 2))
        let archived = try vault.curl(["\(vault.base)/wmp/extracts/\(firstID)?use_case=serious-violence"],
                                      as: "analyst-1")
        #expect(archived.status == 403)
        #expect(archived.errorCode == "archived_extract")
        let archives = try vault.curl(["\(vault.base)/wmp/archives"], as: "ops-1")
        let listed = (archives.json["archives"] as? [[String: Any]])?.compactMap { $0["extract"] as? String }
        #expect(listed == [firstID])
        #expect(((archives.json["archives"] as? [[String: Any]])?.first?["expires_at"] as? String) != nil)

        // Refusals, each with the rule that refused.
        let crossForce = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=serious-violence"],
                                        as: "analyst-gmp")
        #expect(crossForce.status == 403)
        #expect(crossForce.errorCode == "other_force")
        let noUseCase = try vault.curl(["\(vault.base)/wmp/datasets/crime/current"], as: "analyst-1")
        #expect(noUseCase.errorCode == "use_case_required")
        let unknown = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=nope"], as: "analyst-1")
        #expect(unknown.errorCode == "no_such_use_case")
        #expect(try vault.curl(["\(vault.base)/wmp/archives"], as: "analyst-1").errorCode == "role_required")

        // Every read, allowed or refused, is in the force's audit table.
        let audit = try vault.curl(["\(vault.base)/wmp/audit"], as: "dpo-wmp")
        #expect(audit.status == 200)
        let records = audit.text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let reads = records.filter { $0["action"] as? String == "read" }
        #expect(reads.filter { $0["outcome"] as? String == "allowed" }.count == 5)
        #expect(reads.filter { $0["outcome"] as? String == "denied" }.count == 3)
        // The cross-force attempt is not in wmp's chain but in the platform's, which ops export.
        #expect(!reads.contains { $0["principal"] as? String == "analyst-gmp" })
        let platform = try vault.curl(["https://127.0.0.1:\(vault.port)/v1/forces/platform/audit"], as: "ops-1")
        #expect(platform.status == 200 && platform.text.contains(#""principal":"analyst-gmp""#))
    } }

    @Test("bad credentials, bad ids, bad ranges and bad bodies are refused cleanly, and vaultd keeps serving",
          arguments: TestBackend.all)
    func badInput(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let file = try vault.directory.write("x.csv", Array("a,b\n1,2\n".utf8))
        #expect(try vault.upload("wmp", "crime", file: file, as: "ingest-wmp").status == 201)
        #expect(try vault.putUseCase("wmp", "uc", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        let url = "\(vault.base)/wmp/datasets/crime/current?use_case=uc"

        let anonymous = try vault.curl([url])
        #expect(anonymous.status == 401)
        #expect(anonymous.errorCode == "unauthenticated")
        let forged = try vault.curl(["-H", "Authorization: Bearer vt_" + String(repeating: "0", count: 64), url])
        #expect(forged.status == 401)
        #expect(forged.errorCode == "invalid_token")
        #expect(try vault.curl(["-H", "Authorization: Basic YTpi", url]).errorCode == "invalid_token")
        // A client certificate from another CA fails the TLS handshake: no HTTP exchange at all.
        let intruder = try vault.curl([url], cert: vault.pki.clientCertificate("intruder"),
                                      key: vault.pki.clientKey("intruder"))
        #expect(intruder.curlStatus != 0)
        #expect(intruder.status == 0)

        for path in ["WMP/datasets/crime/current?use_case=uc", "wmp/datasets/..%2F..%2Fetc/current?use_case=uc",
                     "wmp/datasets/cr%C3%A9me/current?use_case=uc",
                     "wmp/datasets/\(String(repeating: "a", count: 70))/current?use_case=uc"] {
            let reply = try vault.curl(["\(vault.base)/\(path)"], as: "analyst-1")
            #expect(reply.status == 400 || reply.status == 404, "\(path): \(reply.status) \(reply.text)")
            #expect(reply.errorCode != nil, "\(path): \(reply.text)")
        }
        #expect(try vault.curl(["-H", "Range: bytes=9-2", url], as: "analyst-1").errorCode == "malformed_range")
        #expect(try vault.curl(["-H", "Range: bytes=0-1,4-5", url], as: "analyst-1").errorCode == "malformed_range")
        let beyond = try vault.curl(["-H", "Range: bytes=500-", url], as: "analyst-1")
        #expect(beyond.status == 416)

        // A sealed upload with a broken header, and one for another force: refused, nothing stored.
        let junk = try vault.directory.write("junk.vault", Array("{\"not\":\"a header\"}\nxxxx".utf8))
        let junkReply = try vault.upload("wmp", "crime", file: junk, as: "ingest-wmp", sealed: true)
        #expect(junkReply.status == 400)
        #expect(junkReply.errorCode == "malformed_header")
        let bad = try vault.putUseCase("wmp", "bad", datasets: ["crime"], principals: ["analyst-1"],
                                       as: "custodian-wmp", extra: ",\"valid_from\":\"yesterday\"")
        #expect(bad.status == 400)
        #expect(try vault.curl(["-X", "PUT", "--data-binary", "{", "\(vault.base)/wmp/use-cases/broken"],
                               as: "custodian-wmp").status == 400)

        // Still serving, and the current extract is the one uploaded first.
        let read = try vault.curl([url], as: "analyst-1")
        #expect(read.status == 200)
        #expect(read.text == "a,b\n1,2\n")
        #expect(try vault.curl(["https://127.0.0.1:\(vault.port)/readyz"]).status == 200)
    } }
}

/// Client certificates against the CA's revocation list (issue 17, defect 5).
@Suite("vaultd's client CRL", .serialized)
struct ClientCRLTests {
    @Test("a revoked client certificate is refused from its next request on; the list is read again when it changes; an unusable list refuses every certificate (fail closed) but not tokens")
    func revocation() async throws {
        let vault = try await RunningVault(embedded: true, revokedClients: [])
        let url = "\(vault.base)/wmp/use-cases"
        func asClient(_ name: String) throws -> RunningVault.Reply {
            try vault.curl([url], cert: vault.pki.clientCertificate(name), key: vault.pki.clientKey(name))
        }
        #expect(try asClient("custodian-wmp").status == 200)
        #expect(try asClient("analyst-1").status == 200)

        // The CA revokes the custodian's certificate; vaultd notices the new list within a few seconds.
        try vault.pki.writeRevocationList(revoking: ["custodian-wmp"])
        var reply = try asClient("custodian-wmp")
        for _ in 0..<100 where reply.status == 200 {
            try await Task.sleep(for: .milliseconds(100))
            reply = try asClient("custodian-wmp")
        }
        #expect(reply.status == 401)
        #expect(reply.errorCode == "certificate_revoked")
        #expect(try asClient("analyst-1").status == 200)

        // A broken list: every certificate login is refused with crl_unavailable; tokens still work.
        try DurableFile.write(Array("-----BEGIN X509 CRL-----\nnot a list\n-----END X509 CRL-----\n".utf8),
                              to: vault.pki.revocationList)
        reply = try asClient("analyst-1")
        for _ in 0..<100 where reply.status == 200 {
            try await Task.sleep(for: .milliseconds(100))
            reply = try asClient("analyst-1")
        }
        #expect(reply.status == 503)
        #expect(reply.errorCode == "crl_unavailable")
        #expect(try vault.curl([url], as: "custodian-wmp").status == 200)

        // A good list again: the analyst is back, the custodian's certificate stays revoked.
        try vault.pki.writeRevocationList(revoking: ["custodian-wmp"])
        reply = try asClient("analyst-1")
        for _ in 0..<100 where reply.status != 200 {
            try await Task.sleep(for: .milliseconds(100))
            reply = try asClient("analyst-1")
        }
        #expect(reply.status == 200)
        #expect(try asClient("custodian-wmp").errorCode == "certificate_revoked")
        let log = try String(contentsOfFile: vault.directory.file("vaultd.log"), encoding: .utf8)
        #expect(log.contains("the client CRL is unusable") && log.contains("the client CRL is usable again"))
    }

    @Test("vaultd refuses to start with a client CRL that is not signed by its client CA")
    func unsignedList() async throws {
        let directory = try TemporaryDirectory("vault-crl")
        let pki = try DevPKI(directory: directory.file("tls"), clients: ["analyst-1"], foreign: ["intruder"])
        try pki.writeRevocationList(revoking: [])
        let other = try DevPKI(directory: directory.file("other"), clients: [])
        try other.writeRevocationList(revoking: [])
        // Its own CA's list loads.
        _ = try ClientRevocationList(path: pki.revocationList, caFile: pki.caCertificate)
        let refused = #expect(throws: VaultError.self) {
            try ClientRevocationList(path: other.revocationList, caFile: pki.caCertificate)
        }
        #expect(refused?.message.contains("not signed by the client CA") == true)
        let garbage = try directory.write("junk.crl", Array("junk".utf8))
        let unreadable = #expect(throws: VaultError.self) {
            try ClientRevocationList(path: garbage, caFile: pki.caCertificate)
        }
        #expect(unreadable?.message.contains("not a PEM or DER X.509 CRL") == true)
    }
}

/// What vaultd's listener offers, as a real scanner (Debian's sslscan) sees it.
@Suite("vaultd's TLS suites", .serialized)
struct TLSSuiteTests {
    @Test("TLS 1.3 and 1.2 only; over TLS 1.2 only AEAD suites with forward secrecy; no CBC or SHA-1 suite")
    func offeredSuites() async throws {
        let vault = try await RunningVault()
        try await vault.start()
        defer { vault.stop() }
        let scan = try Binaries.run("/usr/bin/sslscan", ["--no-colour", "--no-fallback", "--no-renegotiation",
                                                         "--no-compression", "--no-heartbleed", "--no-check-certificate",
                                                         "127.0.0.1:\(vault.port)"])
        #expect(scan.status == 0, "\(scan.stderr)")
        let accepted = scan.stdout.split(separator: "\n").filter { $0.hasPrefix("Accepted") || $0.hasPrefix("Preferred") }
            .map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        let versions = Set(accepted.map { $0[1] })
        #expect(versions == ["TLSv1.3", "TLSv1.2"], "\(scan.stdout)")
        let tls12 = accepted.filter { $0[1] == "TLSv1.2" }.map { $0[4] }
        #expect(!tls12.isEmpty)
        for suite in tls12 {
            #expect(suite.hasPrefix("ECDHE-") && (suite.contains("GCM") || suite.contains("CHACHA20")),
                    "TLS 1.2 offers \(suite)")
        }
        #expect(accepted.first { $0[0] == "Preferred" && $0[1] == "TLSv1.3" } != nil, "TLS 1.3 is preferred")
    }
}

@Suite("authorisation matrix: every role, own and other force, every action", .serialized)
struct AuthorisationMatrixTests {
    /// The expected answer for each role and action on force wmp, held for wmp ("own") or only for gmp ("other").
    /// nil = allowed (2xx); otherwise the refusal code (403).
    static func expected(role: String, own: Bool, action: String) -> String? {
        let allowed: Set<String> = switch action {
        case "upload": ["uploader"]
        case "read-current": ["analyst"]
        case "read-archived": []
        case "list-extracts": ["uploader", "analyst", "custodian", "ops", "auditor"]
        case "list-archives": ["custodian", "ops"]
        case "manage-use-cases": ["custodian"]
        default: []
        }
        if own {
            if allowed.contains(role) { return nil }
            if action == "read-archived", role == "analyst" { return "archived_extract" }
            return "role_required"
        }
        // Holding a role only for another force is a cross-force attempt when that role is what the action needs.
        let needs: Set<String> = switch action {
        case "upload": ["uploader"]
        case "read-current", "read-archived": ["analyst"]
        case "list-extracts": ["uploader", "analyst", "custodian", "ops", "auditor"]
        case "list-archives": ["custodian", "ops"]
        case "manage-use-cases": ["custodian"]
        default: []
        }
        return needs.contains(role) ? "other_force" : "role_required"
    }

    @Test("each cell answers as expected", arguments: TestBackend.all)
    func matrix(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let week1 = try vault.directory.write("w1.csv", Array("week,1\n".utf8))
        let week2 = try vault.directory.write("w2.csv", Array("week,2\n".utf8))
        let archivedID = try #require(try vault.upload("wmp", "crime", file: week1, as: "ingest-wmp").json["extract"] as? String)
        #expect(try vault.upload("wmp", "crime", file: week2, as: "ingest-wmp").status == 201)
        #expect(try vault.putUseCase("wmp", "matrix", datasets: ["crime"],
                                     principals: ["analyst-own", "analyst-other"], as: "custodian-wmp").status == 200)
        var failures: [String] = []
        var cells = 0
        for role in MatrixRoles.matrix {
            for own in [true, false] {
                let principal = "\(role)-\(own ? "own" : "other")"
                for action in ["upload", "read-current", "read-archived", "list-extracts", "list-archives",
                               "manage-use-cases"] {
                    let reply: RunningVault.Reply
                    switch action {
                    case "upload": reply = try vault.upload("wmp", "matrix-uploads", file: week1, as: principal)
                    case "read-current":
                        reply = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=matrix"], as: principal)
                    case "read-archived":
                        reply = try vault.curl(["\(vault.base)/wmp/extracts/\(archivedID)?use_case=matrix"], as: principal)
                    case "list-extracts": reply = try vault.curl(["\(vault.base)/wmp/datasets/crime/extracts"], as: principal)
                    case "list-archives": reply = try vault.curl(["\(vault.base)/wmp/archives"], as: principal)
                    default:
                        reply = try vault.putUseCase("wmp", "by-\(principal)", datasets: ["crime"],
                                                     principals: ["analyst-own"], as: principal)
                    }
                    cells += 1
                    let want = Self.expected(role: role, own: own, action: action)
                    let ok = want == nil ? (200..<300).contains(reply.status)
                                         : (reply.status == 403 && reply.errorCode == want)
                    if !ok { failures.append("\(principal) \(action): got \(reply.status) \(reply.errorCode ?? "") "
                                                + "want \(want ?? "2xx")") }
                }
            }
        }
        print("authorisation matrix: \(cells) cells checked")
        #expect(cells == 60)
        #expect(failures.isEmpty, "\(failures.joined(separator: "; "))")
    } }
}

@Suite("the vault CLI against vaultd", .serialized)
struct CLIServerTests {
    @Test("login, upload, use case, read, listings and a refused cross-force read, with the real binaries",
          arguments: TestBackend.all)
    func workflow(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let home = vault.directory.file("home")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        func cli(_ arguments: [String], as principal: String) throws -> CommandResult {
            try Binaries.run("vault", arguments, environment: [
                "HOME": home, "VAULT_ADDR": "https://127.0.0.1:\(vault.port)", "VAULT_CACERT": vault.pki.caCertificate,
                "VAULT_TOKEN": vault.tokens[principal]!, "VAULT_PASSPHRASE": vault.passphrases["VAULT_PASSPHRASE_WMP"]!,
            ], currentDirectory: vault.directory.path)
        }
        let payload = testBytes(count: 300_000, seed: 11)
        _ = try vault.directory.write("extract.csv", payload)
        let uploaded = try cli(["upload", "--force", "wmp", "--dataset", "crime", "extract.csv", "--json"], as: "ingest-wmp")
        #expect(uploaded.status == 0, "\(uploaded.stderr)")
        #expect(uploaded.stdout.contains("\"state\":\"current\""))

        let put = try cli(["use-case", "put", "--force", "wmp", "--id", "serious-violence", "--description", "SV duty",
                           "--lawful-basis", "PCSC Act 2022 s.8", "--dataset", "crime", "--principal", "analyst-1"],
                          as: "custodian-wmp")
        #expect(put.status == 0, "\(put.stderr)")
        let listed = try cli(["use-case", "list", "--force", "wmp"], as: "custodian-wmp")
        #expect(listed.stdout.contains("serious-violence  datasets=crime  principals=analyst-1"))

        let read = try cli(["read", "--force", "wmp", "--dataset", "crime", "--use-case", "serious-violence",
                            "--out", "read.csv"], as: "analyst-1")
        #expect(read.status == 0, "\(read.stderr)")
        #expect(try vault.directory.read("read.csv") == payload)

        // Client-side encryption: the sealed file goes up, the analyst reads the plaintext.
        let encrypted = try vault.offline("encrypt", "wmp", ["--dataset", "crime", "--in", "extract.csv", "--out",
                                                             "extract.vault"])
        #expect(encrypted.status == 0, "\(encrypted.stderr)")
        let sealed = try cli(["upload", "--force", "wmp", "--dataset", "crime", "extract.vault", "--json"], as: "ingest-wmp")
        #expect(sealed.stdout.contains("\"source\":\"sealed\""), "\(sealed.stderr)")
        #expect(try cli(["read", "--force", "wmp", "--dataset", "crime", "--use-case", "serious-violence",
                         "--out", "read2.csv"], as: "analyst-1").status == 0)
        #expect(try vault.directory.read("read2.csv") == payload)

        let archives = try cli(["archives", "list", "--force", "wmp", "--json"], as: "ops-1")
        #expect(archives.status == 0)
        #expect(archives.stdout.contains("\"state\":\"archived\""))
        let extracts = try cli(["extracts", "list", "--force", "wmp", "--dataset", "crime"], as: "analyst-1")
        #expect(extracts.stdout.contains("current"))

        // Refused: another force's analyst (exit 9, one line, no output file).
        let refused = try cli(["read", "--force", "wmp", "--dataset", "crime", "--use-case", "serious-violence",
                               "--out", "stolen.csv"], as: "analyst-gmp")
        #expect(refused.status == 9)
        #expect(refused.stderr.contains("other_force"))
        #expect(refused.stderr.split(separator: "\n").count == 1)
        #expect(!vault.directory.exists("stolen.csv"))

        #expect(try cli(["use-case", "revoke", "--force", "wmp", "--id", "serious-violence"], as: "custodian-wmp").status == 0)
        let revoked = try cli(["read", "--force", "wmp", "--dataset", "crime", "--use-case", "serious-violence",
                               "--out", "late.csv"], as: "analyst-1")
        #expect(revoked.status == 9)
        #expect(revoked.stderr.contains("use_case_revoked"))
        // Putting it again does not reinstate it, and the custodian is told so.
        let again = try cli(["use-case", "put", "--force", "wmp", "--id", "serious-violence", "--description", "SV",
                             "--lawful-basis", "PCSC Act 2022 s.8", "--dataset", "crime", "--principal", "analyst-1"],
                            as: "custodian-wmp")
        #expect(again.status == 0 && again.stdout.contains("stays revoked"), "\(again.stdout)")

        // `vault login` remembers the server, CA and token (in a 0600 file) for later commands.
        let login = try Binaries.run("vault", ["login", "--server", "https://127.0.0.1:\(vault.port)", "--ca-file",
                                               vault.pki.caCertificate],
                                     environment: ["HOME": home, "VAULT_TOKEN": vault.tokens["ops-1"]!])
        #expect(login.status == 0, "\(login.stderr)")
        let saved = try String(contentsOfFile: "\(home)/.config/vault/cli.json", encoding: .utf8)
        #expect(!saved.contains(vault.tokens["ops-1"]!))
        let afterLogin = try Binaries.run("vault", ["archives", "list", "--force", "wmp"], environment: ["HOME": home])
        #expect(afterLogin.status == 0, "\(afterLogin.stderr)")
        #expect(afterLogin.stdout.contains("archived"))
        let anonymous = try Binaries.run("vault", ["archives", "list", "--force", "wmp", "--server",
                                                   "https://127.0.0.1:\(vault.port)", "--ca-file", vault.pki.caCertificate],
                                         environment: ["HOME": vault.directory.file("nohome")])
        #expect(anonymous.status == 10)

        // Retention: a custodian sets it, everyone of the force lists it; out of range is a one-line usage error.
        let retention = try cli(["datasets", "put", "--force", "wmp", "--dataset", "crime", "--retention-days", "90",
                                 "--description", "recorded crime"], as: "custodian-wmp")
        #expect(retention.status == 0 && retention.stdout.contains("archives kept 90 days"), "\(retention.stderr)")
        let datasets = try cli(["datasets", "list", "--force", "wmp"], as: "analyst-1")
        #expect(datasets.stdout.contains("crime  retention 90 days  recorded crime"), "\(datasets.stderr)")
        let zero = try cli(["datasets", "put", "--force", "wmp", "--dataset", "crime", "--retention-days", "0"],
                           as: "custodian-wmp")
        #expect(zero.status == 6 && zero.stderr.split(separator: "\n").count == 1)
        #expect(try cli(["datasets", "put", "--force", "wmp", "--dataset", "crime", "--retention-days", "30"],
                        as: "analyst-1").status == 9)

        // Tokens: the analyst lists and revokes its own token; the next command with it is refused (exit 10).
        let tokens = try cli(["tokens", "list", "--json"], as: "analyst-1")
        #expect(tokens.status == 0, "\(tokens.stderr)")
        let mine = try (try JSONParser.parse(Array(tokens.stdout.utf8))["tokens"]?.arrayValue ?? [])
            .map(TokenDocument.init(json:))
        #expect(mine.count == 1 && mine.first?.principal == "analyst-1" && mine.first?.state == "active")
        #expect(!tokens.stdout.contains(vault.tokens["analyst-1"]!))
        let revokedToken = try cli(["tokens", "revoke", mine[0].id], as: "analyst-1")
        #expect(revokedToken.status == 0 && revokedToken.stdout.contains("revoked \(mine[0].id)"))
        #expect(try cli(["extracts", "list", "--force", "wmp", "--dataset", "crime"], as: "analyst-1").status == 10)
        // On the host, the operator sees it revoked.
        let hostList = try Binaries.run("vaultd", ["token", "list", "--config", vault.directory.file("vaultd.toml")],
                                        environment: TestStorage.environment)
        #expect(hostList.stdout.contains("\(mine[0].id)  analyst-1  revoked"), "\(hostList.stderr)")
        let badTTL = try Binaries.run("vaultd", ["token", "create", "--config", vault.directory.file("vaultd.toml"),
                                                 "--principal", "analyst-1", "--ttl", "2y"],
                                      environment: TestStorage.environment)
        #expect(badTTL.status == 6 && badTTL.stderr.contains("token lifetime"))
    } }
}

@Suite("vaultd under damage and load", .serialized)
struct ServerRobustnessTests {
    func residentKiB(_ pid: Int32, _ field: String) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty } ?? "") ?? 0
    }

    @Test("an upload cut off mid-stream stores nothing; the previous extract stays current; vaultd keeps serving",
          arguments: TestBackend.all)
    func cutUpload(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let small = try vault.directory.write("small.csv", Array("current,1\n".utf8))
        #expect(try vault.upload("wmp", "crime", file: small, as: "ingest-wmp").status == 201)
        #expect(try vault.putUseCase("wmp", "uc", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        // Claim 50 MB, send 2 MB, hang up.
        let partial = try vault.directory.write("partial.bin", testBytes(count: 2 << 20))
        let cut = try Binaries.run("/bin/sh", ["-c", """
            ( printf 'PUT /v1/forces/wmp/datasets/crime/extracts HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\
            Authorization: Bearer \(vault.tokens["ingest-wmp"]!)\\r\\nContent-Length: 50000000\\r\\n\\r\\n'; \
            cat \(partial); sleep 1 ) | timeout -s KILL 20 openssl s_client -quiet -no_ign_eof -connect 127.0.0.1:\(vault.port) \
            -CAfile \(vault.pki.caCertificate) >/dev/null 2>&1; true
            """])
        #expect(cut.status == 0)
        try await Task.sleep(for: .milliseconds(500))
        let read = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=uc"], as: "analyst-1")
        #expect(read.status == 200)
        #expect(read.text == "current,1\n")
        let blobs = try await vault.blobKeys()
        #expect(blobs.count == 1, "\(blobs)")
        let listed = try vault.curl(["\(vault.base)/wmp/datasets/crime/extracts"], as: "ops-1")
        #expect((listed.json["extracts"] as? [Any])?.count == 1)
    } }

    @Test("a blob altered on disk: the read fails with an integrity error or an aborted connection, never a clean end",
          arguments: TestBackend.all)
    func alteredBlob(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let file = try vault.directory.write("big.csv", testBytes(count: 5 << 20, seed: 5))
        let uploaded = try vault.upload("wmp", "crime", file: file, as: "ingest-wmp")
        let id = try #require(uploaded.json["extract"] as? String)
        #expect(try vault.putUseCase("wmp", "uc", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        try await vault.tamperBlob(id, at: 3 << 20)
        let read = try vault.curl(["\(vault.base)/wmp/datasets/crime/current?use_case=uc"], as: "analyst-1")
        // The headers and the chunks before the damage may have gone out; the transfer must not complete.
        #expect(read.curlStatus != 0, "curl saw a clean end: status \(read.status), \(read.body.count) bytes")
        #expect(read.body.count < 5 << 20)
        // A range wholly before the damage still reads; vaultd keeps serving.
        let early = try vault.curl(["-H", "Range: bytes=0-999", "\(vault.base)/wmp/datasets/crime/current?use_case=uc"],
                                   as: "analyst-1")
        #expect(early.status == 206)
        #expect(early.body == Array(testBytes(count: 5 << 20, seed: 5)[0..<1000]))
    } }

    @Test("a sealed file for another force is refused over HTTP and stores nothing", arguments: TestBackend.all)
    func sealedForOtherForce(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        _ = try vault.directory.write("x.csv", Array("a\n".utf8))
        #expect(try vault.offline("encrypt", "gmp", ["--dataset", "crime", "--in", "x.csv", "--out", "gmp.vault"])
                    .status == 0)
        let reply = try vault.upload("wmp", "crime", file: vault.directory.file("gmp.vault"), as: "ingest-wmp", sealed: true)
        #expect(reply.status == 400)
        #expect(reply.errorCode == "wrong_force")
        let listed = try vault.curl(["\(vault.base)/wmp/datasets/crime/extracts"], as: "ops-1")
        #expect((listed.json["extracts"] as? [Any])?.isEmpty == true)
    } }

    @Test("a 200 MiB upload streams: vaultd's resident memory grows far less than the file", arguments: TestBackend.all)
    func streamingMemory(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let path = vault.directory.file("large.bin")
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        let block = Data(testBytes(count: 1 << 20, seed: 77))
        for _ in 0..<200 { handle.write(block) }
        try handle.close()
        let pid = vault.process.processIdentifier
        let baseline = residentKiB(pid, "VmRSS")
        let uploaded = try vault.upload("wmp", "crime", file: path, as: "ingest-wmp")
        #expect(uploaded.status == 201)
        #expect(uploaded.json["plaintext_size"] as? Int == 200 << 20)
        let peak = residentKiB(pid, "VmHWM")
        let growthMiB = (peak - baseline) / 1024
        print("streaming upload of 200 MiB: vaultd resident \(baseline / 1024) MiB before, peak \(peak / 1024) MiB "
            + "(growth \(growthMiB) MiB)")
        #expect(baseline > 0 && peak > 0)
        #expect(growthMiB < 64, "vaultd grew by \(growthMiB) MiB for a 200 MiB upload")
    } }
}

@Suite("vaultd lifecycle", .serialized)
struct LifecycleTests {
    @Test("SIGTERM shuts vaultd down gracefully: exit 0, keyring locks released, data kept", arguments: TestBackend.all)
    func gracefulShutdown(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await RunningVault()
        let file = try vault.directory.write("x.csv", Array("kept,1\n".utf8))
        #expect(try vault.upload("wmp", "crime", file: file, as: "ingest-wmp").status == 201)
        // Stop the test-spawned daemon, then start one with a clean signal mask so SIGTERM can reach it.
        kill(vault.process.processIdentifier, SIGKILL)
        vault.process.waitUntilExit()
        var environment = vault.secrets
        environment["PATH"] = "/usr/bin:/bin"
        let pid = try Subprocess.spawn(Binaries.path("vaultd"), ["serve", "--config", vault.directory.file("vaultd.toml")],
                                       environment: environment, logPath: vault.directory.file("vaultd2.log"))
        var healthy = false
        for _ in 0..<200 where !healthy {
            healthy = (try? vault.curl(["https://127.0.0.1:\(vault.port)/healthz"]))?.status == 200
            if !healthy { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(healthy)
        let started = Date()
        let status = Subprocess.stop(pid, signal: SIGTERM)
        #expect(status == 0, "vaultd exited with \(status)")
        #expect(Date().timeIntervalSince(started) < 15)
        // The keyring locks are free again: an offline writer can take them. (A token has no lock file.)
        if !TestCustody.isPKCS11 {
            let rotate = try Binaries.run("vault", ["keyring", "rotate", "--keyring", "wmp.keyring"],
                                          environment: ["VAULT_PASSPHRASE": vault.passphrases["VAULT_PASSPHRASE_WMP"]!],
                                          currentDirectory: vault.directory.path)
            #expect(rotate.status == 0, "\(rotate.stderr)")
        }
        let current = try await vault.withCatalog {
            try await $0.extracts(force: try ForceID(force: "wmp"), dataset: nil, states: [.current])
        }
        #expect(current.count == 1)
    } }
}

