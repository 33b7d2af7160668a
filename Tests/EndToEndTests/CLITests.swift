import Foundation
import KeyCustody
import Testing
import VaultTestSupport

/// End-to-end: the real `vault` binary, driven as an operator's script would, including every failure the issue
/// names. Each failure must be one line on stderr, a distinct non-zero exit code, and no output file.
@Suite("vault CLI end to end")
struct CLITests {
    let directory: TemporaryDirectory
    let env = ["VAULT_PASSPHRASE": "correct horse battery staple"]

    init() throws { directory = try TemporaryDirectory("vault-e2e") }

    func vault(_ arguments: String..., environment: [String: String]? = nil) throws -> CommandResult {
        try Binaries.run("vault", arguments, environment: environment ?? env, currentDirectory: directory.path)
    }

    /// A failure: the exit code, exactly one line on stderr that mentions `mentioning`, nothing on stdout.
    func expectFailure(_ result: CommandResult, exit: Int32, mentioning: String,
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == exit, "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr should be one line: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.hasPrefix("vault: error: "), sourceLocation: sourceLocation)
        #expect(result.stderr.contains(mentioning), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stdout.isEmpty, sourceLocation: sourceLocation)
    }

    func initKeyring(_ force: String, _ name: String) throws {
        let result = try vault("keyring", "init", "--force", force, "--out", name, "--kdf", "interactive")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("fmk:\(force):1"))
    }

    @Test("init, show, rotate, encrypt, decrypt: the documented happy path")
    func happyPath() throws {
        try initKeyring("wmp", "wmp.keyring")
        let csv = "id,offence,date\n1,burglary,2026-01-02\n2,assault,2026-01-03\n"
        _ = try directory.write("crime.csv", Array(csv.utf8))
        let sealed = try vault("encrypt", "--keyring", "wmp.keyring", "--dataset", "crime-records", "--in",
                               "crime.csv", "--out", "crime.csv.vault")
        #expect(sealed.status == 0, "\(sealed.stderr)")
        #expect(sealed.stdout.contains("fmk:wmp:1"))
        let sealedBytes = try directory.read("crime.csv.vault")
        #expect(!String(decoding: sealedBytes, as: UTF8.self).contains("burglary"))

        let rotated = try vault("keyring", "rotate", "--keyring", "wmp.keyring")
        #expect(rotated.status == 0)
        #expect(rotated.stdout.contains("fmk:wmp:2 is active, fmk:wmp:1 is retiring"))

        let show = try vault("keyring", "show", "--keyring", "wmp.keyring", "--json")
        #expect(show.status == 0)
        let json = try JSONSerialization.jsonObject(with: Data(show.stdout.utf8)) as? [String: Any]
        let keys = json?["keys"] as? [[String: Any]] ?? []
        #expect(keys.map { $0["id"] as? String } == ["fmk:wmp:1", "fmk:wmp:2"])
        #expect(keys.map { $0["state"] as? String } == ["retiring", "active"])
        #expect(keys.allSatisfy { $0["key"] == nil })
        let table = try vault("keyring", "show", "--keyring", "wmp.keyring")
        #expect(table.stdout.contains("fmk:wmp:2  master   active"))

        let decrypted = try vault("decrypt", "--keyring", "wmp.keyring", "--in", "crime.csv.vault", "--out", "back.csv")
        #expect(decrypted.status == 0, "\(decrypted.stderr)")
        #expect(try directory.read("back.csv") == Array(csv.utf8))
    }

    @Test("the passphrase comes from a file as well as the environment; none at all is refused without a terminal")
    func passphraseSources() throws {
        _ = try directory.write("pass", Array("a passphrase in a file\n".utf8))
        let created = try vault("keyring", "init", "--force", "gmp", "--out", "gmp.keyring", "--kdf", "interactive",
                                "--passphrase-file", "pass", environment: [:])
        #expect(created.status == 0, "\(created.stderr)")
        let shown = try vault("keyring", "show", "--keyring", "gmp.keyring", "--passphrase-file", "pass",
                              environment: [:])
        #expect(shown.status == 0)
        expectFailure(try vault("keyring", "show", "--keyring", "gmp.keyring", environment: [:]), exit: 2,
                      mentioning: "VAULT_PASSPHRASE")
        expectFailure(try vault("keyring", "init", "--force", "met", "--out", "met.keyring",
                                environment: ["VAULT_PASSPHRASE": "short"]), exit: 2, mentioning: "too short")
        #expect(!directory.exists("met.keyring"))
    }

    @Test("passwd: the new passphrase opens the keyring, the old one no longer does")
    func passwd() throws {
        try initKeyring("wmp", "wmp.keyring")
        let changed = try vault("keyring", "passwd", "--keyring", "wmp.keyring",
                                environment: env.merging(["VAULT_NEW_PASSPHRASE": "the next passphrase"]) { $1 })
        #expect(changed.status == 0, "\(changed.stderr)")
        expectFailure(try vault("keyring", "show", "--keyring", "wmp.keyring"), exit: 2, mentioning: "wrong passphrase")
        #expect(try vault("keyring", "show", "--keyring", "wmp.keyring",
                          environment: ["VAULT_PASSPHRASE": "the next passphrase"]).status == 0)
    }

    @Test("failures: wrong passphrase, tampered, truncated, wrong keyring for the force, locked, exists, bad ids")
    func failures() throws {
        try initKeyring("wmp", "wmp.keyring")
        try initKeyring("gmp", "gmp.keyring")
        _ = try directory.write("data.bin", testBytes(count: 100_000))
        #expect(try vault("encrypt", "--keyring", "wmp.keyring", "--dataset", "intel", "--in", "data.bin",
                          "--out", "data.vault").status == 0)
        let original = try directory.read("data.vault")

        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring", "--in", "data.vault", "--out", "out.bin",
                                environment: ["VAULT_PASSPHRASE": "not the right one"]),
                      exit: 2, mentioning: "wrong passphrase")

        var tampered = original
        tampered[tampered.count - 5000] ^= 0x01
        _ = try directory.write("tampered.vault", tampered)
        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring", "--in", "tampered.vault", "--out", "out.bin"),
                      exit: 3, mentioning: "does not authenticate")

        _ = try directory.write("truncated.vault", Array(original.prefix(original.count - 1000)))
        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring", "--in", "truncated.vault", "--out", "out.bin"),
                      exit: 3, mentioning: "truncated")

        expectFailure(try vault("decrypt", "--keyring", "gmp.keyring", "--in", "data.vault", "--out", "out.bin"),
                      exit: 4, mentioning: "belongs to force wmp")

        var header = original
        header[header.firstIndex(of: UInt8(ascii: "{"))!] = UInt8(ascii: "[")
        _ = try directory.write("header.vault", header)
        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring", "--in", "header.vault", "--out", "out.bin"),
                      exit: 6, mentioning: "header")

        #expect(!directory.exists("out.bin"))
        #expect(try directory.entries().filter { $0.hasPrefix(".") }.isEmpty, "temporary files left behind")

        _ = try directory.write("exists.bin", [1])
        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring", "--in", "data.vault", "--out", "exists.bin"),
                      exit: 8, mentioning: "already exists")
        #expect(try directory.read("exists.bin") == [1])

        let keyringBytes = try directory.read("wmp.keyring")
        _ = try directory.write("cut.keyring", Array(keyringBytes.prefix(keyringBytes.count / 2)))
        expectFailure(try vault("keyring", "show", "--keyring", "cut.keyring"), exit: 6, mentioning: "truncated")
        expectFailure(try vault("encrypt", "--keyring", "wmp.keyring", "--dataset", "../etc", "--in", "data.bin",
                                "--out", "x.vault"), exit: 6, mentioning: "invalid dataset id")
        expectFailure(try vault("keyring", "init", "--force", "Wmp", "--out", "w.keyring"), exit: 6,
                      mentioning: "invalid force id")
        expectFailure(try vault("keyring", "init", "--force", "wmp", "--out", "wmp.keyring", "--kdf", "interactive"),
                      exit: 8, mentioning: "already exists")
        #expect(try directory.read("wmp.keyring") == keyringBytes)
        expectFailure(try vault("keyring", "frobnicate"), exit: 64, mentioning: "frobnicate")
        expectFailure(try vault("decrypt", "--keyring", "wmp.keyring"), exit: 64, mentioning: "--in")
    }

    @Test("a server that is not there is exit 12 naming the URL tried, not a usage error; a bad option is exit 64")
    func unreachableServer() throws {
        let url = "https://127.0.0.1:\(try freeLoopbackPort())"
        let unreachable = try vault("extracts", "list", "--force", "wmp", "--dataset", "crime", "--server", url,
                                    environment: ["VAULT_TOKEN": "vt_" + String(repeating: "0", count: 64)])
        expectFailure(unreachable, exit: 12, mentioning: "cannot reach \(url)")
        #expect(!unreachable.stderr.contains("--help"), "\(unreachable.stderr)")
        expectFailure(try vault("extracts", "list", "--no-such-option"), exit: 64, mentioning: "--help")
    }

    @Test("a decrypt killed midway leaves no partial plaintext behind")
    func killedDecrypt() throws {
        try initKeyring("wmp", "wmp.keyring")
        let big = directory.file("big.bin")
        // 256 MiB of zeros: fast to make, slow enough to decrypt that the kill lands mid-stream.
        FileManager.default.createFile(atPath: big, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        try handle.truncate(atOffset: 256 << 20)
        try handle.close()
        #expect(try vault("encrypt", "--keyring", "wmp.keyring", "--dataset", "intel", "--in", "big.bin",
                          "--out", "big.vault").status == 0)
        try FileManager.default.removeItem(atPath: big)
        let before = try directory.entries()

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Binaries.path("vault"))
        process.arguments = ["decrypt", "--keyring", "wmp.keyring", "--in", "big.vault", "--out", "big.out"]
        process.environment = env
        process.currentDirectoryURL = URL(fileURLWithPath: directory.path)
        try process.run()
        // Wait until the decryption is visibly under way (the process has written output), then kill it hard.
        let deadline = Date().addingTimeInterval(30)
        var writing = false
        while Date() < deadline, process.isRunning, !writing {
            let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/fd")) ?? []
            writing = fds.contains { fd in
                let target = (try? FileManager.default.destinationOfSymbolicLink(
                    atPath: "/proc/\(process.processIdentifier)/fd/\(fd)")) ?? ""
                return target.hasPrefix(directory.path) && target.contains("(deleted)") || target.hasSuffix(".partial")
            }
            // A blocking sleep on purpose: the watcher must see the output within milliseconds of its appearing,
            // so it keeps its thread rather than wait for a turn on the cooperative pool.
            Thread.sleep(forTimeInterval: 0.01)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(writing, "the decrypt was not caught mid-stream")
        #expect(process.terminationReason == .uncaughtSignal)
        let after = try directory.entries()
        #expect(after == before, "left behind: \(Set(after).subtracting(before))")
    }

    @Test("a second writer is refused while another process holds the keyring lock")
    func locked() throws {
        try initKeyring("wmp", "wmp.keyring")
        // Hold the writer lock from this (separate) process, as a running vaultd or another custodian would.
        let holder = try ExclusiveFileLock(path: directory.file("wmp.keyring.lock"), protecting: "test")
        let result = try vault("keyring", "rotate", "--keyring", "wmp.keyring")
        expectFailure(result, exit: 5, mentioning: "locked by another writer (pid \(getpid()))")
        // Readers need no lock.
        #expect(try vault("keyring", "show", "--keyring", "wmp.keyring").status == 0)
        withExtendedLifetime(holder) {}
        // Released: the writer gets through.
        _ = consume holder
        #expect(try vault("keyring", "rotate", "--keyring", "wmp.keyring").status == 0)
    }

    @Test("no secret on the command line: the CLI has no option that takes a passphrase")
    func noSecretArguments() throws {
        for command in [["keyring", "init"], ["keyring", "rotate"], ["keyring", "show"], ["keyring", "passwd"],
                        ["encrypt"], ["decrypt"]] {
            let help = try Binaries.run("vault", command + ["--help"])
            #expect(help.status == 0)
            let options = help.stdout.split(separator: "\n").filter { $0.contains("--") }
            #expect(!options.contains { $0.contains("--passphrase ") || $0.contains("--password") || $0.contains("--pin") },
                    "\(command): \(options)")
        }
    }

    @Test("a missing or empty token file is exit 6 naming it, not the passphrase code")
    func tokenFile() throws {
        let url = "https://127.0.0.1:\(try freeLoopbackPort())"
        let missing = try vault("use-case", "list", "--force", "wmp",
                                environment: ["VAULT_ADDR": url, "VAULT_TOKEN_FILE": directory.file("no-such-token")])
        expectFailure(missing, exit: 6, mentioning: "cannot read the token file \(directory.file("no-such-token"))")
        _ = try directory.write("empty-token", [])
        let empty = try vault("use-case", "list", "--force", "wmp",
                              environment: ["VAULT_ADDR": url, "VAULT_TOKEN_FILE": directory.file("empty-token")])
        expectFailure(empty, exit: 6, mentioning: "the token file \(directory.file("empty-token")) is empty")
    }

    @Test("bench all --report writes every figure as JSON numbers, a table and a chart with a bar per figure")
    func benchReport() throws {
        let report = directory.file("report")
        let result = try vault("bench", "all", "--report", report, "--json", "--size-mib", "8", "--concurrency", "2",
                               "--keys", "2000", "--archives", "100", "--work-dir", directory.path)
        #expect(result.status == 0, "\(result.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report + "/bench.json")))
            as? [String: Any] ?? [:]
        let figures = json["figures"] as? [[String: Any]] ?? []
        let keys = Set(figures.compactMap { $0["key"] as? String })
        for key in ["cobblestone_encrypt", "keyring_unwrap_p99", "rotation_keyring_sqlite", "shred_seconds", "shred_p99",
                    "embedded_upload", "embedded_read", "embedded_reads_rss_growth", "embedded_healthz_p99"] {
            #expect(keys.contains(key), "\(key) missing from \(keys.sorted())")
        }
        for figure in figures {
            for number in ["measured", "score"] {
                #expect(figure[number] is NSNumber, "\(figure["key"] ?? "?").\(number) = \(String(describing: figure[number]))")
            }
            #expect(figure["met"] is Bool)
        }
        // The same object on stdout.
        let printed = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        #expect((printed["figures"] as? [Any])?.count == figures.count)
        let table = try String(contentsOfFile: report + "/bench.md", encoding: .utf8)
        #expect(table.split(separator: "\n").count == figures.count + 3)  // the title, the header and its rule
        let svg = try String(contentsOfFile: report + "/bench.svg", encoding: .utf8)
        #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        #expect(svg.components(separatedBy: "<rect").count - 1 == figures.count + 1)  // a bar each, and the background
        #expect(svg.hasSuffix("</svg>\n"))
    }

    @Test("bench crypto --json prints the documented keys, each figure a JSON number")
    func benchJSON() throws {
        let result = try vault("bench", "crypto", "--json", "--size-mib", "8", "--runs", "1", "--unwraps", "1000")
        #expect(result.status == 0, "\(result.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any] ?? [:]
        for key in ["cobblestone_encrypt_gbps", "cobblestone_decrypt_gbps", "openssl_aes256gcm_gbps", "ratio_encrypt",
                    "ratio_decrypt", "unwrap_p50_us", "unwrap_p99_us"] {
            let value = json[key] as? NSNumber
            #expect(value != nil && value!.doubleValue > 0, "\(key) = \(String(describing: json[key]))")
        }
    }
}

