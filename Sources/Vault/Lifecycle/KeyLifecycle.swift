import KeyCustody
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Tunables of the key and data lifecycle.
public struct LifecycleSettings: Sendable {
    /// How long a dual-control retrieval grant lasts (DESIGN section 7: 24 hours).
    public var retrievalGrantSeconds: Int64 = 86_400
    /// Wrapped keys per rewrap transaction.
    public var rewrapBatchSize = 2_000
    /// Archives per shredding batch (one custody write, one catalog transaction each way).
    public var shredBatchSize = 64
    /// This instance's name in job leases (several vaultd instances may share one catalog).
    public var instance = LifecycleSettings.defaultInstance()
    /// How long a job lease lasts unless renewed; a killed instance's jobs are taken over after it.
    public var leaseSeconds: Int64 = 30
    /// While a read streams, its authorisation is checked again after at most this many bytes ...
    public var streamRecheckBytes = 64 << 20
    /// ... or this much time, whichever comes first; a read no longer allowed ends there, audited.
    public var streamRecheckInterval = Duration.seconds(5)

    public init() {}

    /// `host:port` for vaultd (unique among running instances and the same after a restart, so a restarted
    /// instance frees the leases its previous life held); `host:pid` elsewhere.
    public static func defaultInstance(port: Int? = nil) -> String {
        var name = [CChar](repeating: 0, count: 256)
        let host = gethostname(&name, name.count) == 0
            ? String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "vaultd"
        return "\(host):\(port.map(String.init) ?? "pid\(getpid())")"
    }
}

/// What the key jobs did in one pass over a force.
public struct KeyJobReport: Sendable, Equatable {
    /// Wrapped keys moved to the active master key.
    public var rewrapped = 0
    /// Archives moved from a master key to their own archive key.
    public var archived = 0
    /// Wrapped keys custody could not rewrap (set aside; see `vault keys status`).
    public var failed = 0
    /// Master key versions that became retired.
    public var retired: [KEKID] = []

    public init() {}

    public var didWork: Bool { rewrapped > 0 || archived > 0 || failed > 0 || !retired.isEmpty }
}

/// A force's keys as a custodian sees them: versions, states, what each still wraps, and the rewrap job's progress.
/// The catalog's side (`usage`) is one snapshot, and custody's side was read after it, so every rotation the snapshot
/// records is among custody's keys: `remaining` and the progress describe one moment.
public struct KeyStatus: Sendable {
    public var force: ForceID
    public var keys: [KeyInfo]
    public var usage: KeyUsage
    public var active: KEKID

    public var references: [KEKID: Int] { usage.references }
    public var rotations: [RotationRecord] { usage.rotations }
    public var failures: [RewrapFailure] { usage.failures }

    /// Wrapped keys of uploading, current and archived extracts still under a master key other than the active one,
    /// not counting those set aside.
    public var remaining: Int { usage.remaining(active: active) }

    public var json: JSONValue { KeyStatusDocument(self).json }
}

extension VaultEngine {
    // MARK: Rotation

    /// Creates master key version v+1 (active; v becomes retiring) and records the rotation whose rewrap job moves
    /// every wrapped key to it (custodian). Reads and uploads go on meanwhile.
    public func rotateMasterKey(principal: Principal, force: ForceID, requestID: String) async throws
        -> RotationRecord
    {
        try await check([.custodian], principal: principal, force: force, action: "keys.rotate",
                        target: "\(force)/keys", requestID: requestID)
        return try await rotate(force: force, by: principal.id, requestID: requestID)
    }

    /// Moves a force onto another custody backend (`"pkcs11"`, custodian): the next master key version is created
    /// there as active and the rewrap job moves every wrapped key to it, resumable exactly like a rotation.
    public func migrateMasterKey(principal: Principal, force: ForceID, to backend: String, requestID: String)
        async throws -> RotationRecord
    {
        try await check([.custodian], principal: principal, force: force, action: "keys.migrate",
                        target: "\(force)/keys", requestID: requestID)
        guard backend == "pkcs11" else {
            throw VaultError(.invalidParameter, "a force moves onto a PKCS#11 token: \"to\" must be \"pkcs11\"")
        }
        return try await rotate(force: force, by: principal.id, requestID: requestID, migratingTo: backend)
    }

