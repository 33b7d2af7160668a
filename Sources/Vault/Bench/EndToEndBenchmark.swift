import KeyCustody
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// `vault bench e2e`: upload and authorised read of a large extract through a real vaultd over TLS on loopback,
/// beside the in-process Cobblestone figure and `dd` writing (with fsync) and reading the same file on the same
/// disk, all in one run; and vaultd's peak resident memory.
public struct EndToEndBenchmark: Sendable {
    public struct Result: Sendable {
        public var payloadBytes: Int
        public var uploadMBps: Double
        public var readMBps: Double
        public var cobblestoneEncryptMBps: Double
        public var cobblestoneDecryptMBps: Double
        public var ddWriteMBps: Double
        public var ddReadMBps: Double
        public var vaultdPeakRSSMiB: Int
        public var vaultdBaselineRSSMiB: Int
        /// The same upload and read for a second force of the same vaultd whose keys are held by a local custody
        /// service (loopback mTLS; the read carries a signed read request).
        public var remoteUploadMBps: Double = 0
        public var remoteReadMBps: Double = 0
        public var scaleOut: ScaleOutResult?

        public var json: BenchJSON {
            func f(_ v: Double) -> BenchJSON { .figure(v, 1) }
            var members: [String: BenchJSON] = [
                "payload_bytes": .integer(Int64(payloadBytes)), "upload_mbps": f(uploadMBps), "read_mbps": f(readMBps),
                "cobblestone_encrypt_mbps": f(cobblestoneEncryptMBps),
                "cobblestone_decrypt_mbps": f(cobblestoneDecryptMBps), "dd_write_fsync_mbps": f(ddWriteMBps),
                "dd_read_mbps": f(ddReadMBps),
                "ratio_upload_vs_dd_write": .figure(uploadMBps / ddWriteMBps),
                "ratio_read_vs_dd_read": .figure(readMBps / ddReadMBps),
                "vaultd_peak_rss_mib": .integer(Int64(vaultdPeakRSSMiB)),
                "vaultd_baseline_rss_mib": .integer(Int64(vaultdBaselineRSSMiB)),
                "remote_upload_mbps": f(remoteUploadMBps), "remote_read_mbps": f(remoteReadMBps),
                "ratio_remote_read_vs_keyring_read": .figure(remoteReadMBps / readMBps),
                "ratio_remote_upload_vs_keyring_upload": .figure(remoteUploadMBps / uploadMBps),
            ]
            if let scaleOut { members["postgres_s3"] = scaleOut.json }
            return .object(members)
        }
    }

    /// The same upload and read through a vaultd on PostgreSQL and S3, beside a plain, unencrypted S3 PUT and GET of
    /// the same file with curl (SigV4, one stream each way), all in the same run.
    public struct ScaleOutResult: Sendable {
        public var uploadMBps: Double
        public var readMBps: Double
        public var s3PutMBps: Double
        public var s3GetMBps: Double
        public var vaultdPeakRSSMiB: Int
        public var vaultdBaselineRSSMiB: Int

        public var json: BenchJSON {
            func f(_ v: Double) -> BenchJSON { .figure(v, 1) }
            return .object([
                "upload_mbps": f(uploadMBps), "read_mbps": f(readMBps), "s3_put_mbps": f(s3PutMBps),
                "s3_get_mbps": f(s3GetMBps),
                "ratio_upload_vs_s3_put": .figure(uploadMBps / s3PutMBps),
                "ratio_read_vs_s3_get": .figure(readMBps / s3GetMBps),
                "vaultd_peak_rss_mib": .integer(Int64(vaultdPeakRSSMiB)),
                "vaultd_baseline_rss_mib": .integer(Int64(vaultdBaselineRSSMiB)),
            ])
        }
    }

    /// Where the scale-out run keeps its catalog and blobs (a scratch database and bucket: the bench writes there).
    public struct ScaleOut: Sendable {
        public var postgresURL: String
        public var s3: S3Settings

        public init(postgresURL: String, s3: S3Settings) {
            self.postgresURL = postgresURL
            self.s3 = s3
        }
    }