/// The formats are a contract: an independent implementation (Tests/interop/vault_format.py, written from DESIGN
/// section 5 with Python's `cryptography` and libsodium) reads what `vault` writes and writes what `vault` reads.
@Suite("format interoperability with an independent implementation")
struct InteropTests {
    let directory: TemporaryDirectory
    let env = ["VAULT_PASSPHRASE": "correct horse battery staple"]
    static let script = TestVectors.packageRoot.appendingPathComponent("Tests/interop/vault_format.py").path
    static let python = ProcessInfo.processInfo.environment["VAULT_PYTHON"] ?? "/usr/bin/python3"

    init() throws { directory = try TemporaryDirectory("vault-interop") }

    func python(_ arguments: String...) throws -> CommandResult {
        try Binaries.run(Self.python, [Self.script] + arguments, environment: env, currentDirectory: directory.path)
    }

    func vault(_ arguments: String...) throws -> CommandResult {
        try Binaries.run("vault", arguments, environment: env, currentDirectory: directory.path)
    }

    @Test("what vault writes, the independent reader decrypts; `keyring show` never prints key bytes")
    func independentReader() throws {
        #expect(try vault("keyring", "init", "--force", "wmp", "--out", "wmp.keyring", "--kdf", "interactive").status == 0)
        #expect(try vault("keyring", "rotate", "--keyring", "wmp.keyring").status == 0)
        let payload = testBytes(count: 16_384 * 3 + 17)
        _ = try directory.write("in.bin", payload)
        #expect(try vault("encrypt", "--keyring", "wmp.keyring", "--dataset", "custody", "--in", "in.bin",
                          "--out", "in.vault").status == 0)
        let read = try python("decrypt", "wmp.keyring", "in.vault", "py.bin")
        #expect(read.status == 0, "\(read.stderr)")
        #expect(try directory.read("py.bin") == payload)

        let keys = try python("keys", "wmp.keyring")
        #expect(keys.status == 0, "\(keys.stderr)")
        let parsed = try JSONSerialization.jsonObject(with: Data(keys.stdout.utf8)) as? [String: Any]
        let entries = parsed?["keys"] as? [[String: Any]] ?? []
        #expect(entries.count == 2)
        let show = try vault("keyring", "show", "--keyring", "wmp.keyring")
        let showJSON = try vault("keyring", "show", "--keyring", "wmp.keyring", "--json")
        for entry in entries {
            let key = try #require(entry["key"] as? String)
            #expect(!show.stdout.contains(key) && !show.stderr.contains(key))
            #expect(!showJSON.stdout.contains(key))
        }
    }

    @Test("what the independent writer produces, vault decrypts; a tampered copy is refused")
    func independentWriter() throws {
        #expect(try python("init", "met", "met.keyring").status == 0)
        let payload = testBytes(count: 40_000, seed: 7)
        _ = try directory.write("in.bin", payload)
        let written = try python("encrypt", "met.keyring", "intel", "in.bin", "py.vault")
        #expect(written.status == 0, "\(written.stderr)")
        let decrypted = try vault("decrypt", "--keyring", "met.keyring", "--in", "py.vault", "--out", "out.bin")
        #expect(decrypted.status == 0, "\(decrypted.stderr)")
        #expect(try directory.read("out.bin") == payload)
        let show = try vault("keyring", "show", "--keyring", "met.keyring")
        #expect(show.stdout.contains("fmk:met:1  master   active"))

        var tampered = try directory.read("py.vault")
        tampered[tampered.count - 100] ^= 0x10
        _ = try directory.write("bad.vault", tampered)
        let refused = try vault("decrypt", "--keyring", "met.keyring", "--in", "bad.vault", "--out", "bad.bin")
        #expect(refused.status == 3)
        #expect(!directory.exists("bad.bin"))
    }
}

