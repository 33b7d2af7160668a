import Synchronization
import VaultTestSupport

@testable import Vault

/// The catalog of the storage under test, with one fault on cue: once armed, the write that makes an upload current
/// is committed by the database and then reported failed with `audit_unavailable`, as when PostgreSQL's connection is
/// lost during `COMMIT` after the server committed. A fake fault, because neither real database can be made to lose a
/// connection between its commit and its answer at a chosen moment; everything else is the real catalog.
final class AmbiguousCommitCatalog: CatalogDriver {
    let inner: any CatalogDriver
    private let state = Mutex((armed: false, failed: false))

    init(_ catalog: any Catalog) throws {
        guard let driver = catalog as? any CatalogDriver else {
            throw TestVectors.VectorError(message: "\(type(of: catalog)) is not a catalog driver")
        }
        inner = driver
    }

    /// Arms the fault for the next upload commit.
    func failNextUploadCommit() { state.withLock { $0.armed = true } }

    /// Whether the fault fired.
    var failed: Bool { state.withLock { $0.failed } }

    var dialect: CatalogDialect { inner.dialect }

    func runWrite<T: Sendable>(audited: Bool, _ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T {
        let commitsUpload = Mutex(false)
        let result = try await inner.runWrite(audited: audited) {
            Self.observe(try make()) { statement in
                if case .sql(let sql, _) = statement.form, sql.contains("SET state = 'current'") {
                    commitsUpload.withLock { $0 = true }
                }
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
    static func observe<T>(_ plan: CatalogPlan<T>, _ seen: @escaping @Sendable (CatalogStatement) -> Void)
        -> CatalogPlan<T>
    {
        switch plan.step {
        case .done: return plan
        case .run(let statement, let decide):
            return CatalogPlan(.run(statement) { rows in
                seen(statement)
                return observe(try decide(rows), seen)
            })
        case .later(let make): return CatalogPlan(.later { observe(try make(), seen) })
        }
    }
}