    public var payloadBytes: Int
    /// Where vaultd and the temporary files go (the disk being measured).
    public var workDirectory: String
    public var vaultdPath: String
    public var scaleOut: ScaleOut?

    public init(payloadBytes: Int, workDirectory: String, vaultdPath: String, scaleOut: ScaleOut? = nil) {
        self.payloadBytes = payloadBytes
        self.workDirectory = workDirectory
        self.vaultdPath = vaultdPath
        self.scaleOut = scaleOut
    }

    static func megabytesPerSecond(_ bytes: Int, _ seconds: Double) -> Double { Double(bytes) / 1e6 / seconds }

    public func run(logger: Logger, progress: (String) -> Void) async throws -> Result {
        let directory = "\(workDirectory)/vault-bench-\(getpid())"
        try FileBlobStore.makeDirectory(directory)
        defer { _ = try? Subprocess.run("rm", ["-rf", directory]) }

        progress("setting up a keyring, a throwaway PKI and vaultd in \(directory)...")
        let passphrase = Hex.encode(SecureRandom.bytes(count: 16))
        var passphraseBytes = Array(passphrase.utf8)
        _ = try KeyringCustody.create(at: "\(directory)/bench.keyring", force: try ForceID(force: "bench"),
                                      passphrase: SecureBytes(consuming: &passphraseBytes), parameters: .interactive,
                                      logger: logger)
        let pki = try DevelopmentPKI(directory: "\(directory)/tls")
        progress("starting a local custody service for the remote force rbench...")
        let service = try await LocalCustodyService.launch(force: try ForceID(force: "rbench"),
                                                           directory: "\(directory)/custody", vaultdPath: vaultdPath,
                                                           logger: logger)
        defer { service.kill() }
        let analyst = PrincipalSigningKey(principal: "bench")
        try await service.authorize(analyst, datasets: [try DatasetID(dataset: "bench")], useCase: "bench")
        let remoteTable = try service.remoteTable(copyingInto: directory)
        try DurableFile.write(Array("""
            [forces.bench]
            backend = "keyring"
            keyring = "bench.keyring"
            passphrase_env = "VAULT_BENCH_PASSPHRASE"

            """.utf8), to: "\(directory)/keys-keyring.toml")
        try DurableFile.write(try DurableFile.read("\(directory)/keys-keyring.toml", limit: 1 << 16) + Array(remoteTable.utf8),
                              to: "\(directory)/keys.toml")
        var result = try await withVaultd(directory: directory, name: "embedded", storage: "", pki: pki,
                                          passphrase: passphrase, catalog: .sqlite(path: "\(directory)/data/catalog.sqlite"),
                                          remoteForce: service.force, logger: logger)
        { client, pid in
            var result = try await measure(client: client, directory: directory, pid: pid, progress: progress)
            (result.remoteUploadMBps, result.remoteReadMBps) = try await measureRemote(
                client: client, force: service.force, analyst: analyst, directory: directory, progress: progress)
            return result
        }
        if let scaleOut {
            result.scaleOut = try await measureScaleOut(scaleOut, directory: directory, pki: pki, passphrase: passphrase,
                                                        logger: logger, progress: progress)
        }
        return result
    }

