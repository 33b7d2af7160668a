import Foundation
import GRDB
import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

extension EngineFixture {
    /// Some history: uploads, an archival, allowed and refused reads, a use-case change.
    func makeHistory() async throws {
        _ = try await upload(Array("week 1".utf8))
        _ = try await read()
        clock.advance(60)
        _ = try await upload(Array("week 2".utf8))
        _ = try await read()
        await #expect(throws: VaultError(.notNamed, "")) {
            try await self.read(Principal(id: "analyst-2", grants: [.analyst: [self.force]]))
        }
        clock.advance(60)
        _ = try await read()
    }

    /// The export's lines (without newlines), as `vault audit export` would save them.
    func exportLines(since: AuditSince = .sequence(0)) async throws -> [[UInt8]] {
        let export = try await engine.exportAudit(principal: auditor, force: force, since: since, requestID: "export")
        var bytes: [UInt8] = []
        try await export.write(pageSize: 3) { bytes += $0 }
        #expect(bytes.last == 0x0A)
        return bytes.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast().map(Array.init)
    }

    func verify(_ lines: [[UInt8]], key: Ed25519.PublicKey? = nil, sinceHead: AuditHead? = nil)
        -> Result<AuditVerificationReport, AuditBreak>
    {
        var verifier = AuditVerifier(publicKey: key ?? engine.signer.publicKey, sinceHead: sinceHead)
        for line in lines { verifier.consume(line) }
        do { return .success(try verifier.finish()) } catch let failure as AuditBreak {
            return .failure(failure)
        } catch {
            Issue.record("unexpected error \(error)")
            return .failure(AuditBreak(kind: .malformed, line: 0, seq: nil, message: "\(error)"))
        }
    }

    /// A read record nobody made, chained after `prev` with the given seq: what a forger would insert.
    func forgedRead(seq: Int64, time: UnixTime, prev: String) -> AuditRecord {
        AuditRecord(entry: AuditEntry(force: force, principal: "analyst-1", action: "read", target: "wmp/crime",
                                      outcome: .allowed, requestID: "forged"),
                    seq: seq, time: time, prev: prev)
    }

    /// The index in `lines` of the record with `seq`.
    func index(ofSeq seq: Int64, in lines: [[UInt8]]) throws -> Int {
        try #require(lines.firstIndex { (try? AuditRecord(line: $0))?.seq == seq })
    }
}

extension Result where Failure == AuditBreak {
    var failure: AuditBreak? { if case .failure(let value) = self { return value } else { return nil } }
}

