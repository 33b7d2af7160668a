#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where a passphrase or PIN comes from. Never a command-line argument: arguments are visible to every user of the
/// machine through `/proc` and end up in shell history.
public enum SecretSource: Sendable, Equatable, CustomStringConvertible {
    /// An environment variable, by name.
    case environment(String)
    /// A file holding the secret (trailing newline characters are ignored).
    case file(String)

    public var description: String {
        switch self {
        case .environment(let name): "environment variable \(name)"
        case .file(let path): "file \(path)"
        }
    }

    /// Where a configuration table says a secret comes from: exactly one of `<name>_env` (`env`) and `<name>_file`
    /// (`file`, resolved with `resolve`); nil when neither is given. `where_` and `what` word the error.
    public static func configured(env: String?, file: String?, name: String, what: String, where where_: String,
                                  resolve: (String) -> String, invalid: (String) -> CustodyError) throws
        -> SecretSource?
    {
        switch (env, file) {
        case (let env?, nil):
            guard !env.isEmpty else { throw invalid("\(where_): \(name)_env is empty") }
            return .environment(env)
        case (nil, let file?):
            guard !file.isEmpty else { throw invalid("\(where_): \(name)_file is empty") }
            return .file(resolve(file))
        case (nil, nil):
            return nil
        default:
            throw invalid("\(where_): give \(name)_env or \(name)_file for the \(what), not both")
        }
    }

    /// Reads the secret into secure memory.
    public func read() throws -> SecureBytes {
        switch self {
        case .environment(let name):
            guard let value = getenv(name) else {
                throw CustodyError(.passphraseUnavailable, "environment variable \(name) is not set")
            }
            let length = strlen(value)
            guard length > 0 else { throw CustodyError(.passphraseUnavailable, "environment variable \(name) is empty") }
            return SecureBytes(copying: UnsafeRawBufferPointer(start: value, count: length))
        case .file(let path):
            let secret: SecureBytes
            do {
                secret = try DurableFile.readSecret(path)
            } catch let error as CustodyError {
                throw CustodyError(.passphraseUnavailable, "cannot read passphrase file: \(error.message)",
                                   underlying: error.underlying)
            }
            guard secret.count > 0 else {
                throw CustodyError(.passphraseUnavailable, "passphrase file \(path) is empty")
            }
            return secret
        }
    }

    /// Overwrites an environment variable's value in place and removes it, so the secret does not linger in the
    /// process environment (or reach a child process) after it has been read.
    public static func scrubEnvironment(_ name: String) {
        guard let value = getenv(name) else { return }
        memset(value, 0, strlen(value))
        unsetenv(name)
    }
}

/// Passphrase rules and terminal prompting.
public enum Passphrase {
    /// New passphrases must be at least this many bytes.
    public static let minimumLength = 12

    /// Refuses a passphrase too short to protect a force's keys.
    public static func checkStrength(_ passphrase: SecureBytes) throws {
        guard passphrase.count >= minimumLength else {
            throw CustodyError(.passphraseUnavailable,
                               "the new passphrase is too short: use at least \(minimumLength) characters")
        }
    }

    /// True when standard input is a terminal (so prompting makes sense).
    public static var canPrompt: Bool { isatty(STDIN_FILENO) == 1 }

    /// Prompts on the controlling terminal with echo off. With `confirm`, asks twice and insists on a match.
    public static func prompt(_ message: String, confirm: Bool = false) throws -> SecureBytes {
        let first = try promptOnce(message)
        guard confirm else { return first }
        let second = try promptOnce("Repeat to confirm: ")
        guard first == second else { throw CustodyError(.passphraseUnavailable, "the two passphrases differ") }
        return first
    }

    private static func promptOnce(_ message: String) throws -> SecureBytes {
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC)
        guard tty >= 0 else { throw CustodyError(.passphraseUnavailable, "no terminal to prompt for the passphrase") }
        defer { close(tty) }
        var original = termios()
        guard tcgetattr(tty, &original) == 0 else {
            throw CustodyError(.passphraseUnavailable, "cannot configure the terminal", underlying: errnoDescription())
        }
        var silent = original
        silent.c_lflag &= ~tcflag_t(ECHO)
        _ = tcsetattr(tty, TCSAFLUSH, &silent)
        defer {
            _ = tcsetattr(tty, TCSAFLUSH, &original)
            _ = "\n".withCString { Glibc.write(tty, $0, 1) }
        }
        _ = message.withCString { Glibc.write(tty, $0, strlen($0)) }
        let capacity = 1024
        var length = 0
        let buffer = try SecureBytes(count: capacity) { out in
            while length < capacity {
                var byte: UInt8 = 0
                let count = Glibc.read(tty, &byte, 1)
                if count < 0, errno == EINTR { continue }
                if count <= 0 || byte == 0x0A || byte == 0x0D { break }
                out[length] = byte
                length += 1
                byte = 0
            }
            if length == capacity { throw CustodyError(.passphraseUnavailable, "passphrase longer than \(capacity) bytes") }
        }
        guard length > 0 else { throw CustodyError(.passphraseUnavailable, "empty passphrase") }
        return buffer.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(length))) }
    }
}