    /// Starts a vaultd on `directory`'s keyring with `storage` lines in its configuration, runs `body` with a client
    /// signed in as the bench principal, and stops it.
    private func withVaultd<T>(directory: String, name: String, storage: String, pki: DevelopmentPKI,
                               passphrase: String, catalog: CatalogLocation, environment: [String: String] = [:],
                               remoteForce: ForceID? = nil, logger: Logger,
                               _ body: (VaultClient, pid_t) async throws -> T) async throws -> T
    {
        let port = try freeLoopbackPort()
        let forces = [try ForceID(force: "bench")] + (remoteForce.map { [$0] } ?? [])
        let list = forces.map { "\"\($0)\"" }.joined(separator: ", ")
        try DurableFile.write(Array("""
            \(storage.split(separator: "\n").first { $0.hasPrefix("catalog") } ?? "")
            listen = "127.0.0.1:\(port)"
            data_dir = "data"
            custody = "\(remoteForce == nil ? "keys-keyring.toml" : "keys.toml")"
            [tls]
            certificate = "tls/server.pem"
            private_key = "tls/server.key"
            [[principals]]
            id = "bench"
            uploader = [\(list)]
            analyst = [\(list)]
            custodian = ["bench"]
            \(storage.split(separator: "\n").drop { !$0.hasPrefix("[blobs]") }.joined(separator: "\n"))
            """.utf8), to: "\(directory)/vaultd-\(name).toml")
        try FileBlobStore.makeDirectory("\(directory)/data")
        let benchForce = try ForceID(force: "bench")
        let bench = Principal(id: "bench", grants: [.uploader: Set(forces), .analyst: Set(forces),
                                                    .custodian: [benchForce]])
        let (tokenCatalog, pool) = try await Storage.openCatalog(catalog, logger: logger)
        let token: SecureBytes
        do {
            token = try await BearerToken.issue(for: bench, description: "bench", catalog: tokenCatalog)
            pool?.cancel()
        } catch {
            pool?.cancel()
            throw error
        }
        var variables = environment
        variables["VAULT_BENCH_PASSPHRASE"] = passphrase
        variables["PATH"] = "/usr/bin:/bin"
        let pid = try Subprocess.spawn(vaultdPath, ["serve", "--config", "\(directory)/vaultd-\(name).toml"],
                                       environment: variables, logPath: "\(directory)/vaultd-\(name).log")
        defer { Subprocess.stop(pid) }
        let configuration = ClientConfiguration(server: "https://127.0.0.1:\(port)", caFile: pki.caCertificate,
                                                token: token, certificate: nil, privateKey: nil)
        return try await VaultClient.with(configuration) { client in
            var ready = false
            for _ in 0..<200 where !ready {
                ready = (try? await client.get("/healthz")) != nil
                if !ready { try await Task.sleep(for: .milliseconds(50)) }
            }
            guard ready else { throw VaultError(.io, "vaultd did not start (see \(directory)/vaultd-\(name).log)") }
            return try await body(client, pid)
        }
    }

