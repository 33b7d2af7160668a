import Foundation
import KeyCustody
import Logging
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// `vault bench e2e`: uploads and authorised reads of a large extract through a real vaultd over TLS on loopback,
/// each beside a plain tool doing the same transfer in the same run:
/// - the upload beside `dd conv=fsync` writing the same file (embedded) or curl's plain S3 PUT (PostgreSQL + S3);
/// - the read beside curl downloading the same file over HTTPS from `openssl s_server -WWW` with vaultd's
///   certificate (embedded) or curl's plain S3 GET (PostgreSQL + S3).
/// Every transfer is made by curl, so the client is the same on both sides and only the server differs. Then
/// `concurrency` reads at once, while `/healthz` is timed every 20 ms and vaultd's peak resident memory is watched.
public struct EndToEndBenchmark: Sendable {
    /// The figures of one vaultd (one storage).
    public struct Transfers: Sendable {
        /// `embedded` or `postgres_s3`.
        public var storage: String
        public var uploadMBps: Double
        public var readMBps: Double
        public var idleRSSMiB: Double
        /// Peak resident memory during the upload, over the resident memory just before it.
        public var uploadRSSGrowthMiB: Double
        public var concurrentReads: Int
        /// All concurrent reads' bytes over the time from the first start to the last end.
        public var concurrentReadMBps: Double
        public var concurrentRSSGrowthMiB: Double
        public var healthzIdle: LatencyRecorder
        public var healthzUnderLoad: LatencyRecorder
        public var healthzFailures: Int

        var json: BenchJSON {
            func ms(_ seconds: Double) -> BenchJSON { .figure(seconds * 1000) }
            return .object([
                "upload_mbps": .figure(uploadMBps, 1), "read_mbps": .figure(readMBps, 1),
                "idle_rss_mib": .figure(idleRSSMiB, 1), "upload_rss_growth_mib": .figure(uploadRSSGrowthMiB, 1),
                "concurrent_reads": .integer(Int64(concurrentReads)),
                "concurrent_read_mbps": .figure(concurrentReadMBps, 1),
                "concurrent_rss_growth_mib": .figure(concurrentRSSGrowthMiB, 1),
                "healthz_idle_p50_ms": ms(healthzIdle.p50), "healthz_idle_p99_ms": ms(healthzIdle.p99),
                "healthz_load_p50_ms": ms(healthzUnderLoad.p50), "healthz_load_p99_ms": ms(healthzUnderLoad.p99),
                "healthz_load_max_ms": ms(healthzUnderLoad.max),
                "healthz_load_samples": .integer(Int64(healthzUnderLoad.count)),
                "healthz_failures": .integer(Int64(healthzFailures)),
            ])
        }

        /// Memory and latency under load, judged against DESIGN section 10 (the same targets on both storages).
        func loadFigures(prefix: String, label: String, payloadMiB: Int) -> [BenchFigure] {
            [
                BenchFigure(key: "\(prefix)_upload_rss_growth", title: "\(label): vaultd memory growth, \(payloadMiB) MiB "
                            + "upload", unit: "MiB", measured: uploadRSSGrowthMiB, baselineTitle: "idle vaultd",
                            baseline: idleRSSMiB, target: .atMost(64)),
                BenchFigure(key: "\(prefix)_reads_rss_growth", title: "\(label): vaultd memory growth, "
                            + "\(concurrentReads) concurrent \(payloadMiB) MiB reads", unit: "MiB",
                            measured: concurrentRSSGrowthMiB, baselineTitle: "idle vaultd", baseline: idleRSSMiB,
                            target: .atMost(64)),
                BenchFigure(key: "\(prefix)_healthz_p99", title: "\(label): /healthz p99 during \(concurrentReads) "
                            + "reads", unit: "ms", measured: healthzUnderLoad.p99 * 1000,
                            baselineTitle: "idle /healthz p99", baseline: healthzIdle.p99 * 1000, target: .atMost(50)),
            ]
        }
    }

