import ArgumentParser
import AsyncHTTPClient
import KeyCustody
import NIOSSL
import Logging
import Vault

#if canImport(Glibc)
import Glibc
#endif

@main
struct VaultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault",
        abstract: "The police data vault CLI: keyrings, sealed extract files and benchmarks.",
        discussion: """
            Passphrases come from VAULT_PASSPHRASE or --passphrase-file, or a terminal prompt; never from an argument.
            Exit codes: 0 ok, 1 failure, 2 passphrase, 3 integrity, 4 wrong force, 5 locked, 6 malformed input,
            7 key state, 8 output exists or conflict, 9 refused (403), 10 not signed in (401), 11 not found,
            12 unavailable (503), 13 shredded (410), 64 usage.
            """,
        subcommands: [
            KeyringCommand.self,
            HSMCommand.self, EncryptCommand.self, DecryptCommand.self, LoginCommand.self, UploadCommand.self,
            ReadCommand.self, ExtractsCommand.self, ArchivesCommand.self, UseCaseCommand.self, ExportCommand.self,
            AuditCommand.self, KeysCommand.self, ShredCommand.self, CertificatesCommand.self, BenchCommand.self,
            AdminCommand.self, CustodyCommand.self, TokensCommand.self, DatasetsCommand.self,
        ]
    )

    /// Runs the command; every failure becomes one line on stderr and a distinct exit code.
    static func main() async {
        // Keys and passphrases pass through this process: no core dump, and no other process of the user reads it.
        DaemonProcess.protectMemory()
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(reporting: error)
        }
    }

    static func exit(reporting error: any Error) -> Never {
        if error is CustodyError || error is VaultError {
            printError(String(describing: error))
            Glibc.exit(ExitStatus.forError(error).rawValue)
        }
        if let error = error as? RemoteError {
            printError(error.description)
            Glibc.exit(ExitStatus.forRemote(error))
        }
        if let error = error as? ServerUnreachable {
            printError(error.description)
            Glibc.exit(ExitStatus.unavailable.rawValue)
        }
        if let code = error as? ExitCode { Glibc.exit(code.rawValue) }
        if let error = error as? NIOSSLError {
            printError("TLS failure talking to vaultd: \(error)")
            Glibc.exit(ExitStatus.failure.rawValue)
        }
        if let error = error as? HTTPClientError {
            printError("cannot reach vaultd: \(error)")
            Glibc.exit(ExitStatus.failure.rawValue)
        }
        let code = exitCode(for: error)
        if code == .success {
            // --help, --version: ArgumentParser prints them itself.
            exit(withError: error)
        }
        let message = (message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid command line")
            .replacingOccurrences(of: "Error: ", with: "")
        // A command line ArgumentParser refused is a usage error; anything else (a connection refused by the
        // server, say) is a failure of the command, not of how it was typed.
        guard code == .validationFailure else {
            printError(message)
            Glibc.exit(ExitStatus.failure.rawValue)
        }
        printError("\(message) (see `vault --help`)")
        Glibc.exit(ExitStatus.usage.rawValue)
    }
}

func printError(_ message: String) {
    var line = "vault: error: " + message.replacingOccurrences(of: "\n", with: " ") + "\n"
    line.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

/// Progress and notices go to stderr so stdout stays clean for data and `--json`.
func printNotice(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = Substring(self)
        while let range = rest.range(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}

extension Substring {
    func range(of target: String) -> Range<Substring.Index>? {
        var index = startIndex
        while index < endIndex {
            if self[index...].hasPrefix(target) {
                return index..<self.index(index, offsetBy: target.count)
            }
            index = self.index(after: index)
        }
        return nil
    }
}

/// Options shared by commands that unlock a keyring.
struct PassphraseOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("File holding the keyring passphrase (else VAULT_PASSPHRASE, else a prompt).",
                                            valueName: "path"))
    var passphraseFile: String?

    /// The passphrase from --passphrase-file, VAULT_PASSPHRASE, or the terminal.
    func read(creating: Bool = false) throws -> SecureBytes {
        if let passphraseFile { return try SecretSource.file(passphraseFile).read() }
        if getenv("VAULT_PASSPHRASE") != nil {
            defer { SecretSource.scrubEnvironment("VAULT_PASSPHRASE") }
            return try SecretSource.environment("VAULT_PASSPHRASE").read()
        }
        guard Passphrase.canPrompt else {
            throw CustodyError(.passphraseUnavailable,
                               "no passphrase: set VAULT_PASSPHRASE or pass --passphrase-file PATH")
        }
        return try Passphrase.prompt(creating ? "New keyring passphrase: " : "Keyring passphrase: ",
                                     confirm: creating)
    }
}

/// Logging for the CLI: warnings and above on stderr, so custody's per-unwrap records do not clutter output.
func makeLogger() -> Logger {
    var logger = Logger(label: "vault") { label in StreamLogHandler.standardError(label: label) }
    logger.logLevel = getenv("VAULT_LOG_LEVEL").flatMap { Logger.Level(rawValue: String(cString: $0)) } ?? .warning
    return logger
}

/// Who is acting, for custody's justification log: the local user for offline commands.
func localPrincipal() -> String {
    if let pw = getpwuid(getuid()), let name = pw.pointee.pw_name { return "local:" + String(cString: name) }
    return "local:uid-\(getuid())"
}

func requestID() -> String { "cli-" + Hex.encode(SecureRandom.bytes(count: 8)) }