    /// vaultd on PostgreSQL and S3, and curl's plain PUT and GET of the same file to the same bucket.
    private func measureScaleOut(_ scaleOut: ScaleOut, directory: String, pki: DevelopmentPKI, passphrase: String,
                                 logger: Logger, progress: (String) -> Void) async throws -> ScaleOutResult
    {
        let source = "\(directory)/extract.bin"
        let configuration = try scaleOut.s3.resolve()
        let store = S3BlobStore(configuration: configuration)
        try await store.check()
        // curl reads the credentials from a private config file, never from its command line.
        let curlConfig = "\(directory)/curl-s3.conf"
        var curlLines = Array("user = \"\(configuration.credentials.accessKeyID):".utf8)
        configuration.credentials.secretAccessKey.withUnsafeBytes { curlLines.append(contentsOf: $0) }
        curlLines += Array("\"\naws-sigv4 = \"aws:amz:\(configuration.region):s3\"\n".utf8)
        defer { secureZero(&curlLines) }
        try DurableFile.write(curlLines, to: curlConfig, permissions: 0o600)
        let object = "\(configuration.endpoint)/\(configuration.bucket)/\(configuration.prefix)plain-\(getpid()).bin"
        progress("baseline: plain S3 PUT of \(payloadBytes >> 20) MiB with curl (SigV4, unencrypted)...")
        var start = CryptoBenchmark.now()
        let put = try Subprocess.run("curl", ["-s", "-f", "-K", curlConfig, "-T", source, object, "-o", "/dev/null"])
        let putSeconds = CryptoBenchmark.now() - start
        guard put.status == 0 else { throw VaultError(.blobStoreUnavailable, "curl's S3 PUT failed") }
        progress("baseline: plain S3 GET of the same object with curl...")
        start = CryptoBenchmark.now()
        let get = try Subprocess.run("curl", ["-s", "-f", "-K", curlConfig, object, "-o", "\(directory)/plain.bin"])
        let getSeconds = CryptoBenchmark.now() - start
        guard get.status == 0 else { throw VaultError(.blobStoreUnavailable, "curl's S3 GET failed") }
        _ = try? Subprocess.run("curl", ["-s", "-K", curlConfig, "-X", "DELETE", object, "-o", "/dev/null"])
        _ = try? Subprocess.run("rm", ["-f", "\(directory)/plain.bin", curlConfig])

        let storage = """
            catalog = "\(scaleOut.postgresURL)"
            [blobs]
            url = "\(scaleOut.s3.url)"
            endpoint = "\(scaleOut.s3.endpoint)"
            region = "\(scaleOut.s3.region)"
            part_size_mib = \(scaleOut.s3.partSize >> 20)
            upload_concurrency = \(scaleOut.s3.concurrency)
            """ + (scaleOut.s3.credentialsFile.map { "\ncredentials_file = \"\($0)\"" } ?? "")
        var environment: [String: String] = [:]
        for name in ["PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        return try await withVaultd(directory: directory, name: "postgres-s3", storage: storage, pki: pki,
                                    passphrase: passphrase, catalog: .postgres(url: scaleOut.postgresURL),
                                    environment: environment, logger: logger)
        { client, pid in
            let force = try ForceID(force: "bench")
            // A dataset of its own: an earlier run's extract in the same scratch catalog (sealed under that run's
            // throwaway keyring) is never archived by this one.
            let dataset = try DatasetID(dataset: "bench-\(Hex.encode(SecureRandom.bytes(count: 4)))")
            let baseline = Self.residentMiB(pid, "VmRSS")
            progress("upload of \(payloadBytes >> 20) MiB through vaultd on PostgreSQL and S3...")
            var start = CryptoBenchmark.now()
            _ = try await client.upload(force: force, dataset: dataset, path: source)
            let uploadSeconds = CryptoBenchmark.now() - start
            _ = try await client.put("/v1/forces/bench/use-cases/bench", json: .object([
                "description": .string("benchmark"), "lawful_basis": .string("benchmark"),
                "datasets": .array([.string(dataset.rawValue)]), "principals": .array([.string("bench")]),
            ]))
            progress("authorised read of \(payloadBytes >> 20) MiB through vaultd on PostgreSQL and S3...")
            let output = "\(directory)/read-s3.bin"
            start = CryptoBenchmark.now()
            let (bytes, _) = try await client.read(force: force, dataset: dataset, extract: nil, useCase: "bench",
                                                   outputPath: output, overwrite: false)
            let readSeconds = CryptoBenchmark.now() - start
            let peak = Self.residentMiB(pid, "VmHWM")
            guard bytes == UInt64(payloadBytes), try Subprocess.run("cmp", ["-s", source, output]).status == 0 else {
                throw VaultError(.integrityFailure, "the extract read back from S3 differs from the one uploaded")
            }
            _ = try? Subprocess.run("rm", ["-f", output])
            return ScaleOutResult(
                uploadMBps: Self.megabytesPerSecond(payloadBytes, uploadSeconds),
                readMBps: Self.megabytesPerSecond(payloadBytes, readSeconds),
                s3PutMBps: Self.megabytesPerSecond(payloadBytes, putSeconds),
                s3GetMBps: Self.megabytesPerSecond(payloadBytes, getSeconds), vaultdPeakRSSMiB: peak,
                vaultdBaselineRSSMiB: baseline)
        }
    }