    public struct Result: Sendable {
        public var payloadBytes: Int
        public var ddWriteMBps: Double
        public var ddReadMBps: Double
        /// curl downloading the same file from `openssl s_server -WWW` (same certificate, same loopback).
        public var httpsDownloadMBps: Double
        public var embedded: Transfers
        public var cobblestoneEncryptMBps: Double
        public var cobblestoneDecryptMBps: Double
        /// The same upload and read for a second force of the same vaultd whose keys are held by a local custody
        /// service (loopback mTLS; the read carries a signed read request), through the vault's own client.
        public var remoteUploadMBps: Double = 0
        public var remoteReadMBps: Double = 0
        public var scaleOut: ScaleOutResult?

        public var figures: [BenchFigure] {
            let mib = payloadBytes >> 20
            var figures = [
                BenchFigure(key: "embedded_upload", title: "embedded upload of \(mib) MiB over TLS", unit: "MB/s",
                            measured: embedded.uploadMBps, baselineTitle: "dd conv=fsync", baseline: ddWriteMBps,
                            target: .ratioAtLeast(0.8)),
                BenchFigure(key: "embedded_read", title: "embedded read of \(mib) MiB over TLS", unit: "MB/s",
                            measured: embedded.readMBps, baselineTitle: "plain HTTPS download (openssl s_server, curl)",
                            baseline: httpsDownloadMBps, target: .ratioAtLeast(0.8)),
            ] + embedded.loadFigures(prefix: "embedded", label: "embedded", payloadMiB: mib)
            if let scaleOut {
                figures += [
                    BenchFigure(key: "postgres_s3_upload", title: "PostgreSQL + S3 upload of \(mib) MiB", unit: "MB/s",
                                measured: scaleOut.transfers.uploadMBps, baselineTitle: "plain S3 PUT (curl)",
                                baseline: scaleOut.s3PutMBps, target: .ratioAtLeast(1.0)),
                    BenchFigure(key: "postgres_s3_read", title: "PostgreSQL + S3 read of \(mib) MiB", unit: "MB/s",
                                measured: scaleOut.transfers.readMBps, baselineTitle: "plain S3 GET (curl)",
                                baseline: scaleOut.s3GetMBps, target: .ratioAtLeast(1.0)),
                ] + scaleOut.transfers.loadFigures(prefix: "postgres_s3", label: "PostgreSQL + S3", payloadMiB: mib)
            }
            return figures
        }

        public var json: BenchJSON {
            func f(_ v: Double) -> BenchJSON { .figure(v, 1) }
            var members: [String: BenchJSON] = [
                "payload_bytes": .integer(Int64(payloadBytes)), "dd_write_fsync_mbps": f(ddWriteMBps),
                "dd_read_mbps": f(ddReadMBps), "https_download_mbps": f(httpsDownloadMBps),
                "embedded": embedded.json,
                "cobblestone_encrypt_mbps": f(cobblestoneEncryptMBps),
                "cobblestone_decrypt_mbps": f(cobblestoneDecryptMBps),
                "remote_upload_mbps": f(remoteUploadMBps), "remote_read_mbps": f(remoteReadMBps),
                "figures": .array(figures.map(\.json)),
            ]
            if let scaleOut { members["postgres_s3"] = scaleOut.json }
            return .object(members)
        }
    }

    /// The same transfers through a vaultd on PostgreSQL and S3, beside a plain, unencrypted S3 PUT and GET of the
    /// same file with curl (SigV4, one stream each way), all in the same run.
    public struct ScaleOutResult: Sendable {
        public var s3PutMBps: Double
        public var s3GetMBps: Double
        public var transfers: Transfers

