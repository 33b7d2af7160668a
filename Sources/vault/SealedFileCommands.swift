import ArgumentParser
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

struct EncryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Seal an extract at source: a fresh extract id and key, wrapped under the force's active master key.",
        discussion: "The output is the sealed file of DESIGN 5.4, ready for upload; the platform never sees the plaintext.")

    @OptionGroup var keys: OfflineCustodyOptions
    @Option(help: "The dataset id (e.g. crime-records).") var dataset: String
    @Option(name: .customLong("in"), help: ArgumentHelp("The plaintext extract.", valueName: "file")) var input: String
    @Option(name: .customLong("out"), help: ArgumentHelp("The sealed file to create (.vault).", valueName: "file"))
    var output: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false

    func run() async throws {
        let dataset = try DatasetID(dataset: dataset)
        let custody = try keys.open()
        let summary = try await SealedFile.seal(inputPath: input, outputPath: output, dataset: dataset,
                                                custody: custody, overwrite: overwrite)
        let header = summary.header
        print("sealed \(input) -> \(output): force \(header.identity.force), dataset \(header.identity.dataset), "
            + "extract \(header.identity.extract), \(header.plaintextSize) bytes, key under \(header.wrappedKey.kek)")
    }
}

struct DecryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt a sealed file offline with the force's keyring (or its token) alone.",
        discussion: "The output appears only after every check passed; a failed decryption creates no file.")

    @OptionGroup var keys: OfflineCustodyOptions
    @Option(name: .customLong("in"), help: ArgumentHelp("The sealed file.", valueName: "file")) var input: String
    @Option(name: .customLong("out"), help: ArgumentHelp("The plaintext file to create.", valueName: "file"))
    var output: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false

    func run() async throws {
        let custody = try keys.open()
        let justification = Justification(principal: localPrincipal(), purpose: .export, requestID: requestID())
        let summary = try await SealedFile.unseal(inputPath: input, outputPath: output, custody: custody,
                                                  justification: justification, overwrite: overwrite)
        let header = summary.header
        print("decrypted \(input) -> \(output): force \(header.identity.force), dataset \(header.identity.dataset), "
            + "extract \(header.identity.extract), \(header.plaintextSize) bytes verified")
    }
}

