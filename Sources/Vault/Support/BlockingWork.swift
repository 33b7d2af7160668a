import NIOPosix

/// Where blocking work runs: file reads and writes, fsync, directory syncs, and the local custody backends (a keyring
/// file's lock and fsync, every PKCS#11 call). Never on Swift's cooperative pool (two threads on a two-core machine,
/// shared by every request) or on an event loop, so a slow disk or token stalls the request that waits for it and
/// nothing else.
public enum BlockingWork {
    /// Threads for blocking work, started once for the life of the process.
    static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 8)
        pool.start()
        return pool
    }()

    /// The same threads as a task executor: async code run under `withTaskExecutorPreference(executor)` (a custody
    /// backend's calls) executes there, blocking calls included.
    public static let executor = ThreadPoolTaskExecutor(pool: pool)

    /// Runs `body` on a blocking-work thread and returns its result to the caller's task.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.runIfActive(body)
    }
}

/// A task executor over an `NIOThreadPool`: each job the runtime enqueues runs on one of the pool's threads.
public final class ThreadPoolTaskExecutor: TaskExecutor, @unchecked Sendable {
    // The pool is itself thread-safe; nothing else is stored.
    private let pool: NIOThreadPool

    init(pool: NIOThreadPool) { self.pool = pool }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pool.submit { _ in job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