        public var json: BenchJSON {
            .object(["s3_put_mbps": .figure(s3PutMBps, 1), "s3_get_mbps": .figure(s3GetMBps, 1),
                     "vaultd": transfers.json])
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
    /// How many reads run at once for the memory and latency figures.
    public var concurrency: Int
    /// Where vaultd and the temporary files go (the disk being measured).
    public var workDirectory: String
    public var vaultdPath: String
    public var scaleOut: ScaleOut?

    public init(payloadBytes: Int, concurrency: Int = 8, workDirectory: String, vaultdPath: String,
                scaleOut: ScaleOut? = nil)
    {
        self.payloadBytes = payloadBytes
        self.concurrency = concurrency
        self.workDirectory = workDirectory
        self.vaultdPath = vaultdPath
        self.scaleOut = scaleOut
    }

    static func megabytesPerSecond(_ bytes: Int, _ seconds: Double) -> Double { Double(bytes) / 1e6 / seconds }

    public func run(logger: Logger, progress: (String) -> Void) async throws -> Result {
        // curl runs on threads of its own: up to `concurrency` transfers wait at once.
        let waiting = NIOThreadPool(numberOfThreads: concurrency + 2)
        waiting.start()
        do {
            let result = try await run(pool: waiting, logger: logger, progress: progress)
            try? await waiting.shutdownGracefully()
            return result
        } catch {
            try? await waiting.shutdownGracefully()
            throw error
        }
    }

    private func run(pool waiting: NIOThreadPool, logger: Logger, progress: (String) -> Void) async throws -> Result {
        let directory = DurableFile.absolutePath("\(workDirectory)/vault-bench-\(getpid())")
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

        let mib = payloadBytes >> 20
        progress("baseline: dd writing \(mib) MiB with conv=fsync, then reading it back...")
        let source = "\(directory)/extract.bin"
        var start = CryptoBenchmark.now()
        guard try Subprocess.run("dd", ["if=/dev/urandom", "of=\(source)", "bs=1M", "count=\(mib)", "status=none"])
            .status == 0
        else { throw VaultError(.io, "dd could not write the payload") }
        // The timed write: the same bytes again, with fsync (urandom's own speed is not the disk's).
        start = CryptoBenchmark.now()
        guard try Subprocess.run("dd", ["if=\(source)", "of=\(directory)/dd.bin", "bs=1M", "conv=fsync",
                                        "status=none"]).status == 0
        else { throw VaultError(.io, "dd failed") }
        let ddWriteSeconds = CryptoBenchmark.now() - start
        start = CryptoBenchmark.now()
        _ = try Subprocess.run("dd", ["if=\(directory)/dd.bin", "of=/dev/null", "bs=1M", "status=none"])
        let ddReadSeconds = CryptoBenchmark.now() - start
        _ = try? Subprocess.run("rm", ["-f", "\(directory)/dd.bin"])

        progress("baseline: curl downloading \(mib) MiB over HTTPS from openssl s_server -WWW (same certificate)...")
        let httpsSeconds = try await plainHTTPSDownload(source: source, directory: directory, pki: pki,
                                                        pool: waiting)

        var embedded: Transfers!
        var remote = (upload: 0.0, read: 0.0)
        try await withVaultd(directory: directory, name: "embedded", storage: "", pki: pki, passphrase: passphrase,
                             catalog: .sqlite(path: "\(directory)/data/catalog.sqlite"), remoteForce: service.force,
                             logger: logger)
        { vaultd in
            embedded = try await transfers(vaultd, storage: "embedded", dataset: try DatasetID(dataset: "bench"),
                                           source: source, directory: directory, pool: waiting, progress: progress)
            remote = try await measureRemote(client: vaultd.client, force: service.force, analyst: analyst,
                                             directory: directory, progress: progress)
        }
        progress("in-process Cobblestone-256 over 256 MiB for comparison...")
        let (encrypt, decrypt) = try CryptoBenchmark.CobblestoneFixture(payloadBytes: 256 << 20).measure()
        var result = Result(
            payloadBytes: payloadBytes, ddWriteMBps: Self.megabytesPerSecond(payloadBytes, ddWriteSeconds),
            ddReadMBps: Self.megabytesPerSecond(payloadBytes, ddReadSeconds),
            httpsDownloadMBps: Self.megabytesPerSecond(payloadBytes, httpsSeconds), embedded: embedded,
            cobblestoneEncryptMBps: encrypt * 1000, cobblestoneDecryptMBps: decrypt * 1000,
            remoteUploadMBps: remote.upload, remoteReadMBps: remote.read)
        if let scaleOut {
            result.scaleOut = try await measureScaleOut(scaleOut, source: source, directory: directory, pki: pki,
                                                        passphrase: passphrase, pool: waiting, logger: logger,
                                                        progress: progress)
        }
        return result
    }

    /// A vaultd started for the bench: a client signed in as the bench principal, its pid, and a curl configuration
    /// file carrying the same token (a private file, never a command-line argument).
    struct Vaultd {
        let client: VaultClient
        let pid: pid_t
        let base: String
        let curl: Curl
    }

    /// Starts a vaultd on `directory`'s keyring with `storage` lines in its configuration, runs `body`, and stops it.
    private func withVaultd(directory: String, name: String, storage: String, pki: DevelopmentPKI,
                            passphrase: String, catalog: CatalogLocation, environment: [String: String] = [:],
                            remoteForce: ForceID? = nil, logger: Logger,
                            _ body: (Vaultd) async throws -> Void) async throws
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
        let curlConfig = "\(directory)/curl-\(name).conf"
        var lines = Array("header = \"Authorization: Bearer ".utf8)
        token.withUnsafeBytes { lines.append(contentsOf: $0) }
        // No `Expect: 100-continue` before an upload (curl would wait a second for an answer vaultd does not send).
        lines += Array("\"\ncacert = \"\(pki.caCertificate)\"\nheader = \"Expect:\"\n".utf8)
        defer { secureZero(&lines) }
        try DurableFile.write(lines, to: curlConfig, permissions: 0o600)
        defer { unlink(curlConfig) }
        var variables = environment
        variables["VAULT_BENCH_PASSPHRASE"] = passphrase
        variables["PATH"] = "/usr/bin:/bin"
        let pid = try Subprocess.spawn(vaultdPath, ["serve", "--config", "\(directory)/vaultd-\(name).toml"],
                                       environment: variables, logPath: "\(directory)/vaultd-\(name).log")
        defer { Subprocess.stop(pid) }
        let base = "https://127.0.0.1:\(port)"
        let configuration = ClientConfiguration(server: base, caFile: pki.caCertificate, token: token,
                                                certificate: nil, privateKey: nil)
        try await VaultClient.with(configuration) { client in
            var ready = false
            for _ in 0..<200 where !ready {
                ready = (try? await client.get("/healthz")) != nil
                if !ready { try await Task.sleep(for: .milliseconds(50)) }
            }
            guard ready else { throw VaultError(.io, "vaultd did not start (see \(directory)/vaultd-\(name).log)") }
            try await body(Vaultd(client: client, pid: pid, base: base, curl: Curl(config: curlConfig)))
        }
    }