@Suite("vaultd custody check")
struct CustodyCheckTests {
    @Test("every force that opens is reported ok; a missing passphrase fails that force and the exit code")
    func check() throws {
        let directory = try TemporaryDirectory("vaultd-check")
        let env = ["VAULT_PASSPHRASE": "correct horse battery staple"]
        for force in ["wmp", "gmp"] {
            let created = try Binaries.run("vault", ["keyring", "init", "--force", force, "--out", "\(force).keyring",
                                                     "--kdf", "interactive"], environment: env,
                                           currentDirectory: directory.path)
            #expect(created.status == 0, "\(created.stderr)")
        }
        let custody = try directory.write("keys.toml", Array("""
            [forces.wmp]
            backend = "keyring"
            keyring = "wmp.keyring"
            passphrase_env = "PW_WMP"

            [forces.gmp]
            backend = "keyring"
            keyring = "gmp.keyring"
            passphrase_env = "PW_GMP"
            """.utf8))
        let all = ["PW_WMP": env["VAULT_PASSPHRASE"]!, "PW_GMP": env["VAULT_PASSPHRASE"]!]
        let ok = try Binaries.run("vaultd", ["custody", "check", "--custody", custody], environment: all)
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        #expect(ok.stdout.contains("wmp: ok: fmk:wmp:1 active"))
        #expect(ok.stdout.contains("gmp: ok: fmk:gmp:1 active"))

        let missing = try Binaries.run("vaultd", ["custody", "check", "--custody", custody, "--json"],
                                       environment: ["PW_WMP": all["PW_WMP"]!])
        #expect(missing.status == 2)
        let json = try JSONSerialization.jsonObject(with: Data(missing.stdout.utf8)) as? [String: Any]
        let forces = json?["forces"] as? [[String: Any]] ?? []
        #expect(forces.map { $0["ok"] as? Bool } == [false, true])
        #expect((forces.first?["error"] as? [String: Any])?["code"] as? String == "passphrase_unavailable")
        #expect(!missing.stdout.contains(all["PW_WMP"]!))

        let wrong = try Binaries.run("vaultd", ["custody", "check", "--custody", custody],
                                     environment: ["PW_WMP": "a wrong passphrase", "PW_GMP": all["PW_GMP"]!])
        #expect(wrong.status == 2)
        #expect(wrong.stdout.contains("wmp: FAILED: wrong passphrase"))

        let bad = try directory.write("bad.toml", Array("[forces.wmp]\nbackend = \"floppy\"\n".utf8))
        let invalid = try Binaries.run("vaultd", ["custody", "check", "--custody", bad])
        #expect(invalid.status == 6)
        #expect(invalid.stderr.contains("unknown backend"))
    }
}

