import Foundation
import Testing
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `Tests/interop/api_fuzz.py` against a real vaultd (`RunningVault`, keyring custody on the embedded default): a
/// bounded run of random traffic (route shapes from /v1/openapi.json with mutated ids, headers and bodies; cut-off,
/// stalled and chunked uploads; malformed HTTP and TLS; slowloris connections; bursts of connections) with the real
/// principals' tokens for a share of it. The script asserts that vaultd stays up and answers /healthz in time, that
/// every error is the JSON error document, that nothing answers 5xx, that no token comes back, and that the known
/// extract seeded here (through the real CLI) is neither lost nor replaced by a half-written upload.
///
/// `VAULT_FUZZ_SEED` replays a run's requests (the seed is printed either way), `VAULT_FUZZ_SECONDS` (default 60)
/// sets the length of the traffic, `VAULT_FUZZ_HEALTH_SECONDS` (default 5) the bound on every /healthz answer.
@Suite("vaultd under random API traffic (Tests/interop/api_fuzz.py)", .serialized)
struct APIFuzzTests {
    static let script = TestVectors.packageRoot.appendingPathComponent("Tests/interop/api_fuzz.py").path

    /// The token names the script knows (a role, or another force's principal) and the principals behind them.
    static let principals: [(name: String, principal: String)] = [
        ("uploader", "ingest-wmp"), ("analyst", "analyst-1"), ("custodian", "custodian-wmp"),
        ("custodian2", "custodian-2"), ("ops", "ops-1"), ("dpo", "dpo-wmp"),
        ("other-analyst", "analyst-gmp"), ("other-uploader", "ingest-gmp"),
    ]

    /// What a crashed or trapped Swift process leaves in its standard error.
    static let crashMarkers = ["Fatal error", "Program crashed", "crashed:", "Stack dump", "Current stack trace",
                               "Backtrace", "Precondition failed", "Assertion failed", "Segmentation fault",
                               "SIGSEGV", "SIGILL", "SIGABRT", "SIGBUS", "SIGTRAP"]

    @Test("random API traffic: vaultd stays up, errors are JSON, no 5xx, no token echoed, nothing lost or half-visible",
          .timeLimit(.minutes(8)))
    func randomTraffic() async throws { try await TestBackend.keyringEmbedded.run {
        let environment = ProcessInfo.processInfo.environment
        let seconds = min(max(Int(environment["VAULT_FUZZ_SECONDS"] ?? "") ?? 60, 5), 600)
        let healthBound = Double(environment["VAULT_FUZZ_HEALTH_SECONDS"] ?? "") ?? 5
        let seed = environment["VAULT_FUZZ_SEED"].flatMap { UInt32($0) } ?? UInt32.random(in: 1...UInt32.max)
        let vault = try await RunningVault(embedded: true)
        let directory = vault.directory

        // Each token in a file of its own (0600): the script reads them there, never from its command line.
        var tokenArguments: [String] = []
        for (name, principal) in Self.principals {
            let path = directory.file("fuzz-\(name).token")
            let token = try #require(vault.tokens[principal], "no token for \(principal)")
            #expect(FileManager.default.createFile(atPath: path, contents: Data(token.utf8),
                                                   attributes: [.posixPermissions: 0o600]))
            tokenArguments += ["--token", "\(name)=\(path)"]
        }
        func cli(_ arguments: [String], as name: String) throws -> CommandResult {
            try Binaries.run("vault", arguments, environment: [
                "VAULT_ADDR": "https://127.0.0.1:\(vault.port)", "VAULT_CACERT": vault.pki.caCertificate,
                "VAULT_TOKEN_FILE": directory.file("fuzz-\(name).token"),
            ], currentDirectory: directory.path)
        }

