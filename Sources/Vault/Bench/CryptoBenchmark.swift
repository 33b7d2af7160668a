import Foundation
import KeyCustody
import Logging

/// `vault bench crypto`: Cobblestone-256 throughput in memory on one core beside `openssl speed` measured in the
/// same run, and keyring unwrap latency.
public struct CryptoBenchmark: Sendable {
    public struct Result: Sendable {
        public var payloadBytes: Int
        public var cobblestoneEncryptGBps: Double
        public var cobblestoneDecryptGBps: Double
        public var opensslAES256GCMGBps: Double
        public var unwrapCount: Int
        public var unwrapP50Microseconds: Double
        public var unwrapP99Microseconds: Double

        public var ratioEncrypt: Double { cobblestoneEncryptGBps / opensslAES256GCMGBps }
        public var ratioDecrypt: Double { cobblestoneDecryptGBps / opensslAES256GCMGBps }

        /// DESIGN section 10: Cobblestone at least 0.85 of the AES-GCM baseline both ways; an unwrap p99 of 50 µs.
        public var figures: [BenchFigure] {
            [
                BenchFigure(key: "cobblestone_encrypt", title: "Cobblestone-256 encrypt, one core", unit: "GB/s",
                            measured: cobblestoneEncryptGBps, baselineTitle: "openssl speed aes-256-gcm",
                            baseline: opensslAES256GCMGBps, target: .ratioAtLeast(0.85)),
                BenchFigure(key: "cobblestone_decrypt", title: "Cobblestone-256 decrypt, one core", unit: "GB/s",
                            measured: cobblestoneDecryptGBps, baselineTitle: "openssl speed aes-256-gcm",
                            baseline: opensslAES256GCMGBps, target: .ratioAtLeast(0.85)),
                BenchFigure(key: "keyring_unwrap_p99", title: "keyring unwrap p99", unit: "us",
                            measured: unwrapP99Microseconds, target: .atMost(50)),
            ]
        }

        public var json: BenchJSON {
            func micro(_ value: Double) -> BenchJSON { .figure(value) }
            return .object([
                "figures": .array(figures.map(\.json)),
                "payload_bytes": .integer(Int64(payloadBytes)),
                "cobblestone_encrypt_gbps": .figure(cobblestoneEncryptGBps),
                "cobblestone_decrypt_gbps": .figure(cobblestoneDecryptGBps),
                "openssl_aes256gcm_gbps": .figure(opensslAES256GCMGBps),
                "ratio_encrypt": .figure(ratioEncrypt),
                "ratio_decrypt": .figure(ratioDecrypt),
                "unwrap_count": .integer(Int64(unwrapCount)),
                "unwrap_p50_us": micro(unwrapP50Microseconds),
                "unwrap_p99_us": micro(unwrapP99Microseconds),
            ])
        }
    }

    public var payloadBytes: Int
    public var runs: Int
    public var unwraps: Int
    public var opensslSeconds: Int

    public init(payloadBytes: Int = 1 << 30, runs: Int = 5, unwraps: Int = 100_000, opensslSeconds: Int = 2) {
        self.payloadBytes = payloadBytes
        self.runs = runs
        self.unwraps = unwraps
        self.opensslSeconds = opensslSeconds
    }

    /// Runs every measurement; `progress` receives one line per step.
    ///
    /// The machine's speed drifts (frequency scaling, neighbours), so each round measures the baseline and
    /// Cobblestone back to back, and the round with the median encryption ratio is reported.
    public func run(logger: Logger, progress: (String) -> Void) async throws -> Result {
        var rounds: [(openssl: Double, encrypt: Double, decrypt: Double)] = []
        let fixture = try CobblestoneFixture(payloadBytes: payloadBytes)
        for round in 1...max(runs, 1) {
            progress("round \(round)/\(runs): openssl speed -evp aes-256-gcm -bytes 16384 (\(opensslSeconds) s), "
                + "then Cobblestone-256 over \(payloadBytes >> 20) MiB in memory...")
            let openssl = try Self.opensslSpeed(seconds: opensslSeconds)
            let (encrypt, decrypt) = try fixture.measure()
            rounds.append((openssl, encrypt, decrypt))
        }
        rounds.sort { $0.encrypt / $0.openssl < $1.encrypt / $1.openssl }
        let median = rounds[rounds.count / 2]
        progress("\(unwraps) keyring unwraps...")
        let (p50, p99) = try await unwrapLatency(logger: logger)
        return Result(payloadBytes: payloadBytes, cobblestoneEncryptGBps: median.encrypt,
                      cobblestoneDecryptGBps: median.decrypt, opensslAES256GCMGBps: median.openssl,
                      unwrapCount: unwraps, unwrapP50Microseconds: p50, unwrapP99Microseconds: p99)
    }