    /// The upload, one read, then `concurrency` reads at once with `/healthz` timed throughout, all with curl.
    private func transfers(_ vaultd: Vaultd, storage: String, dataset: DatasetID, source: String, directory: String,
                           pool: NIOThreadPool, progress: (String) -> Void) async throws -> Transfers
    {
        let mib = payloadBytes >> 20
        let label = storage == "embedded" ? "" : " (PostgreSQL + S3)"
        let idle = try await Self.sampleHealthz(vaultd.client, samples: 100)
        let idleRSS = Self.residentMiB(vaultd.pid, "VmRSS")
        progress("upload of \(mib) MiB through vaultd\(label) with curl...")
        Self.resetPeakResident(vaultd.pid)
        let upload = try await vaultd.curl.transfer(
            ["-X", "PUT", "-T", source, "-H", "Content-Type: application/octet-stream",
             "\(vaultd.base)/v1/forces/bench/datasets/\(dataset)/extracts"], output: "/dev/null", pool: pool)
        let uploadGrowth = Self.residentMiB(vaultd.pid, "VmHWM") - idleRSS
        _ = try await vaultd.client.put("/v1/forces/bench/use-cases/bench", json: .object([
            "description": .string("benchmark"), "lawful_basis": .string("benchmark"),
            "datasets": .array([.string(dataset.rawValue)]), "principals": .array([.string("bench")]),
        ]))
        let url = "\(vaultd.base)/v1/forces/bench/datasets/\(dataset)/current?use_case=bench"
        progress("authorised read of \(mib) MiB through vaultd\(label) with curl...")
        // Timed into /dev/null like its baseline: curl writing gigabytes to the page cache meets the kernel's
        // dirty-page throttling, which then depends on what the run wrote before, not on the server.
        let read = try await vaultd.curl.transfer([url], output: "/dev/null", pool: pool)
        guard read.bytes == payloadBytes else {
            throw VaultError(.integrityFailure, "the read\(label) returned \(read.bytes) of \(payloadBytes) bytes")
        }
        progress("the same read again into a file, untimed, compared with the uploaded file...")
        let output = "\(directory)/read-\(storage).bin"
        let check = try await vaultd.curl.transfer([url], output: output, pool: pool)
        guard check.bytes == payloadBytes, try Subprocess.run("cmp", ["-s", source, output]).status == 0 else {
            throw VaultError(.integrityFailure, "the extract read back\(label) differs from the one uploaded")
        }
        unlink(output)

        progress("\(concurrency) concurrent reads of \(mib) MiB\(label), /healthz timed every 20 ms...")
        let loadRSS = Self.residentMiB(vaultd.pid, "VmRSS")
        Self.resetPeakResident(vaultd.pid)
        let sampler = Task { try await Self.sampleHealthz(vaultd.client, samples: nil) }
        let loadStart = CryptoBenchmark.now()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        let read = try await vaultd.curl.transfer([url], output: "/dev/null", pool: pool)
                        guard read.bytes == payloadBytes else {
                            throw VaultError(.integrityFailure, "a concurrent read returned \(read.bytes) bytes")
                        }
                    }
                }
                try await group.waitForAll()
            }
        } catch {
            sampler.cancel()
            throw error
        }
        let loadSeconds = CryptoBenchmark.now() - loadStart
        sampler.cancel()
        let load = try await sampler.value
        return Transfers(
            storage: storage, uploadMBps: Self.megabytesPerSecond(payloadBytes, upload.seconds),
            readMBps: Self.megabytesPerSecond(payloadBytes, read.seconds), idleRSSMiB: idleRSS,
            uploadRSSGrowthMiB: uploadGrowth, concurrentReads: concurrency,
            concurrentReadMBps: Self.megabytesPerSecond(payloadBytes * concurrency, loadSeconds),
            concurrentRSSGrowthMiB: Self.residentMiB(vaultd.pid, "VmHWM") - loadRSS,
            healthzIdle: idle.latencies, healthzUnderLoad: load.latencies, healthzFailures: load.failures)
    }

    /// Times `GET /healthz` every 20 ms, `samples` times or until cancelled. A failed probe counts with its time.
    static func sampleHealthz(_ client: VaultClient, samples: Int?) async throws
        -> (latencies: LatencyRecorder, failures: Int)
    {
        var latencies = LatencyRecorder()
        var failures = 0
        while !Task.isCancelled, samples.map({ latencies.count < $0 }) ?? true {
            let start = CryptoBenchmark.now()
            if (try? await client.get("/healthz")) == nil { failures += 1 }
            latencies.record(seconds: CryptoBenchmark.now() - start)
            try? await Task.sleep(for: .milliseconds(20))
        }
        return (latencies, failures)
    }

    /// curl downloading `source` over HTTPS from `openssl s_server -WWW` on loopback with vaultd's certificate and
    /// key: what the same client gets from a plain TLS file server. Returns the seconds taken.
    private func plainHTTPSDownload(source: String, directory: String, pki: DevelopmentPKI, pool: NIOThreadPool)
        async throws -> Double
    {
        let port = try freeLoopbackPort()
        // s_server -WWW serves paths relative to its working directory.
        let pid = try Subprocess.spawn("/bin/sh", [
            "-c", "cd \"$1\" && exec openssl s_server -quiet -WWW -accept \"127.0.0.1:$2\" -cert \"$3\" -key \"$4\"",
            "sh", directory, String(port), pki.serverCertificate, pki.serverKey,
        ], environment: ["PATH": "/usr/bin:/bin"], logPath: "\(directory)/s_server.log")
        defer { Subprocess.stop(pid) }
        let curl = Curl(config: nil, caFile: pki.caCertificate)
        let url = "https://127.0.0.1:\(port)/\(source.split(separator: "/").last ?? "")"
        var ready = false
        for _ in 0..<100 where !ready {
            ready = (try? await curl.transfer(["-r", "0-0", url], output: "/dev/null", pool: pool)) != nil
            if !ready { try await Task.sleep(for: .milliseconds(50)) }
        }
        guard ready else { throw VaultError(.io, "openssl s_server did not start (see \(directory)/s_server.log)") }
        let download = try await curl.transfer([url], output: "/dev/null", pool: pool)
        guard download.bytes == payloadBytes else {
            throw VaultError(.integrityFailure, "the plain HTTPS download returned \(download.bytes) bytes")
        }
        return download.seconds
    }

    /// vaultd on PostgreSQL and S3, and curl's plain PUT and GET of the same file to the same bucket.
    private func measureScaleOut(_ scaleOut: ScaleOut, source: String, directory: String, pki: DevelopmentPKI,
                                 passphrase: String, pool: NIOThreadPool, logger: Logger,
                                 progress: (String) -> Void) async throws -> ScaleOutResult
    {
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
        defer { unlink(curlConfig) }
        let s3 = Curl(config: curlConfig)
        let object = "\(configuration.endpoint)/\(configuration.bucket)/\(configuration.prefix)plain-\(getpid()).bin"
        progress("baseline: plain S3 PUT of \(payloadBytes >> 20) MiB with curl (SigV4, unencrypted)...")
        let put = try await s3.transfer(["-T", source, object], output: "/dev/null", pool: pool)
        progress("baseline: plain S3 GET of the same object with curl...")
        let get = try await s3.transfer([object], output: "/dev/null", pool: pool)
        guard get.bytes == payloadBytes else { throw VaultError(.blobStoreUnavailable, "curl's S3 GET came back short") }
        _ = try? await s3.transfer(["-X", "DELETE", object], output: "/dev/null", pool: pool)

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
        var transfers: Transfers!
        try await withVaultd(directory: directory, name: "postgres-s3", storage: storage, pki: pki,
                             passphrase: passphrase, catalog: .postgres(url: scaleOut.postgresURL),
                             environment: environment, logger: logger)
        { vaultd in
            // A dataset of its own: an earlier run's extract in the same scratch catalog (sealed under that run's
            // throwaway keyring) is never archived by this one.
            let dataset = try DatasetID(dataset: "bench-\(Hex.encode(SecureRandom.bytes(count: 4)))")
            transfers = try await self.transfers(vaultd, storage: "postgres_s3", dataset: dataset, source: source,
                                                 directory: directory, pool: pool, progress: progress)
        }
        return ScaleOutResult(s3PutMBps: Self.megabytesPerSecond(payloadBytes, put.seconds),
                              s3GetMBps: Self.megabytesPerSecond(payloadBytes, get.seconds), transfers: transfers)
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
        unlink("\(directory)/read-remote.bin")
        return (Self.megabytesPerSecond(payloadBytes, uploadSeconds), Self.megabytesPerSecond(payloadBytes, readSeconds))
    }

    /// A field of `/proc/PID/status` (`VmRSS`, `VmHWM`) in MiB.
    static func residentMiB(_ pid: pid_t, _ field: String) -> Double {
        guard let bytes = try? DurableFile.read("/proc/\(pid)/status", limit: 1 << 16) else { return 0 }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return 0 }
        return Double(Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty } ?? "") ?? 0) / 1024
    }

    /// Resets the process's peak resident size (`VmHWM`) to its current one (`echo 5 > /proc/PID/clear_refs`), so
    /// the next peak is the next phase's alone.
    static func resetPeakResident(_ pid: pid_t) {
        let fd = open("/proc/\(pid)/clear_refs", O_WRONLY)
        guard fd >= 0 else { return }
        _ = write(fd, "5", 1)
        close(fd)
    }
}

