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

        public var json: JSONValue {
            func micro(_ value: Double) -> JSONValue { .string(String(format: "%.3f", value)) }
            return .object([
                "payload_bytes": .integer(Int64(payloadBytes)),
                "cobblestone_encrypt_gbps": .string(String(format: "%.3f", cobblestoneEncryptGBps)),
                "cobblestone_decrypt_gbps": .string(String(format: "%.3f", cobblestoneDecryptGBps)),
                "openssl_aes256gcm_gbps": .string(String(format: "%.3f", opensslAES256GCMGBps)),
                "ratio_encrypt": .string(String(format: "%.3f", ratioEncrypt)),
                "ratio_decrypt": .string(String(format: "%.3f", ratioDecrypt)),
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

    public init(payloadBytes: Int = 1 << 30, runs: Int = 3, unwraps: Int = 100_000, opensslSeconds: Int = 3) {
        self.payloadBytes = payloadBytes
        self.runs = runs
        self.unwraps = unwraps
        self.opensslSeconds = opensslSeconds
    }

    /// Runs every measurement; `progress` receives one line per step.
    public func run(logger: Logger, progress: (String) -> Void) async throws -> Result {
        progress("openssl speed -evp aes-256-gcm -bytes 16384 (\(opensslSeconds) s)...")
        let openssl = try Self.opensslSpeed(seconds: opensslSeconds)
        progress("Cobblestone-256 over \(payloadBytes >> 20) MiB in memory, best of \(runs)...")
        let (encrypt, decrypt) = try cobblestone()
        progress("\(unwraps) keyring unwraps...")
        let (p50, p99) = try await unwrapLatency(logger: logger)
        return Result(payloadBytes: payloadBytes, cobblestoneEncryptGBps: encrypt, cobblestoneDecryptGBps: decrypt,
                      opensslAES256GCMGBps: openssl, unwrapCount: unwraps, unwrapP50Microseconds: p50,
                      unwrapP99Microseconds: p99)
    }

    static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }

    /// Bytes per second of `openssl speed` for AES-256-GCM on 16 KiB blocks, in GB/s (10^9 bytes).
    static func opensslSpeed(seconds: Int) throws -> Double {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["openssl", "speed", "-mr", "-seconds", String(seconds), "-evp", "aes-256-gcm",
                             "-bytes", "16384"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        // Machine-readable result line: "+F:<n>:AES-256-GCM:<bytes per second>"
        for line in text.split(separator: "\n") where line.hasPrefix("+F:") {
            if let last = line.split(separator: ":").last, let bytesPerSecond = Double(last) {
                return bytesPerSecond / 1e9
            }
        }
        throw VaultError(.io, "could not read a result from `openssl speed` (is the openssl command installed?)")
    }

    func cobblestone() throws -> (encrypt: Double, decrypt: Double) {
        let key = SecureBytes.random(count: 32)
        let context = Array("vault.extract.v1\u{0}bench\u{0}bench\u{0}01JD0000000000000000000000".utf8)
        let plaintext = ScratchBuffer(count: payloadBytes)
        for i in stride(from: 0, to: payloadBytes, by: 4096) { plaintext.buffer[i] = UInt8(truncatingIfNeeded: i >> 12) }
        let ciphertextSize = Int(Cobblestone.ciphertextSize(plaintextSize: UInt64(payloadBytes)))
        let ciphertext = ScratchBuffer(count: ciphertextSize + Cobblestone.encryptedChunkByteCount)
        let decrypted = ScratchBuffer(count: payloadBytes + Cobblestone.chunkByteCount)
        var bestEncrypt = Double.infinity
        var bestDecrypt = Double.infinity
        for _ in 0..<max(runs, 1) {
            let start = Self.now()
            let encryptor = try CobblestoneEncryptor(key: key, context: context)
            var written = try encryptor.update(UnsafeRawBufferPointer(plaintext.buffer), into: ciphertext.buffer)
            written += try encryptor.finish(
                into: UnsafeMutableRawBufferPointer(rebasing: ciphertext.buffer[written...]))
            bestEncrypt = min(bestEncrypt, Self.now() - start)
            guard written == ciphertextSize else { throw VaultError(.integrityFailure, "benchmark size mismatch") }

            let start2 = Self.now()
            let decryptor = try CobblestoneDecryptor(key: key, context: context)
            var produced = try decryptor.update(UnsafeRawBufferPointer(rebasing: ciphertext.buffer[0..<written]),
                                                into: decrypted.buffer)
            produced += try decryptor.finish(into: UnsafeMutableRawBufferPointer(rebasing: decrypted.buffer[produced...]))
            bestDecrypt = min(bestDecrypt, Self.now() - start2)
            guard produced == payloadBytes,
                memcmp(plaintext.pointer, decrypted.pointer, payloadBytes) == 0
            else { throw VaultError(.integrityFailure, "benchmark round trip does not match") }
        }
        let gigabytes = Double(payloadBytes) / 1e9
        return (gigabytes / bestEncrypt, gigabytes / bestDecrypt)
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
        var samples = [Double]()
        samples.reserveCapacity(unwraps)
        for _ in 0..<1000 {
            _ = try await custody.unwrap(dataKey.wrapped, context: identity.wrapContext, justification: justification)
        }
        for _ in 0..<unwraps {
            let start = Self.now()
            let key = try await custody.unwrap(dataKey.wrapped, context: identity.wrapContext,
                                               justification: justification)
            samples.append(Self.now() - start)
            guard key.count == 32 else { throw VaultError(.integrityFailure, "unwrap returned a wrong key size") }
        }
        samples.sort()
        func percentile(_ p: Double) -> Double {
            samples[min(samples.count - 1, Int(Double(samples.count) * p))] * 1e6
        }
        return (percentile(0.50), percentile(0.99))
    }
}