    private func measure(client: VaultClient, directory: String, pid: pid_t, progress: (String) -> Void) async throws
        -> Result
    {
        let force = try ForceID(force: "bench")
        let dataset = try DatasetID(dataset: "bench")

        let mib = payloadBytes >> 20
        progress("baseline: dd writing \(mib) MiB with conv=fsync, then reading it back...")
        let source = "\(directory)/extract.bin"
        var start = CryptoBenchmark.now()
        guard try Subprocess.run("dd", ["if=/dev/zero", "of=\(source)", "bs=1M", "count=\(mib)", "conv=fsync",
                                        "status=none"]).status == 0
        else { throw VaultError(.io, "dd failed") }
        let ddWriteSeconds = CryptoBenchmark.now() - start
        start = CryptoBenchmark.now()
        _ = try Subprocess.run("dd", ["if=\(source)", "of=/dev/null", "bs=1M", "status=none"])
        let ddReadSeconds = CryptoBenchmark.now() - start

        let baseline = Self.residentMiB(pid, "VmRSS")
        progress("upload of \(mib) MiB through vaultd over TLS...")
        start = CryptoBenchmark.now()
        _ = try await client.upload(force: force, dataset: dataset, path: source)
        let uploadSeconds = CryptoBenchmark.now() - start
        _ = try await client.put("/v1/forces/bench/use-cases/bench", json: .object([
            "description": .string("benchmark"), "lawful_basis": .string("benchmark"),
            "datasets": .array([.string("bench")]), "principals": .array([.string("bench")]),
        ]))
        progress("authorised read of \(mib) MiB through vaultd over TLS...")
        start = CryptoBenchmark.now()
        let (bytes, _) = try await client.read(force: force, dataset: dataset, extract: nil, useCase: "bench",
                                               outputPath: "\(directory)/read.bin", overwrite: false)
        let readSeconds = CryptoBenchmark.now() - start
        let peak = Self.residentMiB(pid, "VmHWM")
        guard bytes == UInt64(payloadBytes),
            try Subprocess.run("cmp", ["-s", source, "\(directory)/read.bin"]).status == 0
        else { throw VaultError(.integrityFailure, "the extract read back differs from the one uploaded") }

        progress("in-process Cobblestone-256 over 256 MiB for comparison...")
        let (encrypt, decrypt) = try CryptoBenchmark.CobblestoneFixture(payloadBytes: 256 << 20).measure()
        return Result(
            payloadBytes: payloadBytes, uploadMBps: Self.megabytesPerSecond(payloadBytes, uploadSeconds),
            readMBps: Self.megabytesPerSecond(payloadBytes, readSeconds), cobblestoneEncryptMBps: encrypt * 1000,
            cobblestoneDecryptMBps: decrypt * 1000, ddWriteMBps: Self.megabytesPerSecond(payloadBytes, ddWriteSeconds),
            ddReadMBps: Self.megabytesPerSecond(payloadBytes, ddReadSeconds), vaultdPeakRSSMiB: peak,
            vaultdBaselineRSSMiB: baseline, scaleOut: nil)
    }

    /// The upload and the signed read of the same payload for the remote force (its use case authored at custody).
    private func measureRemote(client: VaultClient, force: ForceID, analyst: PrincipalSigningKey, directory: String,
                               progress: (String) -> Void) async throws -> (upload: Double, read: Double)
    {
        let dataset = try DatasetID(dataset: "bench")
        let source = "\(directory)/extract.bin"
        let mib = payloadBytes >> 20
        progress("upload of \(mib) MiB for the remote force (data key from its custody service)...")
        var start = CryptoBenchmark.now()
        _ = try await client.upload(force: force, dataset: dataset, path: source)
        let uploadSeconds = CryptoBenchmark.now() - start
        progress("signed read of \(mib) MiB for the remote force (unwrap at its custody service)...")
        let signed = SignedReadRequest(signing: ReadRequest(
            force: force, dataset: dataset, principal: analyst.principal, purpose: .useCaseRead, useCase: "bench",
            issued: currentUnixTime()), with: analyst.key)
        start = CryptoBenchmark.now()
        let (bytes, _) = try await client.read(force: force, dataset: dataset, extract: nil, useCase: "bench",
                                               outputPath: "\(directory)/read-remote.bin", overwrite: false,
                                               signedRequest: signed)
        let readSeconds = CryptoBenchmark.now() - start
        guard bytes == UInt64(payloadBytes),
            try Subprocess.run("cmp", ["-s", source, "\(directory)/read-remote.bin"]).status == 0
        else { throw VaultError(.integrityFailure, "the remote force's extract read back differs from the one uploaded") }
        return (Self.megabytesPerSecond(payloadBytes, uploadSeconds), Self.megabytesPerSecond(payloadBytes, readSeconds))
    }

    static func residentMiB(_ pid: pid_t, _ field: String) -> Int {
        guard let bytes = try? DurableFile.read("/proc/\(pid)/status", limit: 1 << 16) else { return 0 }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return 0 }
        return (Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty } ?? "") ?? 0) / 1024
    }
}