@Suite("Audit chain: records, checkpoints, export and offline verification")
struct AuditChainTests {
    @Test("records are canonical DESIGN 5.5 lines chained by prev; the first prev is 64 zeros",
          arguments: TestBackend.all)
    func chainStructure(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let records = try await vault.audit()
        #expect(records.map(\.seq) == Array(1...Int64(records.count)))
        #expect(records.first?.prev == AuditRecord.genesis)
        for (previous, record) in zip(records, records.dropFirst()) {
            #expect(record.prev == previous.hash)
            #expect(record.time >= previous.time)
        }
        #expect(records.map(\.action) == ["use-case.create", "upload", "read", "upload", "archive", "read", "read",
                                          "read"])
        let denied = try #require(records.first { $0.outcome == .denied })
        #expect(denied.principal == "analyst-2" && denied.detail["reason"]?.stringValue == "not_named")
        // Exactly the fields of DESIGN 5.5, keys sorted, no whitespace; the hash is the SHA-256 of the line.
        let line = try #require(records.first?.line)
        let object = try #require(try JSONParser.parse(line).objectValue)
        #expect(Set(object.keys) == ["seq", "time", "force", "principal", "action", "target", "use_case", "outcome",
                                     "detail", "prev"])
        #expect(String(decoding: line, as: UTF8.self).hasPrefix("{\"action\":\"use-case.create\""))
        #expect(records[0].hash == Hex.encode(Digest.hash(.sha256, line)))
        // The request id is kept in detail.
        #expect(records[2].requestID == "r")
    } }

    @Test("an untouched export verifies, from the start and from a sequence number or a time",
          arguments: TestBackend.all)
    func exportVerifies(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let lines = try await vault.exportLines()
        let report = try vault.verify(lines).get()
        // 8 records of history, then the export's own record.
        #expect(report.records == 9 && report.firstSeq == 1 && report.lastSeq == 9 && report.checkpoints == 1)
        #expect(try AuditRecord(line: lines[lines.count - 3]).action == "audit.export")
        #expect(lines.last?.starts(with: Array("{\"export\":".utf8)) == true)

        // A second export: ends at a new checkpoint; a partial one is anchored by the first export's checkpoint.
        let partial = try await vault.exportLines(since: .sequence(9))
        let partialReport = try vault.verify(partial).get()
        #expect(partialReport.firstSeq == 10 && partialReport.lastSeq == 10 && partialReport.checkpoints == 2)
        let byTime = try await vault.exportLines(since: .time(vault.clock.now))
        #expect(try vault.verify(byTime).get().firstSeq > 1)

        // Signed by another key: every checkpoint fails.
        let failure = try #require(vault.verify(lines, key: Ed25519.PrivateKey().publicKey).failure)
        #expect(failure.kind == .badSignature)
    } }

    @Test("a new export is checked against the head verified before: it must extend it, whole or from just after it")
    func sinceHead() async throws {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let first = try vault.verify(try await vault.exportLines()).get()
        let head = AuditHead(seq: first.lastSeq, hash: first.headHash)
        #expect(try AuditHead(head.description) == head)
        _ = try await vault.upload(Array("more".utf8))
        // The whole chain again, and only what came after the head: both extend it.
        let whole = try vault.verify(try await vault.exportLines(), sinceHead: head).get()
        #expect(whole.lastSeq > head.seq)
        let after = try vault.verify(try await vault.exportLines(since: .sequence(head.seq)), sinceHead: head).get()
        #expect(after.firstSeq == head.seq + 1)
        // A head the chain never had (history rewritten since), or an export that starts too late to tell.
        let other = AuditHead(seq: head.seq, hash: String(repeating: "0", count: 64))
        let rewritten = try #require(vault.verify(try await vault.exportLines(), sinceHead: other).failure)
        #expect(rewritten.kind == .altered && rewritten.seq == head.seq)
        let late = try #require(vault.verify(try await vault.exportLines(since: .sequence(head.seq + 1)),
                                             sinceHead: head).failure)
        #expect(late.kind == .removed && late.message.contains("export from seq \(head.seq) or earlier"))
        #expect(throws: VaultError.self) { try AuditHead("12:ABC") }
    }

    @Test("an edited record is named: the one before a broken prev, or the last one against the checkpoint",
          arguments: TestBackend.all)
    func editedRecord(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        var lines = try await vault.exportLines()
        let target = try vault.index(ofSeq: 3, in: lines)
        let original = String(decoding: lines[target], as: UTF8.self)
        lines[target] = Array(original.replacingOccurrences(of: "\"analyst-1\"", with: "\"analyst-9\"").utf8)
        #expect(lines[target] != Array(original.utf8))
        let failure = try #require(vault.verify(lines).failure)
        #expect(failure.kind == .altered && failure.seq == 3, "\(failure)")

        // The last record, whose only witness is the checkpoint.
        var tail = try await vault.exportLines()
        let last = tail.count - 3
        tail[last] = Array(String(decoding: tail[last], as: UTF8.self)
            .replacingOccurrences(of: "\"audit.export\"", with: "\"audit.exporx\"").utf8)
        let lastFailure = try #require(vault.verify(tail).failure)
        #expect(lastFailure.kind == .altered, "\(lastFailure)")
        #expect(lastFailure.seq == (try? AuditRecord(line: tail[last]))?.seq)

        // Whitespace or reordered keys are an edit too (the canonical form is the hashed form).
        var spaced = try await vault.exportLines()
        spaced[1] = Array(String(decoding: spaced[1], as: UTF8.self).replacingOccurrences(of: ",", with: ", ").utf8)
        #expect(try #require(vault.verify(spaced).failure).kind == .altered)
    } }

    @Test("a removed record is named, in the middle, at the start and at the end", arguments: TestBackend.all)
    func removedRecord(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let lines = try await vault.exportLines()

        var middle = lines
        middle.remove(at: try vault.index(ofSeq: 4, in: lines))
        let failure = try #require(vault.verify(middle).failure)
        #expect(failure.kind == .removed && failure.seq == 4, "\(failure)")

        var first = lines
        first.remove(at: try vault.index(ofSeq: 1, in: lines))
        let firstFailure = try #require(vault.verify(first).failure)
        #expect(firstFailure.kind == .removed && firstFailure.seq == 1, "\(firstFailure)")

        // The last record, its checkpoint and the seal.
        let cut = Array(lines.dropLast(3))
        let cutFailure = try #require(vault.verify(cut).failure)
        #expect(cutFailure.kind == .removed && cutFailure.seq == 9, "\(cutFailure)")
    } }

    @Test("the signed seal catches cuts at either end even when the header is edited to match",
          arguments: TestBackend.all)
    func editedHeader(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        await vault.engine.checkpointAll()
        _ = try await vault.read()
        let lines = try await vault.exportLines()
        func header(_ lines: [[UInt8]], first: Int64? = nil, last: Int64? = nil) throws -> [[UInt8]] {
            var copy = lines
            let parsed = try AuditExportHeader(json: try JSONParser.parse(lines[0]))
            copy[0] = AuditExportHeader(force: parsed.force, firstSeq: first ?? parsed.firstSeq,
                                        lastSeq: last ?? parsed.lastSeq, exportedAt: parsed.exportedAt,
                                        keyFingerprint: parsed.keyFingerprint).json.canonicalBytes()
            return copy
        }
        // The head: record 1 removed, the header made to start at 2.
        var headless = try header(lines, first: 2)
        headless.remove(at: try vault.index(ofSeq: 1, in: lines))
        let head = try #require(vault.verify(headless).failure)
        #expect(head.kind == .removed && head.seq == 1, "\(head)")

        // The tail: everything after the periodic checkpoint (of seq 8) removed, the header made to end there.
        let periodic = try #require(lines.firstIndex { $0.starts(with: Array("{\"checkpoint\":".utf8)) })
        let periodicSeq = try AuditCheckpoint(json: try JSONParser.parse(lines[periodic])).seq
        #expect(periodicSeq == 8)
        let kept = Array(lines[...periodic])
        var shortened = try header(kept, last: periodicSeq)
        shortened.append(try #require(lines.last))
        let tail = try #require(vault.verify(shortened).failure)
        #expect(tail.kind == .removed && tail.seq == periodicSeq + 1, "\(tail)")
        // Without the seal too: the missing seal is the cut.
        let unsealed = try #require(vault.verify(try header(kept, last: periodicSeq)).failure)
        #expect(unsealed.kind == .removed && unsealed.seq == periodicSeq + 1, "\(unsealed)")
        // The header alone edited.
        let headerOnly = try #require(vault.verify(try header(lines, last: 99)).failure)
        #expect(headerOnly.kind == .altered, "\(headerOnly)")

        // A partial export whose first record is removed and header moved on.
        let partial = try await vault.exportLines(since: .sequence(4))
        var cutPartial = try header(partial, first: 6)
        cutPartial.remove(at: try vault.index(ofSeq: 5, in: partial))
        let partialFailure = try #require(vault.verify(cutPartial).failure)
        #expect(partialFailure.kind == .removed && partialFailure.seq == 5, "\(partialFailure)")
        // And its first record swapped for a forgery with the right seq.
        var forgedStart = partial
        let five = try vault.index(ofSeq: 5, in: partial)
        let original = try AuditRecord(line: partial[five])
        forgedStart[five] = vault.forgedRead(seq: 5, time: original.time, prev: String(repeating: "1", count: 64)).line
        let forgedFailure = try #require(vault.verify(forgedStart).failure)
        #expect(forgedFailure.kind == .altered && forgedFailure.seq == 5, "\(forgedFailure)")
    } }

    @Test("reordered records are named", arguments: TestBackend.all)
    func reorderedRecords(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        var lines = try await vault.exportLines()
        let five = try vault.index(ofSeq: 5, in: lines), six = try vault.index(ofSeq: 6, in: lines)
        lines.swapAt(five, six)
        let failure = try #require(vault.verify(lines).failure)
        #expect(failure.kind == .reordered && failure.seq == 6, "\(failure)")

        // One record moved to much later.
        var moved = try await vault.exportLines()
        let record = moved.remove(at: try vault.index(ofSeq: 2, in: moved))
        moved.insert(record, at: try vault.index(ofSeq: 7, in: moved))
        let movedFailure = try #require(vault.verify(moved).failure)
        #expect(movedFailure.kind == .reordered, "\(movedFailure)")
    } }

    @Test("inserted records are named: a forged one, a replayed copy, one appended after the checkpoint",
          arguments: TestBackend.all)
    func insertedRecords(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let lines = try await vault.exportLines()
        let records = try lines.dropFirst().dropLast().compactMap { line -> AuditRecord? in
            line.starts(with: Array("{\"checkpoint\"".utf8)) ? nil : try AuditRecord(line: line)
        }
        // A forgery that knows the chain: seq 4, correct prev, inserted before the real record 4.
        let forged = vault.forgedRead(seq: 4, time: records[2].time, prev: records[2].hash)
        var withForgery = lines
        withForgery.insert(forged.line, at: try vault.index(ofSeq: 4, in: lines))
        let failure = try #require(vault.verify(withForgery).failure)
        #expect(failure.kind == .inserted && failure.seq == 4, "\(failure)")

        // A copy of record 2 replayed after record 5.
        var replayed = lines
        replayed.insert(records[1].line, at: try vault.index(ofSeq: 6, in: lines))
        let replayFailure = try #require(vault.verify(replayed).failure)
        #expect(replayFailure.kind == .inserted && replayFailure.seq == 2, "\(replayFailure)")

        // A record from far beyond the chain, in the middle.
        let stray = vault.forgedRead(seq: 500, time: records[3].time, prev: records[3].hash)
        var withStray = lines
        withStray.insert(stray.line, at: try vault.index(ofSeq: 5, in: lines))
        let strayFailure = try #require(vault.verify(withStray).failure)
        #expect(strayFailure.kind == .inserted && strayFailure.seq == 500, "\(strayFailure)")

        // Appended after the final checkpoint, correctly chained: no signature covers it.
        let lastRecord = try #require(records.last)
        let appended = vault.forgedRead(seq: lastRecord.seq + 1, time: lastRecord.time, prev: lastRecord.hash)
        let beforeSeal = Array(lines.dropLast()) + [appended.line, lines.last!]
        let appendFailure = try #require(vault.verify(beforeSeal).failure)
        #expect(appendFailure.kind == .inserted && appendFailure.seq == lastRecord.seq + 1, "\(appendFailure)")
        let afterSeal = try #require(vault.verify(lines + [appended.line]).failure)
        #expect(afterSeal.kind == .inserted && afterSeal.seq == lastRecord.seq + 1, "\(afterSeal)")
    } }

    @Test("a rewritten chain (every hash recomputed) still fails against the signed checkpoint",
          arguments: TestBackend.all)
    func rewrittenChain(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let lines = try await vault.exportLines()
        var rewritten: [[UInt8]] = [lines[0]]
        var prev = AuditRecord.genesis
        for line in lines.dropFirst() {
            if line.starts(with: Array("{\"checkpoint\"".utf8)) || line.starts(with: Array("{\"export\"".utf8)) {
                rewritten.append(line)
                continue
            }
            let record = try AuditRecord(line: line)
            var detail = record.detail
            detail["request_id"] = nil
            let entry = AuditEntry(force: record.force, principal: record.seq == 3 ? "nobody" : record.principal,
                                   action: record.action, target: record.target, useCase: record.useCase,
                                   outcome: record.outcome, detail: detail, requestID: record.requestID ?? "")
            let forged = AuditRecord(entry: entry, seq: record.seq, time: record.time, prev: prev)
            rewritten.append(forged.line)
            prev = forged.hash
        }
        // Every prev is consistent, so only the signed checkpoint can tell: it names the record it signed.
        let failure = try #require(vault.verify(rewritten).failure)
        #expect(failure.kind == .altered && failure.seq == 9, "\(failure)")
        // A checkpoint re-signed by another key to match the rewritten head is refused.
        let head = try AuditRecord(line: rewritten[rewritten.count - 3])
        let impostor = AuditSigner(key: Ed25519.PrivateKey())
        var resigned = rewritten
        resigned[resigned.count - 2] = try impostor.checkpoint(force: vault.force, seq: head.seq, hash: head.hash,
                                                           time: head.time).json.canonicalBytes()
        #expect(try #require(vault.verify(resigned).failure).kind == .badSignature)
    } }

    @Test("OpenSSL reads the audit key files and verifies a checkpoint signature made by the vault",
          arguments: TestBackend.all)
    func opensslInterop(_ backend: TestBackend) async throws { try await backend.run {
        let directory = try TemporaryDirectory("audit-openssl")
        let signer = try AuditSigner.loadOrCreate(in: directory.path)
        let derived = try Subprocess.run("/usr/bin/openssl", ["pkey", "-in", directory.file(AuditSigner.privateKeyFile),
                                                              "-pubout"])
        #expect(derived.status == 0)
        #expect(String(decoding: derived.stdout, as: UTF8.self) == signer.publicKey.pem)
        let checkpoint = try signer.checkpoint(force: try ForceID(force: "wmp"), seq: 7, hash: String(repeating: "ab", count: 32),
                                           time: 1_790_000_000)
        let message = try directory.write("message", checkpoint.signedBytes)
        let signature = try directory.write("signature", checkpoint.signature)
        let verified = try Subprocess.run("/usr/bin/openssl", [
            "pkeyutl", "-verify", "-pubin", "-inkey", directory.file(AuditSigner.publicKeyFile), "-rawin",
            "-in", message, "-sigfile", signature,
        ])
        #expect(verified.status == 0, "\(String(decoding: verified.stdout, as: UTF8.self))")
    } }

    @Test("crafted exports (huge numbers, huge lines, junk) are named breaks, never a crash",
          arguments: TestBackend.all)
    func craftedExports(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        let lines = try await vault.exportLines()
        var huge = lines
        let three = try vault.index(ofSeq: 3, in: lines)
        huge[three] = Array(String(decoding: huge[three], as: UTF8.self)
            .replacingOccurrences(of: "\"seq\":3,", with: "\"seq\":\(Int64.max),").utf8)
        #expect(vault.verify(huge).failure != nil)
        var header = lines
        header[0] = Array(String(decoding: header[0], as: UTF8.self)
            .replacingOccurrences(of: "\"first_seq\":1", with: "\"first_seq\":\(Int64.min)").utf8)
        #expect(try #require(vault.verify(header).failure).kind == .malformed)
        #expect(try #require(vault.verify([Array("junk".utf8)]).failure).kind == .malformed)
        #expect(try #require(vault.verify([]).failure).kind == .malformed)

        let directory = try TemporaryDirectory("audit-crafted")
        let long = try directory.write("long.ndjson", lines[0] + [0x0A] + [UInt8](repeating: 0x41, count: 2 << 20))
        #expect(throws: AuditBreak.self) { try AuditVerifier.verify(path: long, publicKey: vault.engine.signer.publicKey) }
    } }

    @Test("checkpoints: one per new head, signed over the canonical statement; none for an empty chain",
          arguments: TestBackend.all)
    func checkpoints(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let gmp = try ForceID(force: "gmp")
        #expect(try await vault.catalog.checkpointAudit(force: gmp, now: 1, signer: vault.engine.signer) == nil)
        let first = try #require(try await vault.catalog.checkpointAudit(force: vault.force, now: 10,
                                                                       signer: vault.engine.signer))
        let again = try await vault.catalog.checkpointAudit(force: vault.force, now: 20, signer: vault.engine.signer)
        #expect(again == first)
        #expect(vault.engine.signer.publicKey.isValidSignature(first.signature, for: first.signedBytes))
        #expect(String(decoding: first.signedBytes, as: UTF8.self)
            == "{\"force\":\"wmp\",\"hash\":\"\(first.hash)\",\"seq\":1,\"time\":\"1970-01-01T00:00:10Z\"}")
        _ = try await vault.upload(Array("x".utf8))
        let next = try #require(try await vault.catalog.checkpointAudit(force: vault.force, now: 30,
                                                                      signer: vault.engine.signer))
        #expect(next.seq == 2)
    } }

    @Test("the chain and its checkpoints are append-only in the catalog", arguments: TestBackend.all)
    func appendOnly(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        await vault.engine.checkpointAll()
        for statement in ["UPDATE audit_records SET principal = 'x'", "DELETE FROM audit_records",
                          "UPDATE audit_checkpoints SET hash = 'x'", "DELETE FROM audit_checkpoints"] {
            await #expect(throws: (any Error).self, "\(statement)") { try await vault.rawUpdate(statement, []) }
        }
        #expect(try await vault.audit().count == 1)
    } }

    // SQLite catalogs from before the audit chain; PostgreSQL catalogs started after it.
    @Test("records of the simple audit table (before the chain) are migrated into it, in order")
    func migration() async throws {
        let directory = try TemporaryDirectory("audit-migration")
        let path = directory.file("catalog.sqlite")
        let pool = try DatabasePool(path: path)
        try SQLiteCatalog.migrator.migrate(pool, upTo: "v2: bearer tokens")
        try await pool.write { db in
            for (seq, action) in [(1, "use-case.create"), (2, "upload"), (3, "read")] {
                try db.execute(sql: """
                    INSERT INTO audit (force, seq, time, principal, action, target, use_case, outcome, detail, request_id)
                    VALUES ('wmp', ?, ?, 'p', ?, 'wmp/crime/X', NULL, 'allowed', '{"n":1}', 'req')
                    """, arguments: [seq, 1000 - seq, action])
            }
        }
        try pool.close()
        let catalog = try SQLiteCatalog(path: path)
        let records = try await catalog.auditRecords(force: try ForceID(force: "wmp"))
        #expect(records.map(\.action) == ["use-case.create", "upload", "read"])
        #expect(records[1].prev == records[0].hash && records[2].prev == records[1].hash)
        // Times never go backwards in the chain.
        #expect(records.map(\.time) == [999, 999, 999])
        #expect(records[0].detail["migrated"] == .bool(true))
        let search = AuditQuery()
        #expect(try await catalog.searchAudit(force: try ForceID(force: "wmp"), query: search).count == 3)
    }

    @Test("search filters by principal, use case, dataset, action (with prefix), outcome and time; searches are audited",
          arguments: TestBackend.all)
    func search(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        try await vault.makeHistory()
        func search(_ configure: (inout AuditQuery) -> Void) async throws -> [AuditRecord] {
            var query = AuditQuery()
            configure(&query)
            return try await vault.engine.searchAudit(principal: vault.auditor, force: vault.force, query: query,
                                                      requestID: "s").map { try AuditRecord(line: $0.line) }
        }
        let reads = try await search {
            $0.dataset = vault.dataset
            $0.useCase = "serious-violence"
            $0.action = "read"
            $0.outcome = .allowed
        }
        #expect(reads.count == 3 && reads.allSatisfy { $0.principal == "analyst-1" })
        #expect(try await search { $0.principal = "analyst-2" }.map(\.outcome) == [.denied])
        #expect(try await search { $0.action = "use-case.*" }.map(\.action) == ["use-case.create"])
        let late = try await search { $0.from = vault.clock.now }
        #expect(late.contains { $0.action == "read" } && !late.contains { $0.action == "upload" })
        #expect(try await search { $0.until = 0 }.isEmpty)
        #expect(try await search { $0.limit = 2 }.count == 2)
        #expect(try await search { $0.afterSeq = 7 }.first?.seq == 8)
        // Each search is itself a record, with its filters.
        let searches = try await vault.audit().filter { $0.action == "audit.search" }
        #expect(searches.count == 7)
        #expect(searches.first?.detail["dataset"]?.stringValue == "crime")

        await #expect(throws: VaultError(.roleRequired, "")) {
            try await vault.engine.searchAudit(principal: vault.analyst, force: vault.force, query: AuditQuery(),
                                               requestID: "x")
        }
        #expect(throws: VaultError(.invalidParameter, "")) { try AuditQuery(parameters: [("princpal", "x")]) }
        #expect(throws: VaultError(.invalidParameter, "")) { try AuditQuery(parameters: [("from", "yesterday")]) }
        #expect(throws: VaultError(.invalidParameter, "")) { try AuditQuery(parameters: [("limit", "0")]) }
    } }

    @Test("the audit key: created once as PKCS#8 PEM (0600) with its public key beside it, and reloaded",
          arguments: TestBackend.all)
    func auditKeyFiles(_ backend: TestBackend) async throws { try await backend.run {
        let directory = try TemporaryDirectory("audit-key")
        let signer = try AuditSigner.loadOrCreate(in: directory.path)
        let again = try AuditSigner.loadOrCreate(in: directory.path)
        #expect(signer.publicKey == again.publicKey)
        let privatePath = directory.file(AuditSigner.privateKeyFile)
        let attributes = try FileManager.default.attributesOfItem(atPath: privatePath)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let pem = try String(contentsOfFile: directory.file(AuditSigner.publicKeyFile), encoding: .utf8)
        #expect(try Ed25519.PublicKey(pem: pem) == signer.publicKey)
        #expect(try String(contentsOfFile: privatePath, encoding: .utf8).hasPrefix("-----BEGIN PRIVATE KEY-----\n"))
        // A damaged key file is a clear error, not a new key.
        try Data("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".utf8)
            .write(to: URL(fileURLWithPath: privatePath))
        #expect(throws: VaultError(.malformedAudit, "")) { try AuditSigner.loadOrCreate(in: directory.path) }
    } }
}

