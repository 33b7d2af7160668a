import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Named points in multi-step jobs (rotation, shredding) where a test can make vaultd die with SIGKILL, exactly as
/// `kill -9` would, to prove the job resumes after a restart. `VAULT_CRASH_AT=name` kills the process the first
/// time it reaches `name`; `name:N` the N-th time. Unset (always, outside those tests), every call is a no-op.
public enum CrashPoint {
    private static let target: (name: String, count: Int)? = {
        guard let value = getenv("VAULT_CRASH_AT").map({ String(cString: $0) }), !value.isEmpty else { return nil }
        let parts = value.split(separator: ":", maxSplits: 1)
        return (String(parts[0]), parts.count == 2 ? Int(parts[1]) ?? 1 : 1)
    }()
    private static let reached = Mutex(0)

    public static func reach(_ name: String) {
        guard let target, target.name == name else { return }
        let count = reached.withLock { count in
            count += 1
            return count
        }
        if count >= target.count { kill(getpid(), SIGKILL) }
    }
}
