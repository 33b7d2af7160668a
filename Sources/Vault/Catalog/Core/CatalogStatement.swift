/// The values, rows and statements the catalog core speaks, the same for every database: its plans (see
/// `CatalogPlan`) are written once against these, and each driver translates them to its database's own types.

/// One column value as the catalog stores it: every catalog column is text or a 64-bit integer.
public enum CatalogValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case text(String)
}

/// A Swift value the catalog binds and reads back.
public protocol CatalogValueConvertible: Sendable {
    var catalogValue: CatalogValue { get }
    /// The value of a column, or nil when the column holds something else.
    init?(catalogValue: CatalogValue)
}

extension String: CatalogValueConvertible {
    public var catalogValue: CatalogValue { .text(self) }
    public init?(catalogValue: CatalogValue) {
        guard case .text(let text) = catalogValue else { return nil }
        self = text
    }
}

extension Int64: CatalogValueConvertible {
    public var catalogValue: CatalogValue { .integer(self) }
    public init?(catalogValue: CatalogValue) {
        guard case .integer(let integer) = catalogValue else { return nil }
        self = integer
    }
}

extension Int: CatalogValueConvertible {
    public var catalogValue: CatalogValue { .integer(Int64(self)) }
    public init?(catalogValue: CatalogValue) {
        guard case .integer(let integer) = catalogValue, let value = Int(exactly: integer) else { return nil }
        self = value
    }
}

extension Optional: CatalogValueConvertible where Wrapped: CatalogValueConvertible {
    public var catalogValue: CatalogValue { map(\.catalogValue) ?? .null }
    public init?(catalogValue: CatalogValue) {
        if catalogValue == .null {
            self = .none
        } else if let value = Wrapped(catalogValue: catalogValue) {
            self = .some(value)
        } else {
            return nil
        }
    }
}

/// A row whose columns are read by name; a missing column or an unexpected value fails as a catalog error (naming
/// the column, never the value) instead of trapping.
public struct CatalogRow: Sendable, Equatable {
    /// The result's column names, shared by all its rows.
    let columns: [String]
    let values: [CatalogValue]

    public init(columns: [String], values: [CatalogValue]) {
        precondition(columns.count == values.count, "a catalog row has one value per column")
        self.columns = columns
        self.values = values
    }

    public func value<T: CatalogValueConvertible>(_ column: String, as type: T.Type = T.self) throws -> T {
        guard let index = columns.firstIndex(of: column) else {
            throw VaultError(.catalogUnavailable, "the catalog has no column \(column); is its schema up to date?")
        }
        guard let value = T(catalogValue: values[index]) else {
            throw VaultError(.catalogUnavailable, "catalog column \(column) holds an unexpected value")
        }
        return value
    }
}

/// The type of a column in a batch insert (PostgreSQL needs it to pass the batch as arrays).
public enum CatalogColumnType: Sendable, Equatable {
    case text
    case integer
}

/// A statement in the portable SQL both databases accept (SQLite ≥ 3.35: `ON CONFLICT`, `RETURNING`), with `?`
/// placeholders; or a batch insert, which each driver writes its fastest way.
public struct CatalogStatement: Sendable, Equatable {
    public enum Form: Sendable, Equatable {
        case sql(String, [CatalogValue])
        /// `INSERT INTO table (columns) VALUES ...` for each of `rows`, followed by `onConflict` (an `ON CONFLICT`
        /// clause) if any.
        case insert(table: String, columns: [(name: String, type: CatalogColumnType)], rows: [[CatalogValue]],
                    onConflict: String?)

        public static func == (lhs: Form, rhs: Form) -> Bool {
            switch (lhs, rhs) {
            case let (.sql(a, x), .sql(b, y)): return a == b && x == y
            case let (.insert(t1, c1, r1, i1), .insert(t2, c2, r2, i2)):
                return t1 == t2 && c1.map(\.name) == c2.map(\.name) && c1.map(\.type) == c2.map(\.type) && r1 == r2
                    && i1 == i2
            default: return false
            }
        }
    }

    public let form: Form

    public init(_ sql: String, _ arguments: any CatalogValueConvertible...) {
        form = .sql(sql, arguments.map(\.catalogValue))
    }

    public init(_ sql: String, arguments: [CatalogValue]) {
        form = .sql(sql, arguments)
    }

    public init(insertInto table: String, columns: [(name: String, type: CatalogColumnType)], rows: [[CatalogValue]],
                onConflict: String? = nil)
    {
        precondition(rows.allSatisfy { $0.count == columns.count }, "a batch row has one value per column")
        form = .insert(table: table, columns: columns, rows: rows, onConflict: onConflict)
    }

    /// `?, ?, ?` for a list of `count` values (`IN (...)`).
    public static func placeholders(_ count: Int) -> String {
        Array(repeating: "?", count: count).joined(separator: ", ")
    }
}

/// What truly differs between the two databases' SQL.
public enum CatalogDialect: Sendable {
    case sqlite
    case postgres

    /// The column that orders rows of `extract_keks` and `certificates` as they were inserted.
    var insertionOrder: String {
        switch self {
        case .sqlite: "rowid"
        case .postgres: "position"
        }
    }

    /// A condition that `column` starts with `prefix`, and its arguments (SQLite has no `starts_with`; a `LIKE`
    /// would ignore case and treat `%` and `_` as wildcards).
    func startsWith(_ column: String, _ prefix: String) -> (sql: String, arguments: [CatalogValue]) {
        switch self {
        case .sqlite: ("substr(\(column), 1, ?) = ?", [.integer(Int64(prefix.utf8.count)), .text(prefix)])
        case .postgres: ("starts_with(\(column), ?)", [.text(prefix)])
        }
    }

    /// The statement's SQL with PostgreSQL's numbered placeholders (`$1`, `$2`, ...) for `?` outside quotes.
    static func numbered(_ sql: String) -> String {
        var result = ""
        result.reserveCapacity(sql.utf8.count + 16)
        var count = 0
        var quoted = false
        for character in sql {
            if character == "'" { quoted.toggle() }
            if character == "?" && !quoted {
                count += 1
                result += "$\(count)"
            } else {
                result.append(character)
            }
        }
        return result
    }
}