    /// Rotates `force`'s master key (also used by the automatic rotation schedule, as principal `vaultd`), or with
    /// `migratingTo`, creates the new version on that backend.
    public func rotate(force: ForceID, by principal: String, requestID: String, migratingTo backend: String? = nil)
        async throws -> RotationRecord
    {
        let custody = try custody(force)
        // Refuse before touching custody when the rotation could not be recorded.
        if await readiness() != nil {
            throw VaultError(.auditUnavailable, "the audit trail cannot be written, so the key is not rotated; try "
                                + "again when the vault is ready")
        }
        let previous = try await custody.activeMasterKey()
        // The intent first: a process killed between custody's change and the rotation's record (or a catalog
        // that fails then) still leaves the change in the trail.
        let action = backend == nil ? "keys.rotate" : "keys.migrate"
        var intent: [String: JSONValue] = ["from": .string(previous.description)]
        if let backend { intent["backend"] = .string(backend) }
        try await recording(force) {
            try await catalog.appendAudit([AuditEntry(
                force: force, time: now(), principal: principal, action: action + "-intent", target: "\(force)/keys",
                outcome: .allowed, detail: intent, requestID: requestID)])
        }
        let next: KEKID
        do {
            if let backend { next = try await custody.migrate(to: backend) } else { next = try await custody.rotate() }
        } catch let error as CustodyError where error.code == .unsupportedBackend {
            // The force's custody file names no token to move to: nothing changed. The trail says so after the
            // intent, and the custodian learns what the custody file needs (409: it has to change first).
            try await record(AuditEntry(force: force, time: now(), principal: principal, action: action,
                                        target: "\(force)/keys", outcome: .error,
                                        detail: ["reason": .string(error.code.rawValue)], requestID: requestID))
            throw VaultError(.conflict, error.message, cause: error)
        }
        let time = now()
        let rotation = RotationRecord(force: force, to: next, from: previous, requestedBy: principal, startedAt: time)
        var detail: [String: JSONValue] = ["from": .string(previous.description), "to": .string(next.description)]
        if let backend { detail["backend"] = .string(backend) }
        try await recording(force) {
            try await catalog.startRotation(rotation, audit: [AuditEntry(
                force: force, time: time, principal: principal, action: action, target: "\(force)/keys",
                outcome: .allowed, detail: detail, requestID: requestID)])
        }
        logger.notice("master key rotated; rewrap job started", metadata: [
            "force": "\(force)", "from": "\(previous)", "to": "\(next)", "request": "\(requestID)",
        ])
        return rotation
    }

    /// Versions, states, references and rewrap progress (custodians, ops and auditors of the force).
    public func keyStatus(principal: Principal, force: ForceID, requestID: String) async throws -> KeyStatus {
        try await authoriseMetadataRead(Policy.Readers.keys, principal: principal, force: force,
                                        action: "keys.status", target: "\(force)/keys", requestID: requestID)
        return try await keyStatus(force: force)
    }

    public func keyStatus(force: ForceID) async throws -> KeyStatus {
        let custody = try custody(force)
        // The catalog first: a rotation is recorded only after custody made its key, so custody read afterwards
        // knows every version the snapshot names. One custody read gives both the keys and the active one (a keyring
        // served by several instances is read again from its file for it).
        let usage = try await catalog.keyUsage(force: force)
        let keys = try await custody.status()
        guard let active = keys.activeMaster else {
            throw CustodyError(.keyringInconsistent, "custody of force \(force) lists no active master key")
        }
        return KeyStatus(force: force, keys: keys, usage: usage, active: active)
    }

    /// Destroys a retired master key version that no extract references any more (custodian). Certificates that
    /// were pending on it are re-issued with the new verdict.
    public func destroyMasterKey(principal: Principal, force: ForceID, version: Int, requestID: String) async throws
        -> [DestructionCertificate]
    {
        let target = "\(force)/keys"
        try await check([.custodian], principal: principal, force: force, action: "keys.destroy", target: target,
                        requestID: requestID)
        let custody = try custody(force)
        let kek = KEKID.master(force: force, version: version)
        guard let key = try await custody.status().first(where: { $0.id == kek }) else {
            throw VaultError(.notFound, "force \(force) has no master key version \(version)")
        }
        switch key.state {
        case .active:
            throw VaultError(.keyInUse, "\(kek) is the active master key; rotate first")
        case .retiring:
            throw VaultError(.keyInUse, "\(kek) is still retiring: the rewrap job has not moved every key off it "
                                + "yet (vault keys status)")
        case .retired, .destroyed:
            break
        }
        let time = now()
        // The catalog refuses while anything references the version, and from then on refuses commits under it.
        try await recording(force) {
            try await catalog.reserveDestruction(force: force, kek: kek, at: time, audit: [AuditEntry(
                force: force, time: time, principal: principal.id, action: "keys.destroy", target: target,
                outcome: .allowed, detail: ["kek": .string(kek.description)], requestID: requestID)])
        }
        try await custody.destroy(kek)
        logger.notice("master key destroyed", metadata: ["force": "\(force)", "kek": "\(kek)", "request": "\(requestID)"])
        return try await reissuePendingCertificates(force: force, requestID: requestID)
    }

