import ArgumentParser
import Foundation
import KeyCustody
import Vault

/// `vault bench ...`: each bench measures the vault beside a baseline taken in the same run and prints every figure
/// as measured, baseline, ratio and target (`BenchFigure.line`), or one JSON object with `--json`. A missed target is
/// reported, not an error: the exit status is non-zero only when a bench could not run.
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure the vault against baselines taken in the same run.",
        subcommands: [All.self, Crypto.self, EndToEnd.self, Rotate.self, Shred.self, Custody.self]
    )

    /// The scale-out storage options `e2e`, `rotate` and `all` share.
    struct ScaleOutOptions: ParsableArguments {
        @Option(help: ArgumentHelp("Also run on this PostgreSQL catalog (a scratch database; password from "
                                   + "PGPASSWORD).", valueName: "postgres://..."))
        var catalog: String?
        @Option(help: ArgumentHelp("...and this bucket (a scratch prefix; credentials from AWS_ACCESS_KEY_ID and "
                                   + "AWS_SECRET_ACCESS_KEY).", valueName: "s3://bucket/prefix"))
        var blobs: String?
        @Option(help: ArgumentHelp("The S3 endpoint.", valueName: "http(s)://host:port")) var s3Endpoint: String?
        @Option(help: "The S3 region.") var s3Region = "us-east-1"

        func validate() throws {
            if let catalog, case .postgres = try? CatalogLocation.parse(catalog) {} else if catalog != nil {
                throw ValidationError("--catalog must be postgres://USER@HOST:PORT/DATABASE")
            }
            if let catalog, PostgresURL.redact(catalog) != catalog {
                throw ValidationError("--catalog must not carry a password: set PGPASSWORD instead")
            }
            guard (blobs == nil) == (s3Endpoint == nil) else {
                throw ValidationError("--blobs and --s3-endpoint go together")
            }
        }

        /// PostgreSQL and S3 together, for `e2e`.
        var scaleOut: EndToEndBenchmark.ScaleOut? {
            guard let catalog, let blobs, let s3Endpoint else { return nil }
            var settings = S3Settings(url: blobs, endpoint: s3Endpoint)
            settings.region = s3Region
            return EndToEndBenchmark.ScaleOut(postgresURL: catalog, s3: settings)
        }
    }

    static func printFigures(_ figures: [BenchFigure]) {
        for figure in figures { print(figure.line) }
    }

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
            abstract: "Rewrap N wrapped keys after a rotation (SQLite, and PostgreSQL with --catalog), beside custody alone.",
            discussion: """
                keyring: the force's keyring in process. remote: the same keyring behind a local custody service \
                (vaultd custody serve, loopback mTLS), so every batch is one request to it. both: keyring first, \
                then remote. With --catalog, the keyring job runs on that PostgreSQL database too.
                """)

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Wrapped keys to rewrap.") var keys = 100_000
        @Option(help: "Keys per rewrap transaction.") var batch = 2_000
        @Option(help: ArgumentHelp("keyring (the default), remote or both.", valueName: "backend"))
        var backend = "keyring"
        @Option(help: ArgumentHelp("Scratch directory (default: the current directory).", valueName: "path"))
        var workDir = "."
        @OptionGroup var storage: ScaleOutOptions

        func validate() throws {
            guard (1...10_000_000).contains(keys), (1...100_000).contains(batch) else {
                throw ValidationError("--keys must be 1...10000000 and --batch 1...100000")
            }
            guard ["keyring", "remote", "both"].contains(backend) else {
                throw ValidationError("--backend must be keyring, remote or both")
            }
        }

        static func measure(keys: Int, batch: Int, backend: String, workDir: String, postgres: String?) async throws
            -> [LifecycleBenchmark.RotateResult]
        {
            let bench = LifecycleBenchmark(workDirectory: workDir)
            var results: [LifecycleBenchmark.RotateResult] = []
            if backend != "remote" {
                results.append(try await bench.rotate(keys: keys, batch: batch, logger: makeLogger()) { printNotice($0) })
            }
            if backend != "keyring" {
                results.append(try await bench.rotate(keys: keys, batch: batch, remote: siblingExecutable("vaultd"),
                                                      logger: makeLogger()) { printNotice($0) })
            }
            if let postgres, backend != "remote" {
                results.append(try await bench.rotate(keys: keys, batch: batch, postgres: postgres,
                                                      logger: makeLogger()) { printNotice($0) })
            }
            return results
        }

        func run() async throws {
            let results = try await Self.measure(keys: keys, batch: batch, backend: backend, workDir: workDir,
                                                 postgres: storage.catalog)
            if json {
                print(BenchJSON.object([
                    "rotate": .array(results.map(\.json)), "figures": .array(results.map(\.figure.json)),
                ]).text)
                return
            }
            BenchCommand.printFigures(results.map(\.figure))
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
            BenchCommand.printFigures(result.figures)
        }
    }

    struct EndToEnd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "e2e",
            abstract: "Upload and read an extract through a real vaultd over TLS on loopback, beside dd, a plain HTTPS "
                + "download and (with --catalog and --blobs) plain S3; memory and /healthz under concurrent reads.")

        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Extract size in MiB.") var sizeMib = 1024
        @Option(help: "Reads at once for the memory and /healthz figures.") var concurrency = 8
        @Option(help: ArgumentHelp("Directory on the disk to measure (default: the current directory).",
                                   valueName: "path"))
        var workDir = "."
        @OptionGroup var storage: ScaleOutOptions

        func validate() throws {
            guard (1...65536).contains(sizeMib) else { throw ValidationError("--size-mib must be 1...65536") }
            guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency must be 1...64") }
            guard (storage.catalog == nil) == (storage.blobs == nil) else {
                throw ValidationError("--catalog, --blobs and --s3-endpoint go together")
            }
        }

        func run() async throws {
            let result = try await EndToEndBenchmark(
                payloadBytes: sizeMib << 20, concurrency: concurrency, workDirectory: workDir,
                vaultdPath: siblingExecutable("vaultd"), scaleOut: storage.scaleOut
            ).run(logger: makeLogger()) { printNotice($0) }
            if json {
                print(result.json.text)
                return
            }
            BenchCommand.printFigures(result.figures)
            func f(_ v: Double) -> String { String(format: "%.0f", v) }
            print("concurrent reads (embedded): \(result.embedded.concurrentReads) x \(sizeMib) MiB at "
                  + "\(f(result.embedded.concurrentReadMBps)) MB/s in all; /healthz p50 "
                  + String(format: "%.1f", result.embedded.healthzUnderLoad.p50 * 1000) + " ms, max "
                  + String(format: "%.1f", result.embedded.healthzUnderLoad.max * 1000) + " ms")
            print("remote force (custody service over mTLS, the vault's client): upload \(f(result.remoteUploadMBps)) "
                  + "MB/s, signed read \(f(result.remoteReadMBps)) MB/s")
            print("in-process Cobblestone: encrypt \(f(result.cobblestoneEncryptMBps)) MB/s, decrypt "
                  + "\(f(result.cobblestoneDecryptMBps)) MB/s")
        }
    }

    struct All: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Every bench in one run (crypto, rotate, shred, e2e), with a report and a chart.",
            discussion: """
                With --report DIR: DIR/bench.json (every figure, JSON numbers), DIR/bench.md (a table) and \
                DIR/bench.svg (each figure against its target). With --catalog, --blobs and --s3-endpoint, the \
                rotation and the transfers run on PostgreSQL and S3 too.
                """)

        @Option(help: ArgumentHelp("Write bench.json, bench.md and bench.svg here.", valueName: "dir"))
        var report: String?
        @Flag(help: "One JSON object on stdout.") var json = false
        @Option(help: "Extract size in MiB for e2e.") var sizeMib = 1024
        @Option(help: "Concurrent reads in e2e.") var concurrency = 8
        @Option(help: "Wrapped keys to rewrap.") var keys = 100_000
        @Option(help: "Expired archives to shred.") var archives = 10_000
        @Option(help: ArgumentHelp("Scratch directory (default: the current directory).", valueName: "path"))
        var workDir = "."
        @OptionGroup var storage: ScaleOutOptions

        func run() async throws {
            var figures: [BenchFigure] = []
            printNotice("crypto...")
            figures += try await CryptoBenchmark(payloadBytes: min(sizeMib, 256) << 20, runs: 3, unwraps: 20_000)
                .run(logger: makeLogger()) { printNotice($0) }.figures
            printNotice("rotate...")
            figures += try await Rotate.measure(keys: keys, batch: 2_000, backend: "keyring", workDir: workDir,
                                                postgres: storage.catalog).map(\.figure)
            printNotice("shred...")
            figures += try await LifecycleBenchmark(workDirectory: workDir)
                .shred(archives: archives, batch: 64, logger: makeLogger()) { printNotice($0) }.figures
            printNotice("e2e...")
            figures += try await EndToEndBenchmark(
                payloadBytes: sizeMib << 20, concurrency: concurrency, workDirectory: workDir,
                vaultdPath: siblingExecutable("vaultd"), scaleOut: storage.scaleOut
            ).run(logger: makeLogger()) { printNotice($0) }.figures
            let when = ISO8601DateFormatter().string(from: Date())
            let report = BenchReport(figures: figures, title: "vault bench all, \(when), "
                                     + "\(ProcessInfo.processInfo.activeProcessorCount) cores")
            if let directory = self.report {
                try report.write(to: directory)
                printNotice("report written to \(directory)/bench.svg, bench.md and bench.json")
            }
            if json {
                print(report.json.text)
            } else {
                BenchCommand.printFigures(figures)
                print("\(figures.filter(\.met).count) of \(figures.count) figures meet their targets")
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
            BenchCommand.printFigures(result.figures)
            print("keyring unwrap (\(result.unwrapCount)): p50 " + String(format: "%.2f", result.unwrapP50Microseconds)
                + " us")
        }
    }
}

