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

        public var json: JSONValue {
            func f(_ v: Double) -> JSONValue { .string(String(format: "%.1f", v)) }
            return .object([
                "payload_bytes": .integer(Int64(payloadBytes)), "upload_mbps": f(uploadMBps), "read_mbps": f(readMBps),
                "cobblestone_encrypt_mbps": f(cobblestoneEncryptMBps),
                "cobblestone_decrypt_mbps": f(cobblestoneDecryptMBps), "dd_write_fsync_mbps": f(ddWriteMBps),
                "dd_read_mbps": f(ddReadMBps),
                "ratio_upload_vs_dd_write": .string(String(format: "%.3f", uploadMBps / ddWriteMBps)),
                "ratio_read_vs_dd_read": .string(String(format: "%.3f", readMBps / ddReadMBps)),
                "vaultd_peak_rss_mib": .integer(Int64(vaultdPeakRSSMiB)),
                "vaultd_baseline_rss_mib": .integer(Int64(vaultdBaselineRSSMiB)),
            ])
        }
    }

    public var payloadBytes: Int
    /// Where vaultd and the temporary files go (the disk being measured).
    public var workDirectory: String
    public var vaultdPath: String

    public init(payloadBytes: Int, workDirectory: String, vaultdPath: String) {
        self.payloadBytes = payloadBytes
        self.workDirectory = workDirectory
        self.vaultdPath = vaultdPath
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
        let port = try freeLoopbackPort()
        try DurableFile.write(Array("""
            [forces.bench]
            backend = "keyring"
            keyring = "bench.keyring"
            passphrase_env = "VAULT_BENCH_PASSPHRASE"
            """.utf8), to: "\(directory)/keys.toml")
        try DurableFile.write(Array("""
            listen = "127.0.0.1:\(port)"
            data_dir = "data"
            custody = "keys.toml"
            [tls]
            certificate = "tls/server.pem"
            private_key = "tls/server.key"
            [[principals]]
            id = "bench"
            uploader = ["bench"]
            analyst = ["bench"]
            custodian = ["bench"]
            """.utf8), to: "\(directory)/vaultd.toml")
        try FileBlobStore.makeDirectory("\(directory)/data")
        let benchForce = try ForceID(force: "bench")
        let bench = Principal(id: "bench", grants: [.uploader: [benchForce], .analyst: [benchForce],
                                                    .custodian: [benchForce]])
        let token = try await BearerToken.issue(for: bench, description: "bench",
                                                catalog: try SQLiteCatalog(path: "\(directory)/data/catalog.sqlite"))

        let pid = try Subprocess.spawn(vaultdPath, ["serve", "--config", "\(directory)/vaultd.toml"],
                                       environment: ["VAULT_BENCH_PASSPHRASE": passphrase, "PATH": "/usr/bin:/bin"],
                                       logPath: "\(directory)/vaultd.log")
        defer { Subprocess.stop(pid) }
        let client = try VaultClient(configuration: ClientConfiguration(
            server: "https://127.0.0.1:\(port)", caFile: pki.caCertificate, token: token, certificate: nil,
            privateKey: nil))
        do {
            let result = try await measure(client: client, directory: directory, pid: pid, progress: progress)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func measure(client: VaultClient, directory: String, pid: pid_t, progress: (String) -> Void) async throws
        -> Result
    {
        var ready = false
        for _ in 0..<200 where !ready {
            ready = (try? await client.get("/healthz")) != nil
            if !ready { try await Task.sleep(for: .milliseconds(50)) }
        }
        guard ready else { throw VaultError(.io, "vaultd did not start (see \(directory)/vaultd.log)") }
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
            vaultdBaselineRSSMiB: baseline)
    }

    static func residentMiB(_ pid: pid_t, _ field: String) -> Int {
        guard let bytes = try? DurableFile.read("/proc/\(pid)/status", limit: 1 << 16) else { return 0 }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return 0 }
        return (Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty } ?? "") ?? 0) / 1024
    }
}