/// curl as the bench's one HTTP client for timed transfers, with its options (a token, S3 credentials) in a private
/// configuration file.
struct Curl: Sendable {
    var config: String?
    var caFile: String?

    /// Runs one transfer (`arguments` name the URL and any upload), writing the body to `output`, on a thread of
    /// `pool`; fails unless curl succeeds with a 2xx answer. Returns the seconds taken and the bytes received.
    func transfer(_ arguments: [String], output: String, pool: NIOThreadPool) async throws
        -> (seconds: Double, bytes: Int)
    {
        var options = ["-s", "-S", "-f", "-o", output, "-w", "%{http_code} %{size_download}"]
        if let config { options += ["-K", config] }
        if let caFile { options += ["--cacert", caFile] }
        let all = options + arguments
        return try await pool.runIfActive {
            let start = CryptoBenchmark.now()
            let result = try Subprocess.run("curl", all)
            let seconds = CryptoBenchmark.now() - start
            let fields = String(decoding: result.stdout, as: UTF8.self).split(separator: " ")
            guard result.status == 0, fields.count == 2, fields[0].hasPrefix("2"), let bytes = Int(fields[1]) else {
                throw VaultError(.io, "curl failed (exit \(result.status), answer \(fields.first ?? "none"))")
            }
            return (seconds, bytes)
        }
    }
}