    /// When the active master key of `force` was created (for automatic rotation).
    public func activeMasterKeyCreated(force: ForceID) async throws -> UnixTime? {
        let custody = try custody(force)
        let active = try await custody.activeMasterKey()
        guard let key = try await custody.status().first(where: { $0.id == active }),
            let created = Timestamp.parse(key.created) else { return nil }
        return UnixTime(created)
    }

    // MARK: The key jobs

    /// One pass of the key jobs for `force`: moves wrapped keys off master keys that are no longer active (in
    /// batches, compare-and-set, progress persisted with each batch), gives legacy archives their own archive key,
    /// retires versions nothing references any more, and finishes the rotation record. Safe to run at any time and
    /// after any crash: each batch is one transaction, and a key moved already is not moved again.
    @discardableResult
    public func runKeyJobs(force: ForceID) async throws -> KeyJobReport {
        // A remote force's custody service is asked for its key states only when the catalog shows work, and at
        // least once a minute (a rotation whose record failed to be written is found that way too).
        if remotes[force] != nil {
            let time = now()
            let due = keyJobsChecked.withLock { ($0[force] ?? 0) + 60 <= time }
            if !due, try await !catalog.keyUsage(force: force).suggestsKeyWork { return KeyJobReport() }
            keyJobsChecked.withLock { $0[force] = time }
        }
        let started = keyJobsRunning.withLock { $0.insert(force).inserted }
        guard started else { return KeyJobReport() }
        defer { _ = keyJobsRunning.withLock { $0.remove(force) } }
        // Another instance sharing the catalog may be running this force's jobs: then this pass does nothing.
        let lease = JobLease(name: "key-jobs:\(force)", engine: self)
        guard try await lease.take() else { return KeyJobReport() }
        do {
            let report = try await keyJobs(force: force, lease: lease)
            await lease.release()
            return report
        } catch {
            await lease.release()
            throw error
        }
    }

