/// A catalog operation's logic written once for every database: which statement to run next and what to decide from
/// its rows, as plain values and pure functions (the postgres-nio state-machine style). A plan does no I/O; a
/// driver runs it: SQLite inside one GRDB write, PostgreSQL inside one serializable transaction (built afresh for
/// each retry). Tests run plans against rows they make up, without a database.
public struct CatalogPlan<Result: Sendable>: Sendable {
    enum Step: Sendable {
        case done(Result)
        case run(CatalogStatement, @Sendable ([CatalogRow]) throws -> CatalogPlan<Result>)
        case later(@Sendable () throws -> CatalogPlan<Result>)
    }

    let step: Step

    init(_ step: Step) {
        self.step = step
    }

    /// A plan that needs no statement.
    public static func done(_ result: Result) -> CatalogPlan {
        CatalogPlan(.done(result))
    }

    /// Runs `statement`, then decides from its rows.
    public static func run(_ statement: CatalogStatement,
                           then next: @escaping @Sendable ([CatalogRow]) throws -> CatalogPlan) -> CatalogPlan
    {
        CatalogPlan(.run(statement, next))
    }

    /// Runs `statement` and makes the result from its rows.
    public static func query(_ statement: CatalogStatement,
                             _ decode: @escaping @Sendable ([CatalogRow]) throws -> Result) -> CatalogPlan
    {
        CatalogPlan(.run(statement) { rows in .done(try decode(rows)) })
    }

    /// This plan, then the plan `next` makes from its result.
    public func then<Next: Sendable>(_ next: @escaping @Sendable (Result) throws -> CatalogPlan<Next>)
        -> CatalogPlan<Next>
    {
        switch step {
        case .done(let result):
            return CatalogPlan<Next>(.later { try next(result) })
        case .run(let statement, let decide):
            return CatalogPlan<Next>(.run(statement) { rows in try decide(rows).then(next) })
        case .later(let make):
            return CatalogPlan<Next>(.later { try make().then(next) })
        }
    }

    /// This plan, then `next` (whose result it keeps).
    public func then<Next: Sendable>(_ next: CatalogPlan<Next>) -> CatalogPlan<Next> {
        then { _ in next }
    }

    public func map<Next: Sendable>(_ transform: @escaping @Sendable (Result) throws -> Next) -> CatalogPlan<Next> {
        then { .done(try transform($0)) }
    }

    /// Runs the plan, each statement through `perform` (a driver inside its transaction, or a test).
    public func run(_ perform: (CatalogStatement) throws -> [CatalogRow]) throws -> Result {
        var plan = self
        while true {
            switch plan.step {
            case .done(let result): return result
            case .run(let statement, let decide): plan = try decide(try perform(statement))
            case .later(let make): plan = try make()
            }
        }
    }

    public func run(_ perform: (CatalogStatement) async throws -> [CatalogRow]) async throws -> Result {
        var plan = self
        while true {
            switch plan.step {
            case .done(let result): return result
            case .run(let statement, let decide): plan = try decide(try await perform(statement))
            case .later(let make): plan = try make()
            }
        }
    }
}

extension CatalogPlan where Result == Void {
    /// Runs `statement` for its effect.
    public static func execute(_ statement: CatalogStatement) -> CatalogPlan {
        .query(statement) { _ in () }
    }

    /// Runs `plans` one after another. The chain is built from the end (`p1.then(p2.then(...))`), so running it costs
    /// one step per plan; built from the front (`(p1.then(p2)).then(p3)...`) every step would re-wrap the rest,
    /// quadratic in the number of plans.
    public static func sequence(_ plans: [CatalogPlan<Void>]) -> CatalogPlan {
        plans.reversed().reduce(.done(())) { rest, plan in plan.then(rest) }
    }
}

extension CatalogPlan where Result == [CatalogRow] {
    /// The rows of `statement`.
    public static func rows(_ statement: CatalogStatement) -> CatalogPlan {
        .query(statement) { $0 }
    }
}

/// A catalog that runs plans: the one thing each database's driver implements. Every `Catalog` operation written as
/// a plan (`CatalogOperations`) comes with it.
public protocol CatalogDriver: Catalog {
    /// The SQL dialect the plans write for this database.
    var dialect: CatalogDialect { get }
    /// Runs the plan `make` returns in one write transaction. `audited` says whether the transaction carries audit
    /// records, so that a database that cannot be written fails it with `audit_unavailable`. `make` may be called
    /// more than once (a transaction retried after a serialization failure).
    func runWrite<T: Sendable>(audited: Bool, _ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T
    /// Runs a read plan of one statement (which sees one moment of the catalog by itself).
    func runRead<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T
    /// Runs a read plan of several statements in one read-only transaction, so they all see one moment.
    func runSnapshot<T: Sendable>(_ make: @escaping @Sendable () throws -> CatalogPlan<T>) async throws -> T
}
