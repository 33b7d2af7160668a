import Synchronization
import VaultTestSupport

@testable import Vault

/// The catalog of the storage under test, with one fault on cue: once armed, the write that makes an upload current
/// is committed by the database and then reported failed with `audit_unavailable`, as when PostgreSQL's connection is
/// lost during `COMMIT` after the server committed. Or (`failNextWrite(containing:)`) the next write that runs a
/// statement containing some SQL fails before it commits, as when the database goes away. Fake faults, because
/// neither real database can be made to lose a connection at a chosen moment; everything else is the real catalog.
final class AmbiguousCommitCatalog: CatalogDriver {
    let inner: any CatalogDriver
    private let state = Mutex((armed: false, failed: false, failBefore: String?.none))

    init(_ catalog: any Catalog) throws {
        guard let driver = catalog as? any CatalogDriver else {
            throw TestVectors.VectorError(message: "\(type(of: catalog)) is not a catalog driver")
        }
        inner = driver
    }

    /// Arms the fault for the next upload commit.
    func failNextUploadCommit() { state.withLock { $0.armed = true } }

    /// Arms a failure, before the commit, of the next write that runs a statement containing `sql`.
    func failNextWrite(containing sql: String) { state.withLock { $0.failBefore = sql } }

    /// Whether the fault fired.
    var failed: Bool { state.withLock { $0.failed } }

    /// Something another client does just before the next audited write starts (a custodian's revocation landing
    /// between a read's check and its record), run on the real catalog.
    private let beforeAudited = Mutex<(@Sendable (any CatalogDriver) async throws -> Void)?>(nil)
    func beforeNextAuditedWrite(_ action: @escaping @Sendable (any CatalogDriver) async throws -> Void) {
        beforeAudited.withLock { $0 = action }
    }

    var dialect: CatalogDialect { inner.dialect }

    func runWrite<T: Sendable>(audited: Bool, _ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        if audited, let action = beforeAudited.withLock({ current in defer { current = nil }; return current }) {
            try await action(inner)
        }
        let commitsUpload = Mutex(false)
        let result = try await inner.runWrite(audited: audited) {
            Self.observe(try make()) { statement in
                guard case .sql(let sql, _) = statement.form else { return }
                if sql.contains("SET state = 'current'") { commitsUpload.withLock { $0 = true } }
                let fail = self.state.withLock { current -> Bool in
                    guard let wanted = current.failBefore, sql.contains(wanted) else { return false }
                    current.failBefore = nil
                    current.failed = true
                    return true
                }
                if fail { throw VaultError(.auditUnavailable, "the catalog went away before COMMIT") }
            }
        }
        let fire = commitsUpload.withLock { $0 } && state.withLock { current in
            defer { current.armed = false }
            if current.armed { current.failed = true }
            return current.armed
        }
        if fire { throw VaultError(.auditUnavailable, "the catalog's connection was lost during COMMIT") }
        return result
    }

    func runRead<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        try await inner.runRead(make)
    }

    func runSnapshot<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        try await inner.runSnapshot(make)
    }

    /// The same plan, calling `seen` with each statement as it runs.
    static func observe<T>(_ plan: CatalogPlan<T>, _ seen: @escaping @Sendable (CatalogStatement) throws -> Void)
        -> CatalogPlan<T>
    {
        switch plan.step {
        case .done: return plan
        case .run(let statement, let decide):
            return CatalogPlan(.run(statement) { rows in
                try seen(statement)
                return observe(try decide(rows), seen)
            })
        case .later(let make): return CatalogPlan(.later { observe(try make(), seen) })
        }
    }
}