    static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }

    /// Bytes per second of `openssl speed` for AES-256-GCM on 16 KiB blocks, in GB/s (10^9 bytes).
    static func opensslSpeed(seconds: Int) throws -> Double {
        let output = try Subprocess.run("openssl", ["speed", "-mr", "-seconds", String(seconds), "-evp", "aes-256-gcm",
                                                    "-bytes", "16384"])
        let text = String(decoding: output.stdout, as: UTF8.self)
        // Machine-readable result line: "+F:<n>:AES-256-GCM:<bytes per second>"
        for line in text.split(separator: "\n") where line.hasPrefix("+F:") {
            if let last = line.split(separator: ":").last, let bytesPerSecond = Double(last) {
                return bytesPerSecond / 1e9
            }
        }
        throw VaultError(.io, "could not read a result from `openssl speed` (is the openssl command installed?)")
    }

    /// One plaintext, ciphertext and output buffer, reused by every round.
    struct CobblestoneFixture {
        let payloadBytes: Int
        let key = SecureBytes.random(count: 32)
        let context = Array("vault.extract.v1\u{0}bench\u{0}bench\u{0}01JD0000000000000000000000".utf8)
        let plaintext: ScratchBuffer
        let ciphertext: ScratchBuffer
        let decrypted: ScratchBuffer
        let ciphertextSize: Int

        init(payloadBytes: Int) throws {
            self.payloadBytes = payloadBytes
            plaintext = ScratchBuffer(count: payloadBytes)
            for i in stride(from: 0, to: payloadBytes, by: 4096) {
                plaintext.buffer[i] = UInt8(truncatingIfNeeded: i >> 12)
            }
            ciphertextSize = Int(Cobblestone.ciphertextSize(plaintextSize: UInt64(payloadBytes)))
            ciphertext = ScratchBuffer(count: ciphertextSize)
            decrypted = ScratchBuffer(count: payloadBytes)
        }

        /// Encrypts and decrypts the whole payload once each on this thread; returns GB/s for each direction.
        func measure() throws -> (encrypt: Double, decrypt: Double) {
            let start = CryptoBenchmark.now()
            let encryptor = try CobblestoneEncryptor(key: key, context: context)
            var written = try encryptor.update(UnsafeRawBufferPointer(plaintext.buffer), into: ciphertext.buffer)
            written += try encryptor.finish(into: UnsafeMutableRawBufferPointer(rebasing: ciphertext.buffer[written...]))
            let encryptSeconds = CryptoBenchmark.now() - start
            guard written == ciphertextSize else { throw VaultError(.integrityFailure, "benchmark size mismatch") }

            let start2 = CryptoBenchmark.now()
            let decryptor = try CobblestoneDecryptor(key: key, context: context)
            var produced = try decryptor.update(UnsafeRawBufferPointer(ciphertext.buffer), into: decrypted.buffer)
            produced += try decryptor.finish(into: UnsafeMutableRawBufferPointer(rebasing: decrypted.buffer[produced...]))
            let decryptSeconds = CryptoBenchmark.now() - start2
            guard produced == payloadBytes, memcmp(plaintext.pointer, decrypted.pointer, payloadBytes) == 0 else {
                throw VaultError(.integrityFailure, "benchmark round trip does not match")
            }
            let gigabytes = Double(payloadBytes) / 1e9
            return (gigabytes / encryptSeconds, gigabytes / decryptSeconds)
        }
    }

    func unwrapLatency(logger: Logger) async throws -> (p50: Double, p99: Double) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "vault-bench-\(getpid())-\(Hex.encode(SecureRandom.bytes(count: 4)))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let passphrase = SecureBytes.random(count: 32)
        let force = try ForceID(force: "bench")
        let custody = try KeyringCustody.create(at: "\(directory)/bench.keyring", force: force,
                                                passphrase: passphrase, parameters: .interactive, logger: logger)
        let identity = ExtractIdentity(force: force, dataset: try DatasetID(dataset: "bench"), extract: .generate())
        let dataKey = try await custody.generateDataKey(for: identity.wrapContext)
        let justification = Justification(principal: "bench", useCase: "bench", purpose: .useCaseRead,
                                          requestID: "bench")
        var samples = LatencyRecorder()
        for _ in 0..<1000 {
            _ = try await custody.unwrap(dataKey.wrapped, context: identity.wrapContext, justification: justification)
        }
        for _ in 0..<unwraps {
            let start = Self.now()
            let key = try await custody.unwrap(dataKey.wrapped, context: identity.wrapContext,
                                               justification: justification)
            samples.record(seconds: Self.now() - start)
            guard key.count == 32 else { throw VaultError(.integrityFailure, "unwrap returned a wrong key size") }
        }
        return (samples.p50 * 1e6, samples.p99 * 1e6)
    }
}