        // The known data, through the real CLI: an extract as the uploader, and a use case that lets the analyst
        // read it and whatever the fuzzer completes in its own datasets.
        let known = testBytes(count: 300_000, seed: 0xF022)
        _ = try directory.write("known.csv", known)
        let uploaded = try cli(["upload", "--force", "wmp", "--dataset", "crime", "known.csv"], as: "uploader")
        try #require(uploaded.status == 0, "\(uploaded.stderr)")
        let useCase = try cli(["use-case", "put", "--force", "wmp", "--id", "fuzz-reads", "--description",
                               "reads checked by the API fuzzer", "--lawful-basis", "test fixture",
                               "--dataset", "crime", "--dataset", "fuzz-a", "--dataset", "fuzz-b",
                               "--principal", "analyst-1"], as: "custodian")
        try #require(useCase.status == 0, "\(useCase.stderr)")
        // The same extract sealed for the known dataset: the fuzzer only ever sends it truncated, cut or altered.
        let sealed = try vault.offline("encrypt", "wmp", ["--dataset", "crime", "--in", "known.csv",
                                                          "--out", "known.vault"])
        try #require(sealed.status == 0, "\(sealed.stderr)")

        let python = environment["VAULT_PYTHON"] ?? "/usr/bin/python3"
        var arguments = [Self.script, "--addr", "https://127.0.0.1:\(vault.port)", "--ca-file", vault.pki.caCertificate,
                         "--seed", String(seed), "--duration", String(seconds), "--health-timeout", String(healthBound),
                         "--vaultd-pid", String(vault.process.processIdentifier),
                         "--force", "wmp", "--other-force", "gmp", "--dataset", "crime", "--use-case", "fuzz-reads",
                         "--fuzz-datasets", "fuzz-a,fuzz-b", "--known-file", directory.file("known.csv"),
                         "--sealed-file", directory.file("known.vault"),
                         "--client-cert", vault.pki.clientCertificate("analyst-1"),
                         "--client-key", vault.pki.clientKey("analyst-1"),
                         "--foreign-cert", vault.pki.clientCertificate("intruder"),
                         "--foreign-key", vault.pki.clientKey("intruder"),
                         "--violations-out", directory.file("fuzz-violations.ndjson")] + tokenArguments
        for (name, principal) in Self.principals { arguments += ["--principal-id", "\(name)=\(principal)"] }

        // The script bounds itself (its traffic, every socket, a watchdog); this bounds it once more from outside.
        let output = directory.file("fuzz-output.txt")
        // A bare name (VAULT_PYTHON=python3) is looked up in PATH.
        let (executable, all) = python.hasPrefix("/") ? (python, arguments) : ("/usr/bin/env", [python] + arguments)
        let status = try await Self.run(executable, all, output: output, limit: .seconds(seconds + 240))
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        print(text.split(separator: "\n").filter { !$0.hasPrefix("VIOLATION") && !$0.hasPrefix("  request:") }
            .joined(separator: "\n"))
        let outcome = status.map { "exit status \($0)" } ?? "no exit: killed after its time limit"
        #expect(status == 0, "api_fuzz.py (seed \(seed)) failed, \(outcome):\n\(text.suffix(12_000))")
        #expect(text.contains("VERDICT: PASS"), "no passing verdict from api_fuzz.py (seed \(seed))")

        // vaultd itself: still running, and nothing in its log of a crash, a trap or a stack trace.
        #expect(vault.process.isRunning, "vaultd exited during the fuzz run (seed \(seed))")
        let log = (try? String(contentsOfFile: directory.file("vaultd.log"), encoding: .utf8)) ?? ""
        for marker in Self.crashMarkers {
            if let range = log.range(of: marker) {
                let start = log.index(range.lowerBound, offsetBy: -300, limitedBy: log.startIndex) ?? log.startIndex
                let context = log[start...].prefix(2000)
                Issue.record("vaultd's log contains \"\(marker)\" after the fuzz run (seed \(seed)):\n\(context)")
            }
        }
        // No token reached vaultd's log either.
        for (_, principal) in Self.principals {
            #expect(!log.contains(vault.tokens[principal]!), "vaultd's log contains the token of \(principal)")
        }
    } }

    /// Runs `executable` with only PATH and HOME in its environment, its standard output and error into `output`,
    /// without blocking a thread of the test's pool; kills it (SIGKILL) after `limit`. Its exit status, or nil when
    /// it was killed for overrunning.
    static func run(_ executable: String, _ arguments: [String], output: String, limit: Duration) async throws
        -> Int32?
    {
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": "/tmp",
                               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"]
        process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = ContinuousClock.now + limit
        while process.isRunning, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(200))
        }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
