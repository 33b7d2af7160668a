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
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        #if canImport(Glibc)
        setrlimit(Int32(RLIMIT_CORE.rawValue), &noCore)
        _ = mallopt(M_MMAP_THRESHOLD, mmapThreshold)
        #else
        setrlimit(RLIMIT_CORE, &noCore)
        #endif
        signal(SIGXFSZ, SIG_IGN)
    }
}
