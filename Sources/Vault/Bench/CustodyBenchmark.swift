import Foundation
import KeyCustody
import Logging

/// `vault bench custody`: unwrap and rewrap on each custody backend, side by side in one run. The keyring backend
/// (AES-GCM in process through libcrypto) is the baseline the PKCS#11 and remote backends are measured against. The
/// remote backend is a local custody service process (`vaultd custody serve`) over loopback mTLS; each of its unwraps
/// carries a fresh signed read request (signed before the clock starts, as an analyst's client does).
public struct CustodyBenchmark: Sendable {
    public struct Figures: Sendable {
        public let backend: String
        public let operations: Int
        public let unwrapsPerSecond: Double
        public let unwrapP50: Double
        public let unwrapP90: Double
        public let unwrapP99: Double
        public let rewrapsPerSecond: Double
        public let rewrapP50: Double
        public let rewrapP99: Double
        /// Keys per second through the batch call the rotation job uses (batches of 1000).
        public let batchRewrapsPerSecond: Double

        public var json: BenchJSON {
            func micro(_ seconds: Double) -> BenchJSON { .integer(Int64((seconds * 1e6).rounded())) }
            return .object([
                "backend": .string(backend), "operations": .integer(Int64(operations)),
                "unwrap_per_second": .integer(Int64(unwrapsPerSecond)), "unwrap_p50_us": micro(unwrapP50),
                "unwrap_p90_us": micro(unwrapP90),
                "unwrap_p99_us": micro(unwrapP99), "rewrap_per_second": .integer(Int64(rewrapsPerSecond)),
                "rewrap_p50_us": micro(rewrapP50), "rewrap_p99_us": micro(rewrapP99),
                "batch_rewrap_per_second": .integer(Int64(batchRewrapsPerSecond)),
            ])
        }
    }

    public let operations: Int
    /// The PKCS#11 module to measure (a SoftHSM2-compatible module where a free token can be initialised).
    public let module: String
    /// vaultd, for the remote backend's custody service.
    public let vaultdPath: String?

    public init(operations: Int, module: String, vaultdPath: String? = nil) {
        self.operations = operations
        self.module = module
        self.vaultdPath = vaultdPath
    }

