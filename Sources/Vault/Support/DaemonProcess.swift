#if canImport(Glibc)
import CMalloc
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process settings every long-running vault daemon (vaultd, the custody service) starts with.
public enum DaemonProcess {
    /// Buffers at least this large are mapped and unmapped on their own instead of coming from a malloc arena.
    public static let mmapThreshold: Int32 = 1 << 20

    /// Files private to the daemon, no core dumps (key material must never land in one), and a full disk or file
    /// size limit failing the write (so the action fails closed) instead of killing the process.
    ///
    /// Large transfer buffers (S3 parts, read windows, the upload's pending ciphertext) are returned to the system
    /// when freed: glibc otherwise raises its mmap threshold to the largest buffer freed so far, and from then on
    /// serves those buffers from per-thread arenas that keep the memory resident long after the transfer ends (a
    /// 200 MiB upload to S3 grew the daemon by 48–64 MiB that way, against about 37 MiB with the threshold fixed).
    public static func prepare() {
        umask(0o077)
        protectMemory()
        #if canImport(Glibc)
        _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
        #endif
        signal(SIGXFSZ, SIG_IGN)
    }

    /// What every vault process that holds key bytes does first (vaultd, the custody service, the CLI): no core dump
    /// (`RLIMIT_CORE` 0), and not dumpable (`PR_SET_DUMPABLE` 0), so that neither a crash nor another process of the
    /// same user (ptrace, `/proc/PID/mem`) can copy its memory.
    public static func protectMemory() {
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        #if canImport(Glibc)
        setrlimit(Int32(RLIMIT_CORE.rawValue), &noCore)
        _ = vault_set_dumpable(0)
        #else
        setrlimit(RLIMIT_CORE, &noCore)
        #endif
    }

    /// Whether the process may be dumped or traced by its user (false once `protectMemory` ran).
    public static var isDumpable: Bool {
        #if canImport(Glibc)
        vault_get_dumpable() != 0
        #else
        true
        #endif
    }
}