    private func keyJobs(force: ForceID, lease: JobLease) async throws -> KeyJobReport {
        var report = KeyJobReport()
        let custody = try custody(force)
        // One current read of custody: the versions to move off and the one to move to.
        let keys = try await custody.status()
        guard let active = keys.activeMaster else {
            throw CustodyError(.keyringInconsistent, "custody of force \(force) lists no active master key")
        }
        let justification = Justification(principal: "vaultd", purpose: .rewrap, requestID: "key-job")
        let stale = keys.filter { $0.kind == .master && $0.id != active && $0.state != .destroyed }
        for key in stale {
            // A cursor over the key's rows in id order; the catalog write of one batch overlaps the custody work of
            // the next (the two cores of a small host both stay busy). Rows skipped by the compare and set are
            // found again by the next pass.
            var cursor: ExtractID?
            var applying: Task<(moved: Int, failed: Int), any Error>?
            do {
            while true {
                // Renewed each batch; lost only when this instance stalled past the lease and another took over.
                try await lease.renew()
                let rows = try await catalog.rewrapCandidates(force: force, under: key.id, after: cursor,
                                                              limit: settings.rewrapBatchSize)
                if rows.isEmpty { break }
                cursor = rows.last?.identity.extract
                let results = try await custody.rewrap(
                    rows.map { RewrapItem(wrapped: $0.wrapped, context: $0.identity.wrapContext) }, to: active,
                    justification: justification)
                CrashPoint.reach("rewrap.batch-rewrapped")
                let time = now()
                var rewraps: [Rewrap] = []
                rewraps.reserveCapacity(rows.count)
                var failures: [RewrapFailure] = []
                for (row, result) in zip(rows, results) {
                    switch result {
                    case .success(let wrapped):
                        rewraps.append(Rewrap(identity: row.identity, from: row.wrapped, to: wrapped, fromText: row.text))
                    case .failure(let error):
                        failures.append(RewrapFailure(extract: row.identity.extract, kek: row.wrapped.kek,
                                                      code: error.code.rawValue, message: error.message, time: time))
                    }
                }
                if let previous = applying {
                    let done = try await previous.value
                    report.rewrapped += done.moved
                    report.failed += done.failed
                }
                let from = key.id
                applying = Task {
                    try await self.applyRewrapBatch(force: force, from: from, to: active, rewraps: rewraps,
                                                    failures: failures, time: time)
                }
            }
            } catch {
                // The batch being written finishes (or fails) before the lease is given up.
                _ = try? await applying?.value
                throw error
            }
            if let previous = applying {
                let done = try await previous.value
                report.rewrapped += done.moved
                report.failed += done.failed
            }
        }
        // Archives still under a master key (archived before archive keys existed) get theirs now.
        for key in keys where key.kind == .master && key.state != .destroyed {
            while true {
                try await lease.renew()
                let rows = try await catalog.wrappedKeys(force: force, under: key.id, states: [.archived],
                                                         limit: settings.rewrapBatchSize)
                if rows.isEmpty { break }
                let time = now()
                var rewraps: [Rewrap] = []
                var failures: [RewrapFailure] = []
                for row in rows {
                    do {
                        let archiveKey = try await custody.createArchiveKey(for: row.identity.extract)
                        let wrapped = try await custody.rewrap(row.wrappedKey, context: row.identity.wrapContext,
                                                               to: archiveKey, justification: justification)
                        rewraps.append(Rewrap(identity: row.identity, from: row.wrappedKey, to: wrapped))
                    } catch let error as CustodyError where !error.isTransient {
                        failures.append(RewrapFailure(extract: row.identity.extract, kek: row.wrappedKey.kek,
                                                      code: error.code.rawValue, message: error.message, time: time))
                    }
                }
                let moved = try await recording(force) {
                    try await catalog.applyRewraps(
                        force: force, rotation: nil, rewraps: rewraps, failures: failures, now: time,
                        audit: [AuditEntry(force: force, time: time, principal: "vaultd", action: "archive.keys",
                                           target: "\(force)/keys", outcome: failures.isEmpty ? .allowed : .error,
                                           detail: ["from": .string(key.id.description),
                                                    "count": .integer(Int64(rewraps.count)),
                                                    "failed": .integer(Int64(failures.count))],
                                           requestID: "key-job")])
                }
                report.archived += moved
                report.failed += failures.count
            }
        }
        // Versions nothing references any more are retired.
        for key in stale where key.state == .retiring {
            guard try await catalog.references(force: force, kek: key.id) == 0 else { continue }
            try await custody.retire(key.id)
            report.retired.append(key.id)
            try await record(AuditEntry(force: force, time: now(), principal: "vaultd", action: "keys.retire",
                                        target: "\(force)/keys", outcome: .allowed,
                                        detail: ["kek": .string(key.id.description)], requestID: "key-job"))
            logger.notice("master key retired: nothing references it", metadata: ["force": "\(force)", "kek": "\(key.id)"])
        }
        // The rotation is finished when no current extract is left under an older version.
        var remaining = 0
        for key in stale {
            remaining += try await catalog.wrappedKeys(force: force, under: key.id, states: [.uploading, .current],
                                                       limit: 1).count
        }
        if remaining == 0, let rotation = try await catalog.rotations(force: force).last(where: { $0.to == active }),
            rotation.finishedAt == nil
        {
            let time = now()
            try await recording(force) {
                try await catalog.finishRotation(force: force, to: active, at: time, audit: [AuditEntry(
                    force: force, time: time, principal: "vaultd", action: "keys.rotation-finished",
                    target: "\(force)/keys", outcome: .allowed,
                    detail: ["to": .string(active.description), "processed": .integer(rotation.processed)],
                    requestID: "key-job")])
            }
        }
        return report
    }

    /// Writes one rewrap batch with its audit record (one transaction).
    private func applyRewrapBatch(force: ForceID, from: KEKID, to active: KEKID, rewraps: [Rewrap],
                                  failures: [RewrapFailure], time: UnixTime) async throws -> (moved: Int, failed: Int)
    {
        var detail: [String: JSONValue] = [
            "from": .string(from.description), "to": .string(active.description),
            "count": .integer(Int64(rewraps.count)), "failed": .integer(Int64(failures.count)),
        ]
        if let first = failures.first { detail["first_failure"] = .string(first.extract.rawValue) }
        let moved = try await recording(force) {
            try await catalog.applyRewraps(
                force: force, rotation: active, rewraps: rewraps, failures: failures, now: time,
                audit: [AuditEntry(force: force, time: time, principal: "vaultd", action: "keys.rewrap",
                                   target: "\(force)/keys", outcome: failures.isEmpty ? .allowed : .error,
                                   detail: detail, requestID: "key-job")])
        }
        CrashPoint.reach("rewrap.batch-applied")
        if !failures.isEmpty {
            logger.error("wrapped keys could not be rewrapped; set aside", metadata: [
                "force": "\(force)", "count": "\(failures.count)", "first": "\(failures[0].extract)",
            ])
        }
        return (moved, failures.count)
    }