/// The chain append both catalogs write through, without a database.
@Suite("Audit chain append plan")
struct AuditAppendTests {
    let wmp = try! ForceID(force: "wmp")
    let gmp = try! ForceID(force: "gmp")

    func entry(_ force: ForceID, at time: UnixTime, _ action: String) -> AuditEntry {
        AuditEntry(force: force, time: time, principal: "p", action: action, target: "\(force)", outcome: .allowed,
                   requestID: action)
    }

    @Test("entries of several forces extend each force's chain in order: next seq, prev = head, time never back")
    func extend() throws {
        let plan = AuditAppend([entry(wmp, at: 100, "a"), entry(gmp, at: 100, "b"), entry(wmp, at: 90, "c"),
                                entry(wmp, at: 120, "d")])
        #expect(plan.chains.map(\.force) == [wmp, gmp])
        #expect(plan.chains[0].entries.map(\.action) == ["a", "c", "d"])
        let head = AuditAppend.Head(seq: 41, hash: String(repeating: "ab", count: 32), time: 105)
        let (records, next) = plan.chains[0].records(after: head)
        #expect(records.map(\.seq) == [42, 43, 44])
        #expect(records.map(\.time) == [105, 105, 120], "a clock stepping back does not reorder the chain")
        #expect(records[0].prev == head.hash)
        #expect(records[1].prev == records[0].hash && records[2].prev == records[1].hash)
        #expect(next == AuditAppend.Head(seq: 44, hash: records[2].hash, time: 120))
        // Every record is the canonical line it hashes to, readable back as itself.
        for record in records { #expect(try AuditRecord(line: record.line) == record) }
        // An empty chain starts at seq 1 from the genesis hash.
        let (first, _) = plan.chains[1].records(after: nil)
        #expect(first.map(\.seq) == [1])
        #expect(first[0].prev == AuditRecord.genesis)
    }
}