    public func run(backends: [String], logger: Logger) async throws -> [Figures] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "vault-bench-custody-\(getpid())-\(Hex.encode(SecureRandom.bytes(count: 4)))").path
        try FileManager.default.createDirectory(atPath: "\(directory)/tokens", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let force = try ForceID(force: "bench")
        var results: [Figures] = []
        for backend in backends {
            let custody: any KeyCustodian
            var service: LocalCustodyService?
            var readJustification: (@Sendable (WrapContext) -> Justification)?
            switch backend {
            case "keyring":
                custody = try KeyringCustody.create(at: "\(directory)/bench.keyring", force: force,
                                                    passphrase: SecureBytes.random(count: 32),
                                                    parameters: .interactive, logger: logger)
            case "pkcs11":
                custody = try openToken(directory: directory, force: force, logger: logger)
            case "remote":
                guard let vaultdPath else { throw VaultError(.invalidParameter, "the remote backend needs vaultd") }
                let local = try await LocalCustodyService.launch(force: force, directory: "\(directory)/custody",
                                                                 vaultdPath: vaultdPath, logger: logger)
                service = local
                let analyst = PrincipalSigningKey(principal: "bench")
                try await local.authorize(analyst, datasets: [try DatasetID(dataset: "bench")], useCase: "bench")
                custody = try local.remoteCustody()
                readJustification = { context in
                    Justification(principal: "bench", useCase: "bench", purpose: .useCaseRead, requestID: "bench",
                                  signedRequest: SignedReadRequest(signing: ReadRequest(
                                      force: context.force, dataset: context.dataset, principal: "bench",
                                      purpose: .useCaseRead, useCase: "bench", issued: currentUnixTime()),
                                                                   with: analyst.key))
                }
            default:
                throw VaultError(.invalidParameter, "unknown custody backend \(backend) (keyring, pkcs11 or remote)")
            }
            results.append(try await measure(custody, backend: backend, force: force, read: readJustification))
            service?.kill()
        }
        return results
    }

    /// A throwaway SoftHSM2 token: its own token directory unless SOFTHSM2_CONF already names one, random PINs.
    private func openToken(directory: String, force: ForceID, logger: Logger) throws -> PKCS11Custody {
        if getenv("SOFTHSM2_CONF") == nil {
            let configuration = "\(directory)/softhsm2.conf"
            try Data("directories.tokendir = \(directory)/tokens\nobjectstore.backend = file\nlog.level = ERROR\n".utf8)
                .write(to: URL(fileURLWithPath: configuration))
            setenv("SOFTHSM2_CONF", configuration, 1)
        }
        let label = "bench-\(Hex.encode(SecureRandom.bytes(count: 4)))"
        let pin = SecureBytes.random(count: 16)
        try PKCS11Administration.initializeToken(module: module, label: label, soPIN: SecureBytes.random(count: 16),
                                                 userPIN: pin)
        _ = try PKCS11Custody.initialize(module: module, tokenLabel: label, pin: pin, force: force, logger: logger)
        return try PKCS11Custody.open(module: module, tokenLabel: label, pin: pin, force: force, mode: .readWrite,
                                      logger: logger)
    }

    private func measure(_ custody: any KeyCustodian, backend: String, force: ForceID,
                         read readJustification: (@Sendable (WrapContext) -> Justification)?) async throws -> Figures
    {
        let context = WrapContext(force: force, dataset: try DatasetID(dataset: "bench"), extract: .generate())
        let data = try await custody.generateDataKey(for: context, justification: Justification(
            principal: "bench", purpose: .upload, requestID: "bench"))
        let fixed = Justification(principal: "bench", useCase: "bench", purpose: .useCaseRead, requestID: "bench")
        let rewrap = Justification(principal: "bench", purpose: .rewrap, requestID: "bench")
        let warmUp = min(500, operations)
        // One justification per unwrap, made before the clock starts (a remote one carries a fresh signed request).
        let reads = (0..<(warmUp + operations)).map { _ in readJustification?(context) ?? fixed }

        var unwraps = LatencyRecorder()
        for index in 0..<warmUp {
            _ = try await custody.unwrap(data.wrapped, context: context, justification: reads[index])
        }
        let unwrapStart = CryptoBenchmark.now()
        for index in 0..<operations {
            let read = reads[warmUp + index]
            let start = CryptoBenchmark.now()
            let key = try await custody.unwrap(data.wrapped, context: context, justification: read)
            unwraps.record(seconds: CryptoBenchmark.now() - start)
            guard key == data.key else { throw VaultError(.integrityFailure, "\(backend) unwrap returned another key") }
        }
        let unwrapSeconds = CryptoBenchmark.now() - unwrapStart

        let target = try await custody.rotate()
        var rewraps = LatencyRecorder()
        for _ in 0..<warmUp {
            _ = try await custody.rewrap(data.wrapped, context: context, to: target, justification: rewrap)
        }
        let rewrapStart = CryptoBenchmark.now()
        for _ in 0..<operations {
            let start = CryptoBenchmark.now()
            let moved = try await custody.rewrap(data.wrapped, context: context, to: target, justification: rewrap)
            rewraps.record(seconds: CryptoBenchmark.now() - start)
            guard moved.kek == target else { throw VaultError(.integrityFailure, "\(backend) rewrap went elsewhere") }
        }
        let rewrapSeconds = CryptoBenchmark.now() - rewrapStart

        let batch = [RewrapItem](repeating: RewrapItem(wrapped: data.wrapped, context: context), count: 1000)
        var batched = 0
        let batchStart = CryptoBenchmark.now()
        while batched < operations {
            let results = try await custody.rewrap(batch, to: target, justification: rewrap)
            for result in results { _ = try result.get() }
            batched += results.count
        }
        let batchSeconds = CryptoBenchmark.now() - batchStart

        return Figures(backend: backend, operations: operations,
                       unwrapsPerSecond: Double(operations) / unwrapSeconds, unwrapP50: unwraps.p50,
                       unwrapP90: unwraps.p90, unwrapP99: unwraps.p99,
                       rewrapsPerSecond: Double(operations) / rewrapSeconds, rewrapP50: rewraps.p50,
                       rewrapP99: rewraps.p99,
                       batchRewrapsPerSecond: Double(batched) / batchSeconds)
    }
}
