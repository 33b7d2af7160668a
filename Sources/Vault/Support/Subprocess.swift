import KeyCustody

#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (e.g. `openssl speed` for a baseline) and collects its standard output.
///
/// Spawned with `posix_spawn` and an explicitly empty signal mask and default signal dispositions: the Swift runtime
/// blocks signals on its threads, and a child that inherits that mask never receives SIGALRM, which is how
/// `openssl speed` times itself.
public enum Subprocess {
    /// Spawn attributes with an empty signal mask and every signal at its default disposition.
    static func cleanSignalAttributes() -> posix_spawnattr_t {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        return attributes
    }

    public struct Output: Sendable {
        public let status: Int32
        public let stdout: [UInt8]
    }

    /// Runs `executable` (looked up in PATH) with `arguments` and only PATH in its environment; stdin and stderr are
    /// /dev/null.
    public static func run(_ executable: String, _ arguments: [String]) throws -> Output {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { throw ioError("cannot create a pipe") }
        // Close-on-exec, so no other child keeps the write end open (the dup2 onto stdout clears it there).
        _ = fcntl(pipeFDs[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(pipeFDs[1], F_SETFD, FD_CLOEXEC)
        defer { close(pipeFDs[0]) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addclose(&actions, pipeFDs[0])

        var attributes = cleanSignalAttributes()
        defer { posix_spawnattr_destroy(&attributes) }

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // A minimal environment: nothing of ours (least of all a secret) reaches the helper.
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
        let variables: [String] = ["PATH=\(path)", "LC_ALL=C"]
        let environment = variables.map { strdup($0) } + [nil]
        defer { environment.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawnp(&pid, executable, &actions, &attributes, argv, environment)
        close(pipeFDs[1])
        guard status == 0 else {
            throw VaultError(.io, "cannot run \(executable)", underlying: errnoDescription(status))
        }
        var output = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(pipeFDs[0], $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            output.append(contentsOf: buffer[0..<count])
        }
        var exitStatus: Int32 = 0
        while waitpid(pid, &exitStatus, 0) < 0 && errno == EINTR {}
        let code = (exitStatus & 0x7F) == 0 ? (exitStatus >> 8) & 0xFF : 128 + (exitStatus & 0x7F)
        return Output(status: code, stdout: output)
    }

    /// Starts a long-running program (e.g. vaultd for a benchmark) with exactly `environment`, its output appended
    /// to `logPath`; returns its pid. Same clean signal state as `run`, so SIGTERM reaches it.
    public static func spawn(_ executable: String, _ arguments: [String], environment: [String: String],
                             logPath: String) throws -> pid_t
    {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = cleanSignalAttributes()
        defer { posix_spawnattr_destroy(&attributes) }
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let variables: [String] = environment.map { "\($0.key)=\($0.value)" }
        let envp = variables.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard status == 0 else {
            throw VaultError(.io, "cannot start \(executable)", underlying: errnoDescription(status))
        }
        return pid
    }

    /// Sends `signal` and waits for the process to end; returns its exit status.
    @discardableResult
    public static func stop(_ pid: pid_t, signal: Int32 = SIGTERM) -> Int32 {
        kill(pid, signal)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    }
}
