import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

/// The catalog's plans run against rows the test makes up: what each operation asks the database, and what it decides
/// from the answers, without a database. The same operations run on SQLite and PostgreSQL in the behaviour tests.
@Suite("Catalog plans, without a database")
struct CatalogPlanTests {
    let force = try! ForceID(force: "wmp")
    let dataset = try! DatasetID(dataset: "crime")

    /// Runs `plan`, answering each statement with `answer`, and returns the result with the statements asked.
    func run<T>(_ plan: CatalogPlan<T>, _ answer: (CatalogStatement) throws -> [CatalogRow] = { _ in [] }) throws
        -> (result: T, statements: [CatalogStatement])
    {
        var statements: [CatalogStatement] = []
        let result = try plan.run { statement in
            statements.append(statement)
            return try answer(statement)
        }
        return (result, statements)
    }

    func sql(_ statement: CatalogStatement) -> String {
        switch statement.form {
        case .sql(let sql, _): sql
        case .insert(let table, _, _, _): "INSERT INTO \(table) (batch)"
        }
    }

    func arguments(_ statement: CatalogStatement) -> [CatalogValue] {
        if case .sql(_, let arguments) = statement.form { arguments } else { [] }
    }

    /// An extract in state `state`, and the `extracts` row the catalog would hold for it (made from the insert that
    /// `beginUpload` asks for, so the row is what the plans themselves write).
    func extract(_ state: ExtractState) throws -> (record: ExtractRecord, row: CatalogRow) {
        let identity = ExtractIdentity(force: force, dataset: dataset, extract: .generate())
        let wrapped = try WrappedKey(kek: .master(force: force, version: 1), iv: SecureRandom.bytes(count: 12),
                                     ciphertext: SecureRandom.bytes(count: 48))
        let record = ExtractRecord(identity: identity, state: .uploading, wrappedKey: wrapped, plaintextSize: 10,
                                   ciphertextSize: 50, ciphertextSHA256: [UInt8](repeating: 7, count: 32),
                                   source: .plaintext, uploadedBy: "ingest", createdAt: 1000)
        let (_, statements) = try run(CatalogPlans.beginUpload(record))
        let insert = try #require(statements.first { sql($0).hasPrefix("INSERT INTO extracts") })
        var columns = ["force", "dataset", "id", "state", "wrapped_key", "kek", "plaintext_size", "ciphertext_size",
                       "ciphertext_sha256", "source", "uploaded_by", "created_at"]
        var values = arguments(insert)
        values.insert(.text(state.rawValue), at: 3)
        for column in ["committed_at", "archived_at", "expires_at", "hold_reason", "hold_by", "hold_at",
                       "shred_reason", "shred_note", "shred_by", "shred_started_at", "shredded_at", "certificate"] {
            columns.append(column)
            values.append(.null)
        }
        var stored = record
        stored.state = state
        return (stored, CatalogRow(columns: columns, values: values))
    }