/// Where an offline command finds the force's keys: a keyring file, or the force's entry in a custody file (a
/// PKCS#11 token, or a keyring, with the PIN or passphrase from the source the file names).
struct OfflineCustodyOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The force's keyring file.", valueName: "path")) var keyring: String?
    @Option(help: ArgumentHelp("Instead of --keyring: a custody file (keys.toml) ...", valueName: "path"))
    var custody: String?
    @Option(help: ArgumentHelp("... and the force whose keys it names (its PIN or passphrase from the source given "
                                + "there).", valueName: "id"))
    var force: String?
    @OptionGroup var passphrase: PassphraseOptions

    func validate() throws {
        switch (keyring, custody, force) {
        case (_?, nil, nil), (nil, _?, _?): return
        case (nil, nil, _): throw ValidationError("give --keyring, or --custody with --force")
        case (nil, _?, nil): throw ValidationError("--custody needs --force")
        default: throw ValidationError("give --keyring or --custody with --force, not both")
        }
    }

    func open() throws -> any KeyCustodian {
        if let keyring {
            return try KeyringCustody.open(at: keyring, passphrase: try passphrase.read(), mode: .readOnly,
                                           logger: makeLogger())
        }
        let configuration = try CustodyConfiguration.load(path: custody!)
        return try configuration.open(try ForceID(force: force!), mode: .readOnly, logger: makeLogger())
    }
}

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the vault against baselines taken in the same run.",
        subcommands: [Crypto.self, EndToEnd.self, Rotate.self, Shred.self, Custody.self]
    )

    struct Custody: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Unwrap and rewrap per second, p50 and p99, on each custody backend side by side.",
            discussion: """
                The keyring (AES-GCM in process) is the baseline; the PKCS#11 backend runs on a throwaway token of \
                the module (SoftHSM2 by default; its own token directory unless SOFTHSM2_CONF is set).
                """)

        @Option(help: ArgumentHelp("keyring, pkcs11, remote (a local custody service over loopback mTLS), both "
                                   + "(keyring and pkcs11, the default) or all.", valueName: "backend"))
        var backend = "both"
        @Option(help: "Operations of each kind per backend.") var operations = 20_000
        @Option(help: ArgumentHelp("The PKCS#11 module.", valueName: "path"))
        var module = "/usr/lib/softhsm/libsofthsm2.so"
        @Flag(help: "One JSON object on stdout.") var json = false

        func validate() throws {
            guard ["keyring", "pkcs11", "remote", "both", "all"].contains(backend) else {
                throw ValidationError("--backend must be keyring, pkcs11, remote, both or all")
            }
            guard (1...10_000_000).contains(operations) else { throw ValidationError("--operations must be 1...10000000") }
        }

        func run() async throws {
            // The keyring always runs first: every figure is a ratio to it.
            let backends = switch backend {
            case "both": ["keyring", "pkcs11"]
            case "all": ["keyring", "pkcs11", "remote"]
            case "keyring": ["keyring"]
            default: ["keyring", backend]
            }
            let figures = try await CustodyBenchmark(operations: operations, module: module,
                                                     vaultdPath: siblingExecutable("vaultd"))
                .run(backends: backends, logger: makeLogger())
            if json {
                print(BenchJSON.object(["custody": .array(figures.map(\.json))]).text)
                return
            }
            let baseline = figures.first { $0.backend == "keyring" }
            func us(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1e6) }
            for figure in figures {
                var line = "\(figure.backend): unwrap \(Int(figure.unwrapsPerSecond))/s (p50 \(us(figure.unwrapP50)) us, "
                    + "p90 \(us(figure.unwrapP90)) us, p99 \(us(figure.unwrapP99)) us); rewrap "
                    + "\(Int(figure.rewrapsPerSecond))/s (p50 "
                    + "\(us(figure.rewrapP50)) us, p99 \(us(figure.rewrapP99)) us); batch rewrap "
                    + "\(Int(figure.batchRewrapsPerSecond))/s"
                if let baseline, figure.backend != "keyring" {
                    line += String(format: " = %.2f x / %.2f x / %.2f x the keyring",
                                   figure.unwrapsPerSecond / baseline.unwrapsPerSecond,
                                   figure.rewrapsPerSecond / baseline.rewrapsPerSecond,
                                   figure.batchRewrapsPerSecond / baseline.batchRewrapsPerSecond)
                }
                print(line + (figure.backend == "keyring" ? " (baseline)" : ""))
            }
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Rewrap N wrapped keys after a rotation (SQLite), beside custody alone.",
            discussion: """
                keyring: the force's keyring in process. remote: the same keyring behind a local custody service \
                (vaultd custody serve, loopback mTLS), so every batch is one request to it. both: keyring first, \
                then remote, with the remote job as a ratio to the keyring job.
                """)

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Wrapped keys to rewrap.") var keys = 100_000
        @Option(help: "Keys per rewrap transaction.") var batch = 2_000
        @Option(help: ArgumentHelp("keyring (the default), remote or both.", valueName: "backend"))
        var backend = "keyring"
        @Option(help: ArgumentHelp("Scratch directory (default: the current directory).", valueName: "path"))
        var workDir = "."

        func validate() throws {
            guard (1...10_000_000).contains(keys), (1...100_000).contains(batch) else {
                throw ValidationError("--keys must be 1...10000000 and --batch 1...100000")
            }
            guard ["keyring", "remote", "both"].contains(backend) else {
                throw ValidationError("--backend must be keyring, remote or both")
            }
        }

        func run() async throws {
            let bench = LifecycleBenchmark(workDirectory: workDir)
            var results: [LifecycleBenchmark.RotateResult] = []
            if backend != "remote" {
                results.append(try await bench.rotate(keys: keys, batch: batch, logger: makeLogger()) { printNotice($0) })
            }
            if backend != "keyring" {
                results.append(try await bench.rotate(keys: keys, batch: batch, remote: siblingExecutable("vaultd"),
                                                      logger: makeLogger()) { printNotice($0) })
            }
            let ratio = results.count == 2 ? results[1].keysPerSecond / results[0].keysPerSecond : nil
            if json {
                if results.count == 1 {
                    print(results[0].json.text)
                } else {
                    print(BenchJSON.object([
                        "rotate": .array(results.map(\.json)),
                        "ratio_remote_to_keyring": .figure(ratio ?? 0),
                    ]).text)
                }
                return
            }
            func f(_ value: Double) -> String { String(format: "%.0f", value) }
            for result in results {
                print("\(result.backend): custody alone:   \(f(result.custodyOnlyKeysPerSecond)) keys/s (baseline)")
                print("\(result.backend): rotation job (\(result.keys) keys): \(f(result.keysPerSecond)) keys/s in "
                    + String(format: "%.2f", result.seconds) + " s = "
                    + String(format: "%.2f", result.keysPerSecond / result.custodyOnlyKeysPerSecond)
                    + " x custody alone, " + String(format: "%.2f", result.keysPerSecond / 50_000)
                    + " x target (>= 50000 keys/s)")
            }
            if let ratio { print("remote rotation job / keyring rotation job: " + String(format: "%.2f", ratio)) }
        }
    }

    struct Shred: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Crypto-shred N expired archives (keyring custody, SQLite, file blobs), beside plain deletes.")

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Expired archives to shred.") var archives = 10_000
        @Option(help: "Archives per shredding batch.") var batch = 64
        @Option(help: ArgumentHelp("Scratch directory (default: the current directory).", valueName: "path"))
        var workDir = "."

        func validate() throws {
            guard (1...1_000_000).contains(archives), (1...10_000).contains(batch) else {
                throw ValidationError("--archives must be 1...1000000 and --batch 1...10000")
            }
        }

        func run() async throws {
            let result = try await LifecycleBenchmark(workDirectory: workDir)
                .shred(archives: archives, batch: batch, logger: makeLogger()) { printNotice($0) }
            if json {
                print(result.json.text)
                return
            }
            func f(_ value: Double) -> String { String(format: "%.2f", value) }
            print("plain file deletes (baseline): \(f(result.plainDeleteSeconds)) s for \(result.archives) files")
            print("shred (\(result.archives) archives): \(f(result.seconds)) s = "
                + String(format: "%.0f", result.archivesPerSecond) + " archives/s = "
                + "\(f(result.seconds / result.plainDeleteSeconds)) x plain deletes; "
                + "\(f(result.archivesPerSecond / (10_000.0 / 60))) x target rate (10000 in <= 60 s)")
            print("per archive: p50 \(f(result.p50Milliseconds)) ms, p99 \(f(result.p99Milliseconds)) ms "
                + "(target p99 <= 50 ms)")
        }
    }

    struct EndToEnd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "e2e",
            abstract: "Upload and read an extract through a real vaultd over TLS on loopback, beside dd and in-process figures.")

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Extract size in MiB.") var sizeMib = 1024
        @Option(help: ArgumentHelp("Directory on the disk to measure (default: the current directory).",
                                   valueName: "path"))
        var workDir = "."
        @Option(help: ArgumentHelp("Also run on this PostgreSQL catalog (a scratch database; password from "
                                   + "PGPASSWORD).", valueName: "postgres://..."))
        var catalog: String?
        @Option(help: ArgumentHelp("...and this bucket (a scratch prefix; credentials from AWS_ACCESS_KEY_ID and "
                                   + "AWS_SECRET_ACCESS_KEY).", valueName: "s3://bucket/prefix"))
        var blobs: String?
        @Option(help: ArgumentHelp("The S3 endpoint.", valueName: "http(s)://host:port")) var s3Endpoint: String?
        @Option(help: "The S3 region.") var s3Region = "us-east-1"

        func validate() throws {
            guard (catalog == nil) == (blobs == nil), (blobs == nil) == (s3Endpoint == nil) else {
                throw ValidationError("--catalog, --blobs and --s3-endpoint go together")
            }
            if let catalog, case .postgres = try? CatalogLocation.parse(catalog) {} else if catalog != nil {
                throw ValidationError("--catalog must be postgres://USER@HOST:PORT/DATABASE")
            }
            if let catalog, PostgresURL.redact(catalog) != catalog {
                throw ValidationError("--catalog must not carry a password: set PGPASSWORD instead")
            }
        }

        func run() async throws {
            let vaultd = siblingExecutable("vaultd")
            var scaleOut: EndToEndBenchmark.ScaleOut?
            if let catalog, let blobs, let s3Endpoint {
                var settings = S3Settings(url: blobs, endpoint: s3Endpoint)
                settings.region = s3Region
                scaleOut = EndToEndBenchmark.ScaleOut(postgresURL: catalog, s3: settings)
            }
            let bench = EndToEndBenchmark(payloadBytes: sizeMib << 20, workDirectory: workDir,
                                          vaultdPath: vaultd, scaleOut: scaleOut)
            let result = try await bench.run(logger: makeLogger()) { printNotice($0) }
            if json {
                print(result.json.text)
                return
            }
            func f(_ v: Double) -> String { String(format: "%.0f", v) }
            print("dd write (conv=fsync): \(f(result.ddWriteMBps)) MB/s; dd read: \(f(result.ddReadMBps)) MB/s (baselines)")
            print("vault upload over TLS:  \(f(result.uploadMBps)) MB/s = "
                + String(format: "%.2f", result.uploadMBps / result.ddWriteMBps) + " x dd write")
            print("vault read over TLS:    \(f(result.readMBps)) MB/s = "
                + String(format: "%.2f", result.readMBps / result.ddReadMBps) + " x dd read")
            print("remote force (custody service over mTLS): upload \(f(result.remoteUploadMBps)) MB/s = "
                + String(format: "%.2f", result.remoteUploadMBps / result.uploadMBps) + " x keyring upload; signed read "
                + "\(f(result.remoteReadMBps)) MB/s = " + String(format: "%.2f", result.remoteReadMBps / result.readMBps)
                + " x keyring read")
            print("in-process Cobblestone: encrypt \(f(result.cobblestoneEncryptMBps)) MB/s, decrypt "
                + "\(f(result.cobblestoneDecryptMBps)) MB/s")
            print("vaultd resident memory: \(result.vaultdBaselineRSSMiB) MiB idle, peak \(result.vaultdPeakRSSMiB) MiB")
            if let scale = result.scaleOut {
                print("plain S3 PUT (curl):    \(f(scale.s3PutMBps)) MB/s; plain S3 GET: \(f(scale.s3GetMBps)) MB/s "
                      + "(baselines, unencrypted)")
                print("vault upload, PostgreSQL + S3: \(f(scale.uploadMBps)) MB/s = "
                      + String(format: "%.2f", scale.uploadMBps / scale.s3PutMBps) + " x plain S3 PUT")
                print("vault read, PostgreSQL + S3:   \(f(scale.readMBps)) MB/s = "
                      + String(format: "%.2f", scale.readMBps / scale.s3GetMBps) + " x plain S3 GET")
                print("vaultd (PostgreSQL + S3) resident memory: \(scale.vaultdBaselineRSSMiB) MiB idle, peak "
                      + "\(scale.vaultdPeakRSSMiB) MiB")
            }
        }
    }

    struct Crypto: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cobblestone-256 in memory on one core vs `openssl speed`, and keyring unwrap latency.")

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Payload size in MiB.") var sizeMib = 1024
        @Option(help: "Rounds of baseline + Cobblestone (the median round is reported).") var runs = 5
        @Option(help: "Number of timed unwraps.") var unwraps = 100_000

        func validate() throws {
            guard sizeMib >= 1, sizeMib <= 16384 else { throw ValidationError("--size-mib must be 1...16384") }
            guard runs >= 1, unwraps >= 100 else { throw ValidationError("--runs must be ≥ 1 and --unwraps ≥ 100") }
        }

        func run() async throws {
            let bench = CryptoBenchmark(payloadBytes: sizeMib << 20, runs: runs, unwraps: unwraps)
            let result = try await bench.run(logger: makeLogger()) { printNotice($0) }
            if json {
                print(result.json.text)
                return
            }
            func f(_ value: Double) -> String { String(format: "%.2f", value) }
            print("openssl speed aes-256-gcm (16 KiB): \(f(result.opensslAES256GCMGBps)) GB/s (baseline)")
            print("Cobblestone-256 encrypt:            \(f(result.cobblestoneEncryptGBps)) GB/s "
                + "= \(f(result.ratioEncrypt)) x baseline (target >= 0.85)")
            print("Cobblestone-256 decrypt:            \(f(result.cobblestoneDecryptGBps)) GB/s "
                + "= \(f(result.ratioDecrypt)) x baseline (target >= 0.85)")
            print("keyring unwrap (\(result.unwrapCount)): p50 \(f(result.unwrapP50Microseconds)) us, "
                + "p99 \(f(result.unwrapP99Microseconds)) us (target p99 <= 50 us)")
        }
    }
}

/// A program installed beside this one (vaultd beside vault).
func siblingExecutable(_ name: String) -> String {
    var exe = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &exe, exe.count - 1)
    let own = length > 0 ? String(cString: exe) : "./vault"
    return DurableFile.parentDirectory(of: own) + "/" + name
}