@Suite("passphrase prompt on a terminal")
struct PromptTests {
    static let driver = TestVectors.packageRoot.appendingPathComponent("Tests/interop/pty_run.py").path

    func onTerminal(_ arguments: [String], answers: [String], in directory: TemporaryDirectory) throws
        -> (shown: String, exit: Int32)
    {
        let result = try Binaries.run(InteropTests.python, [Self.driver, Binaries.path("vault")] + arguments,
                                      environment: ["PTY_ANSWERS": answers.joined(separator: "\n")],
                                      currentDirectory: directory.path)
        let exitLine = result.stdout.split(separator: "\n").last { $0.hasPrefix("exit=") } ?? "exit=-1"
        return (result.stdout, Int32(exitLine.dropFirst(5)) ?? -1)
    }

    @Test("without VAULT_PASSPHRASE or a file, vault asks on the terminal (twice when creating) and never echoes")
    func prompt() throws {
        let directory = try TemporaryDirectory("vault-pty")
        let typed = "typed at the terminal"
        let created = try onTerminal(["keyring", "init", "--force", "wmp", "--out", "wmp.keyring", "--kdf", "interactive"],
                                     answers: [typed, typed], in: directory)
        #expect(created.exit == 0, "\(created.shown)")
        #expect(created.shown.contains("New keyring passphrase:"))
        #expect(created.shown.contains("Repeat to confirm:"))
        #expect(!created.shown.contains(typed), "the passphrase was echoed")

        let shown = try onTerminal(["keyring", "show", "--keyring", "wmp.keyring"], answers: [typed], in: directory)
        #expect(shown.exit == 0, "\(shown.shown)")
        #expect(shown.shown.contains("fmk:wmp:1"))

        let mismatch = try onTerminal(["keyring", "init", "--force", "gmp", "--out", "gmp.keyring"],
                                      answers: [typed, "something else entirely"], in: directory)
        #expect(mismatch.exit == 2)
        #expect(mismatch.shown.contains("the two passphrases differ"))
        #expect(!directory.exists("gmp.keyring"))
    }
}