    @Test("a commit archives the current extract, makes the upload current and chains its audit, in that order")
    func commitUpload() throws {
        let (uploading, uploadingRow) = try extract(.uploading)
        let (current, currentRow) = try extract(.current)
        let archiveKey = try WrappedKey(kek: .archive(force: force, extract: current.identity.extract),
                                        iv: SecureRandom.bytes(count: 12), ciphertext: SecureRandom.bytes(count: 48))
        let audit = [AuditEntry(force: force, principal: "ingest", action: "upload", target: "wmp/crime",
                                outcome: .allowed, requestID: "r1")]
        let plan = CatalogPlans.commitUpload(
            force: force, extract: uploading.identity.extract, sizes: (10, 50, [UInt8](repeating: 9, count: 32)),
            now: 5000, archival: ArchivalRewrap(extract: current.identity.extract, from: current.wrappedKey,
                                                to: archiveKey),
            audit: audit, archiveAudit: { AuditEntry(force: $0.identity.force, principal: "ingest", action: "archive",
                                                     target: "wmp/crime", outcome: .allowed, requestID: "r1") })
        let (result, statements) = try run(plan) { statement in
            let text = sql(statement)
            if text.hasPrefix("SELECT * FROM extracts WHERE force = ? AND id = ?") { return [uploadingRow] }
            if text.contains("state = 'current'") && text.hasPrefix("SELECT") { return [currentRow] }
            if text.hasPrefix("SELECT retention_days") {
                return [CatalogRow(columns: ["retention_days"], values: [.integer(30)])]
            }
            return []
        }
        #expect(result.current.state == .current)
        #expect(result.current.committedAt == 5000)
        #expect(result.archived?.identity == current.identity)
        #expect(result.archived?.expiresAt == UnixTime(5000 + 30 * 86_400))
        #expect(result.archived?.wrappedKey == archiveKey)
        let writes = statements.map(sql).filter { !$0.hasPrefix("SELECT") }
        #expect(writes.count == 5)
        #expect(writes[0].hasPrefix("UPDATE extracts SET state = 'archived'"))
        #expect(writes[1].hasPrefix("INSERT INTO extract_keks"))
        #expect(writes[2].hasPrefix("UPDATE extracts SET state = 'current'"))
        #expect(writes[3].hasPrefix("INSERT INTO audit_heads"))
        #expect(writes[4] == "INSERT INTO audit_records (batch)")
        // Both records (the upload's and the archival's) go into the one batch, seq 1 and 2 of a new chain.
        guard case .insert(_, _, let rows, _) = try #require(statements.last).form else {
            Issue.record("the audit records are not a batch insert")
            return
        }
        #expect(rows.map { $0[1] } == [.integer(1), .integer(2)])
    }

    @Test("a commit that finds no upload in progress, or a stale archival, fails before it writes anything")
    func commitRefusals() throws {
        let (current, currentRow) = try extract(.current)
        var asked: [CatalogStatement] = []
        func attempt(_ archival: ArchivalRewrap?, extractRow: CatalogRow) throws {
            asked = []
            _ = try run(CatalogPlans.commitUpload(
                force: force, extract: .generate(), sizes: (1, 1, [UInt8](repeating: 0, count: 32)), now: 1,
                archival: archival, audit: [], archiveAudit: { _ in fatalError("nothing is archived") })) { statement in
                asked.append(statement)
                let text = sql(statement)
                if text.hasPrefix("SELECT * FROM extracts WHERE force = ? AND id = ?") { return [extractRow] }
                if text.hasPrefix("SELECT *") { return [currentRow] }
                if text.hasPrefix("SELECT retention_days") {
                    return [CatalogRow(columns: ["retention_days"], values: [.integer(30)])]
                }
                return []
            }
        }
        let uploadingRow = try extract(.uploading).row
        let notUploading = #expect(throws: VaultError.self) { try attempt(nil, extractRow: currentRow) }
        #expect(notUploading?.code == .conflict)
        #expect(asked.count == 1)
        // The dataset has a current extract but the caller prepared no archival for it.
        let stale = #expect(throws: VaultError.self) { try attempt(nil, extractRow: uploadingRow) }
        #expect(stale?.code == .staleArchival)
        #expect(asked.map(sql).allSatisfy { $0.hasPrefix("SELECT") })
        #expect(asked.count == 4)
        _ = current
    }

    @Test("an audit append continues each force's chain after its head, and moves the head before the records")
    func appendAudit() throws {
        let other = try ForceID(force: "nypd")
        let entries = [force, other, force].enumerated().map { index, force in
            AuditEntry(force: force, principal: "p", action: "read", target: "\(force)/crime", outcome: .allowed,
                       requestID: "r\(index)")
        }
        let (_, statements) = try run(CatalogPlans.appendAudit(entries)) { statement in
            guard sql(statement).hasPrefix("SELECT seq, hash, time FROM audit_heads"),
                arguments(statement) == [.text("wmp")]
            else { return [] }
            return [CatalogRow(columns: ["seq", "hash", "time"],
                               values: [.integer(41), .text(String(repeating: "a", count: 64)), .integer(10)])]
        }
        let kinds = statements.map(sql).map { text in
            ["SELECT seq, hash, time FROM audit_heads", "INSERT INTO audit_heads", "INSERT INTO audit_records"]
                .first { text.hasPrefix($0) } ?? text
        }
        #expect(kinds == Array(repeating: ["SELECT seq, hash, time FROM audit_heads", "INSERT INTO audit_heads",
                                            "INSERT INTO audit_records"], count: 2).flatMap { $0 })
        let batches = statements.compactMap { statement -> [[CatalogValue]]? in
            if case .insert(_, _, let rows, _) = statement.form { rows } else { nil }
        }
        #expect(batches.map { $0.map { $0[0] } } == [[.text("wmp"), .text("wmp")], [.text("nypd")]])
        #expect(batches[0].map { $0[1] } == [.integer(42), .integer(43)])
        #expect(batches[1].map { $0[1] } == [.integer(1)])
    }

    @Test("rewraps of distinct extracts go a thousand to a statement; the same extract twice goes one by one")
    func rewrapBatches() throws {
        func rewraps(_ ids: [ExtractID]) throws -> [Rewrap] {
            try ids.map { id in
                let identity = ExtractIdentity(force: force, dataset: dataset, extract: id)
                let key = { (version: Int) in
                    try WrappedKey(kek: .master(force: force, version: version), iv: SecureRandom.bytes(count: 12),
                                   ciphertext: SecureRandom.bytes(count: 48))
                }
                return Rewrap(identity: identity, from: try key(1), to: try key(2))
            }
        }
        // Every row moves: the database answers each UPDATE with the ids it was given.
        func answer(_ statement: CatalogStatement) -> [CatalogRow] {
            guard case .sql(let sql, let arguments) = statement.form, sql.hasPrefix("UPDATE extracts SET wrapped_key")
            else { return [] }
            return stride(from: 0, to: arguments.count - 1, by: 4).map { index in
                CatalogRow(columns: ["id", "kek"], values: [arguments[index], arguments[index + 3]])
            }
        }
        let distinct = try rewraps((0..<2500).map { _ in ExtractID.generate() })
        let (moved, statements) = try run(CatalogPlans.moveWrappedKeys(force: force, rewraps: distinct, now: 9, dialect: .sqlite),
                                          answer)
        #expect(moved == 2500)
        #expect(statements.map(sql).filter { $0.hasPrefix("UPDATE") }.count == 3)
        let lineage = statements.compactMap { statement -> Int? in
            if case .insert("extract_keks", _, let rows, _) = statement.form { rows.count } else { nil }
        }
        #expect(lineage == [1000, 1000, 500])
        let twice = ExtractID.generate()
        let repeated = try rewraps([twice, .generate(), twice])
        let (_, oneByOne) = try run(CatalogPlans.moveWrappedKeys(force: force, rewraps: repeated, now: 9, dialect: .sqlite), answer)
        #expect(oneByOne.map(sql).filter { $0.hasPrefix("UPDATE") }.count == 3)
    }

    @Test("a shred marks only archived, unheld, expired archives, once each, and re-issues tickets of interrupted ones")
    func beginShred() throws {
        func row(_ state: ExtractState, expiresAt: Int64, held: Bool) throws -> (ExtractID, CatalogRow) {
            let made = try extract(state).row
            var values = made.values
            values[made.columns.firstIndex(of: "expires_at")!] = .integer(expiresAt)
            if held { values[made.columns.firstIndex(of: "hold_reason")!] = .text("inquiry") }
            let id = try ExtractID(try made.value("id", as: String.self))
            return (id, CatalogRow(columns: made.columns, values: values))
        }
        let due = try row(.archived, expiresAt: 100, held: false)
        let held = try row(.archived, expiresAt: 100, held: true)
        let notYet = try row(.archived, expiresAt: 900, held: false)
        let interrupted = try row(.shredding, expiresAt: 100, held: false)
        let current = try row(.current, expiresAt: 100, held: false)
        let ids = [due.0, held.0, notYet.0, interrupted.0, current.0, due.0, .generate()]
        let plan = CatalogPlans.beginShred(
            force: force, extracts: ids, reason: .retentionExpired, note: nil, requestedBy: "vaultd", expiredBy: 500,
            now: 600, audit: { AuditEntry(force: $0.identity.force, principal: "vaultd", action: "shred.begin",
                                          target: "wmp/crime", outcome: .allowed, requestID: "s") })
        let (tickets, statements) = try run(plan) { statement in
            sql(statement).hasPrefix("SELECT * FROM extracts") ? [due.1, held.1, notYet.1, interrupted.1, current.1] : []
        }
        #expect(tickets.map(\.record.identity.extract) == [due.0, interrupted.0])
        #expect(tickets.map(\.record.state) == [.shredding, .shredding])
        let update = try #require(statements.first { sql($0).hasPrefix("UPDATE extracts SET state = 'shredding'") })
        #expect(arguments(update).suffix(1) == [.text(due.0.rawValue)])
    }

    @Test("PostgreSQL's placeholders are numbered in order, leaving quoted text alone")
    func numberedPlaceholders() {
        #expect(CatalogDialect.numbered("SELECT * FROM t WHERE a = ? AND b = '?' AND c IN (?, ?)")
                    == "SELECT * FROM t WHERE a = $1 AND b = '?' AND c IN ($2, $3)")
    }

    @Test("a row names the column it cannot read, never the value in it")
    func rowErrors() throws {
        let row = CatalogRow(columns: ["seq", "hash"], values: [.text("secret-looking"), .null])
        let wrongType = #expect(throws: VaultError.self) { try row.value("seq", as: Int64.self) }
        #expect(wrongType?.message == "catalog column seq holds an unexpected value")
        #expect(!String(describing: wrongType).contains("secret-looking"))
        let missing = #expect(throws: VaultError.self) { try row.value("time", as: Int64.self) }
        #expect(missing?.code == .catalogUnavailable)
        #expect(missing?.message == "the catalog has no column time; is its schema up to date?")
        #expect(try row.value("hash", as: String?.self) == nil)
    }
}
