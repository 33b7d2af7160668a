import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Named points in multi-step jobs (rotation, shredding) where a kill test makes vaultd die with SIGKILL, exactly as
/// `kill -9` would, to prove the job resumes after a restart. `VAULT_CRASH_AT=name` kills the process the first
/// time it reaches `name`; `name:N` the N-th time.
///
/// Test machinery only: the points exist in debug builds (the ones `swift build` and the test suite make, with
/// `VAULT_CRASH_POINTS` defined in Package.swift). A release build, the one `make run` starts and a platform
/// deploys, compiles every call to nothing and never reads the variable.
public enum CrashPoint {
    #if VAULT_CRASH_POINTS
    private static let target: (name: String, count: Int)? = {
        guard let value = getenv("VAULT_CRASH_AT").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        let parts = value.split(separator: ":", maxSplits: 1)
        return (String(parts[0]), parts.count == 2 ? Int(parts[1]) ?? 1 : 1)
    }()
    private static let reached = Mutex(0)
    #endif

    /// Whether this build has crash points at all (false in release builds).
    public static var compiledIn: Bool {
        #if VAULT_CRASH_POINTS
        true
        #else
        false
        #endif
    }

    @inline(__always)
    public static func reach(_ name: String) {
        #if VAULT_CRASH_POINTS
        guard let target, target.name == name else { return }
        let count = reached.withLock { count in
            count += 1
            return count
        }
        if count >= target.count { kill(getpid(), SIGKILL) }
        #endif
    }
}