    /// Runs the key jobs of `force` until a pass does nothing more (tests, benchmarks, the CLI's `--wait`).
    public func runKeyJobsToCompletion(force: ForceID) async throws -> KeyJobReport {
        var total = KeyJobReport()
        while true {
            let report = try await runKeyJobs(force: force)
            total.rewrapped += report.rewrapped
            total.archived += report.archived
            total.failed += report.failed
            total.retired += report.retired
            if !report.didWork { return total }
        }
    }
}

extension VaultEngine {
    /// The scheduled rotation of `force` when its active master key is `days` old: under the force's key-jobs
    /// lease, so of several instances ticking at once only one rotates. Nil when not due or another instance is
    /// working on the force's keys.
    public func rotateIfDue(force: ForceID, days: Int) async throws -> RotationRecord? {
        let lease = JobLease(name: "key-jobs:\(force)", engine: self)
        guard try await lease.take() else { return nil }
        do {
            var rotation: RotationRecord?
            if let created = try await activeMasterKeyCreated(force: force), currentTime - created >= Int64(days) * 86_400 {
                rotation = try await rotate(force: force, by: "vaultd-schedule", requestID: "rotation-schedule")
            }
            await lease.release()
            return rotation
        } catch {
            await lease.release()
            throw error
        }
    }

    /// Frees the job leases this instance held before it was restarted (it was killed, or it would have released
    /// them): its jobs resume at once instead of after the leases expire.
    public func releaseLeasesOfPreviousRun() async throws -> Int {
        try await catalog.releaseLeases(holderPrefix: settings.instance + "#")
    }
}

/// A background job's lease in the catalog (`Catalog.takeLease`), held by this instance while the job runs and
/// renewed in the background every third of its duration, so a long batch (a slow S3, a slow HSM) does not lose it.
/// The holder is this instance's name and a random tag, so two runs inside one process exclude each other too.
final class JobLease: Sendable {
    let name: String
    let engine: VaultEngine
    let holder: String
    private let lost = Mutex(false)
    private let keeper = Mutex<Task<Void, Never>?>(nil)

    init(name: String, engine: VaultEngine) {
        self.name = name
        self.engine = engine
        holder = "\(engine.settings.instance)#\(Hex.encode(SecureRandom.bytes(count: 4)))"
    }

    deinit { keeper.withLock { $0?.cancel() } }

    private func claim() async throws -> Bool {
        try await engine.catalog.takeLease(name, holder: holder, seconds: engine.settings.leaseSeconds,
                                           now: engine.currentTime)
    }

    /// Takes the lease; false when another live holder has it. Once taken it is kept until `release`.
    func take() async throws -> Bool {
        guard try await claim() else { return false }
        let interval = Duration.seconds(max(1, engine.settings.leaseSeconds / 3))
        keeper.withLock { keeper in
            keeper?.cancel()
            keeper = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard !Task.isCancelled, let self else { return }
                    // A failed renewal (catalog unreachable) is retried; one refused means another holder took over.
                    if let kept = try? await self.claim(), !kept {
                        self.lost.withLock { $0 = true }
                        return
                    }
                }
            }
        }
        return true
    }

    /// Takes the lease, waiting up to `seconds` for the holder to finish; `conflict` otherwise.
    func take(waiting seconds: Int) async throws {
        let deadline = ContinuousClock.now.advanced(by: .seconds(seconds))
        while try await !take() {
            guard ContinuousClock.now < deadline else {
                throw VaultError(.conflict, "\(name) is running (perhaps on another vaultd instance); try again")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// Before each batch: extends the lease, and stops the job with `lease_lost` if another instance took it over
    /// (this one stalled past the lease).
    func renew() async throws {
        guard !lost.withLock({ $0 }), try await claim() else {
            throw VaultError(.leaseLost, "another vaultd instance took over the job \(name) (this one stalled past "
                                + "its lease); stopping here")
        }
    }

    /// Gives the lease up so another instance may start at once (best effort: otherwise it expires).
    func release() async {
        keeper.withLock { $0?.cancel() }
        try? await engine.catalog.releaseLease(name, holder: holder)
    }
}

