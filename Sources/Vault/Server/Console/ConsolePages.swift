import HTTPTypes
import Hummingbird
import KeyCustody
import NIOCore
import Synchronization

/// The pages of a force, and the operations page. Every page calls the engine with the session's principal, exactly as
/// the API's route for the same thing does: the same policy decides, the same audit records the access.
enum ConsolePages {
    static func register(on pages: RouterGroup<ConsoleContext>, engine: VaultEngine, sessions: ConsoleSessions) {
        let audit = ConsoleAuditStatus()
        @Sendable func page(_ context: ConsoleContext, _ title: String) throws -> ConsolePage {
            ConsolePage(context, sessions: sessions, engine: engine, title: title, force: try context.force())
        }

        /// A destructive form must carry its ticked confirmation (the server checks; the browser's `required` only
        /// helps).
        @Sendable func confirmed(_ context: ConsoleContext) throws {
            guard try context.form["confirm"] == "yes" else {
                throw VaultError(.invalidParameter, "tick the confirmation box to show you understand what this does")
            }
        }

        // MARK: Overview

        pages.get("forces/:force") { _, context -> Response in
            let page = try page(context, "Overview")
            let force = try context.force()
            let principal = context.principal
            let datasets = try await engine.listDatasets(principal: principal, force: force,
                                                         requestID: context.requestID)
            let current = try await engine.listExtracts(principal: principal, force: force, dataset: nil,
                                                        archived: false, requestID: context.requestID)
            var archives: [ExtractRecord]?
            if principal.hasAny(of: Policy.Readers.archives, for: force) {
                archives = try await engine.listExtracts(principal: principal, force: force, dataset: nil,
                                                         archived: true, requestID: context.requestID)
            }
            let now = engine.currentTime
            let datasetRows = datasets.map { dataset -> [String: Any] in
                var row = Console.values(dataset.json) as? [String: Any] ?? [:]
                if let extract = current.first(where: { $0.identity.dataset == dataset.id }) {
                    row["current"] = extractRow(extract, now: now)
                }
                if let archives {
                    let mine = archives.filter { $0.identity.dataset == dataset.id }
                    row["archive_count"] = mine.count
                    if let next = mine.filter({ $0.hold == nil }).compactMap(\.expiresAt).min() {
                        row["next_expiry"] = Console.humanTime(unixTime: next)
                    }
                }
                return row
            }
            var values: [String: Any] = ["datasets": datasetRows,
                                         "custodian": principal.has(.custodian, for: force)]
            if let archives {
                values["archives"] = archives.sorted { ($0.expiresAt ?? .max) < ($1.expiresAt ?? .max) }
                    .map { extractRow($0, now: now) }
                values["archives_visible"] = true
            }
            return page.render("overview", values, section: "")
        }

        // A custodian's actions on the overview: a dataset's retention, legal holds, shredding an archive early.
        pages.post("forces/:force/datasets/:dataset") { _, context -> Response in
            let force = try context.force()
            let form = try context.form
            let text = try form.require("retention_days", label: "the retention in days")
            guard let days = Int(text) else {
                throw VaultError(.invalidParameter, "the retention is a whole number of days, not \(text.prefix(40))")
            }
            let stored = try await engine.putDataset(
                principal: context.principal, force: force, dataset: try context.dataset(), retentionDays: days,
                description: form["description"] ?? "", requestID: context.requestID)
            return try page(context, "Overview").done(
                "Dataset \(stored.id) now keeps its archives \(stored.retentionDays) days after they are archived.",
                then: "/ui/forces/\(force)")
        }
        // A legal hold placed, or lifted, with its reason.
        for place in [true, false] {
            pages.post(RouterPath(stringLiteral: "forces/:force/archives/:extract/" + (place ? "hold" : "release"))) {
                _, context -> Response in
                let force = try context.force()
                let extract = try context.extract()
                let reason = try context.form.require("reason", label: "the reason")
                let record = place
                    ? try await engine.placeHold(principal: context.principal, force: force, extract: extract,
                                                 reason: reason, requestID: context.requestID)
                    : try await engine.releaseHold(principal: context.principal, force: force, extract: extract,
                                                   reason: reason, requestID: context.requestID)
                return try page(context, "Overview").done(place
                    ? "Archive \(record.identity.extract) is on legal hold: it is not shredded until the hold is lifted."
                    : "The legal hold on archive \(record.identity.extract) is lifted.", then: "/ui/forces/\(force)")
            }
        }
        pages.post("forces/:force/archives/:extract/shred") { _, context -> Response in
            try confirmed(context)
            let force = try context.force()
            let certificate = try await engine.shredArchive(
                principal: context.principal, force: force, extract: try context.extract(),
                reason: try context.form.require("reason", label: "the reason"), requestID: context.requestID)
            return try page(context, "Overview").done(
                "Archive \(certificate.extract) is shredded: certificate \(certificate.id), verdict "
                    + "\(certificate.verdict.rawValue).", then: "/ui/forces/\(force)/certificates/\(certificate.id)")
        }

        // MARK: Retrievals

        pages.get("forces/:force/retrievals") { _, context -> Response in
            let page = try page(context, "Retrievals")
            let force = try context.force()
            let list = try await engine.listRetrievals(principal: context.principal, force: force,
                                                       requestID: context.requestID)
            let now = engine.currentTime
            let custodian = context.principal.has(.custodian, for: force)
            let rows = list.sorted { $0.requestedAt > $1.requestedAt }.map { retrieval -> [String: Any] in
                var row = Console.values(retrieval.json(now: now)) as? [String: Any] ?? [:]
                let state = row["state"] as? String ?? ""
                row["pending"] = state == "pending"
                row["requested"] = Console.humanTime(unixTime: retrieval.requestedAt)
                row["expires"] = retrieval.expiresAt.map { Console.humanTime(unixTime: $0) } ?? ""
                row["approved_by"] = retrieval.approvals.map(\.custodian).joined(separator: ", ")
                row["can_approve"] = custodian && retrieval.approvalRefusal(by: context.principal.id) == nil
                return row
            }
            return page.render("retrievals", ["retrievals": rows, "custodian": custodian], section: "/retrievals")
        }
        pages.post("forces/:force/retrievals/:id/approve") { _, context -> Response in
            let force = try context.force()
            let retrieval = try await engine.approveRetrieval(
                principal: context.principal, force: force, id: try context.resource("id", kind: "retrieval id"),
                requestID: context.requestID)
            let notice = retrieval.state == .granted
                ? "Retrieval \(retrieval.id) is granted: \(retrieval.analyst) may read archive \(retrieval.extract) "
                    + "under use case \(retrieval.useCase) until "
                    + Console.humanTime(unixTime: retrieval.expiresAt ?? engine.currentTime) + "."
                : "You approved retrieval \(retrieval.id). A second custodian must approve it before it is granted."
            return try page(context, "Retrievals").done(notice, then: "/ui/forces/\(force)/retrievals")
        }

        // MARK: Use cases

        pages.get("forces/:force/use-cases") { _, context -> Response in
            let page = try page(context, "Use cases")
            let force = try context.force()
            let list = try await engine.listUseCases(principal: context.principal, force: force,
                                                     requestID: context.requestID)
            let remote = engine.remoteCustody(force)
            let editable = remote == nil && context.principal.has(.custodian, for: force)
            let now = engine.currentTime
            let rows = list.sorted { $0.id.rawValue < $1.id.rawValue }.map { useCase -> [String: Any] in
                var row = Console.values(useCase.json) as? [String: Any] ?? [:]
                row["datasets_text"] = useCase.datasets.map(\.rawValue).joined(separator: ", ")
                row["principals_text"] = useCase.principals.joined(separator: ", ")
                row["window"] = window(useCase)
                row["status"] = useCase.standing(at: now).rawValue
                row["editable"] = editable && useCase.revokedAt == nil
                return row
            }
            var values: [String: Any] = ["use_cases": rows, "editable": editable]
            if let remote { values["remote_url"] = remote.location.url }
            return page.render("use-cases", values, section: "/use-cases")
        }
        @Sendable func useCaseForm(_ context: ConsoleContext, existing: UseCase?, posted: ConsoleForm?,
                                   error: String?) async throws -> Response
        {
            let force = try context.force()
            let editing = existing != nil || posted?["editing"] == "1"
            let id = posted?["id"] ?? existing?.id.rawValue ?? ""
            let page = try page(context, editing ? "Edit use case \(id)" : "New use case")
            let datasets = try await engine.listDatasets(principal: context.principal, force: force,
                                                         requestID: context.requestID)
            let chosen = Set(posted?.lists["datasets"] ?? existing?.datasets.map(\.rawValue) ?? [])
            var values: [String: Any] = [
                "id": id,
                "description": posted?["description"] ?? existing?.description ?? "",
                "lawful_basis": posted?["lawful_basis"] ?? existing?.lawfulBasis ?? "",
                "principals": posted?["principals"] ?? existing?.principals.joined(separator: ", ") ?? "",
                "valid_from": posted?["valid_from"] ?? existing?.validFrom.map(Console.inputTime) ?? "",
                "valid_until": posted?["valid_until"] ?? existing?.validUntil.map(Console.inputTime) ?? "",
                "editing": editing,
                "dataset_choices": datasets.map { ["id": $0.id.rawValue, "checked": chosen.contains($0.id.rawValue)] },
            ]
            if let error { values["error"] = error }
            return page.render("use-case-form", values, status: error == nil ? .ok : .badRequest,
                               section: "/use-cases")
        }
        pages.get("forces/:force/use-cases/new") { _, context -> Response in
            try await useCaseForm(context, existing: nil, posted: nil, error: nil)
        }
        pages.get("forces/:force/use-cases/:id/edit") { _, context -> Response in
            let force = try context.force()
            let id = try context.resource("id", kind: "use case id")
            let list = try await engine.listUseCases(principal: context.principal, force: force,
                                                     requestID: context.requestID)
            guard let existing = list.first(where: { $0.id == id }) else {
                throw VaultError(.noSuchUseCase, "force \(force) has no use case \(id)")
            }
            return try await useCaseForm(context, existing: existing, posted: nil, error: nil)
        }
        pages.post("forces/:force/use-cases") { _, context -> Response in
            let force = try context.force()
            let form = try context.form
            let stored: UseCase
            do {
                let id = try ResourceID(try form.require("id", label: "the use case id"), kind: "use case id")
                let split = { (text: String) in
                    text.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" || $0 == "\r" })
                        .map(String.init)
                }
                var body: [String: JSONValue] = [
                    "description": .string(form["description"] ?? ""),
                    "lawful_basis": .string(try form.require("lawful_basis", label: "the lawful basis")),
                    "datasets": .array((form.lists["datasets"] ?? []).map(JSONValue.string)),
                    "principals": .array(split(form["principals"] ?? "").map(JSONValue.string)),
                ]
                for member in ["valid_from", "valid_until"] {
                    if let text = form[member]?.trimmingCharacters(in: .whitespaces), !text.isEmpty {
                        body[member] = .string(Console.wireTime(fromInput: text))
                    }
                }
                let request = try UseCaseRequest(json: .object(body))
                // "New use case" never replaces one: an id already in use is edited from the list instead.
                if form["editing"] != "1" {
                    let existing = try await engine.listUseCases(principal: context.principal, force: force,
                                                                 requestID: context.requestID)
                    if existing.contains(where: { $0.id == id }) {
                        throw VaultError(.invalidParameter, "force \(force) has a use case \(id) already: edit it "
                                            + "from the list, or choose another id")
                    }
                }
                stored = try await engine.putUseCase(principal: context.principal,
                                                     request.useCase(force: force, id: id),
                                                     requestID: context.requestID)
            } catch let error as VaultError where error.code == .invalidParameter {
                return try await useCaseForm(context, existing: nil, posted: form, error: error.message)
            } catch let error as CustodyError {
                return try await useCaseForm(context, existing: nil, posted: form, error: error.message)
            }
            return try page(context, "Use cases").done("Use case \(stored.id) is saved.",
                                                      then: "/ui/forces/\(force)/use-cases")
        }
        pages.post("forces/:force/use-cases/:id/revoke") { _, context -> Response in
            let force = try context.force()
            let revoked = try await engine.revokeUseCase(principal: context.principal, force: force,
                                                         id: try context.resource("id", kind: "use case id"),
                                                         requestID: context.requestID)
            return try page(context, "Use cases").done(
                "Use case \(revoked.id) is revoked: no read passes under it from now on.",
                then: "/ui/forces/\(force)/use-cases")
        }

        // MARK: Keys

        @Sendable func keyStatus(_ context: ConsoleContext) async throws -> KeyStatusDocument {
            KeyStatusDocument(try await engine.keyStatus(principal: context.principal, force: try context.force(),
                                                         requestID: context.requestID))
        }
        pages.get("forces/:force/keys") { _, context -> Response in
            let document = try await keyStatus(context)
            var values = Console.values(document.json) as? [String: Any] ?? [:]
            values["progress"] = Console.values(RewrapProgress(document).json)
            values["has_failures"] = !document.failures.isEmpty
            values["custodian"] = context.principal.has(.custodian, for: try context.force())
            values["master_keys"] = document.masterKeys.sorted { $0.version > $1.version }.map { key -> [String: Any] in
                ["id": key.id, "version": key.version, "state": key.state, "created": Console.humanTime(key.created),
                 "wraps": key.wraps,
                 // Custody destroys only a retired version (nothing wrapped under it any more).
                 "destroyable": key.state == KeyState.retired.rawValue && key.wraps == 0]
            }
            values["rotations"] = document.rotations.reversed().map { rotation -> [String: Any] in
                ["from": rotation.from ?? "", "to": rotation.to, "requested_by": rotation.requestedBy,
                 "processed": rotation.processed, "state": rotation.state,
                 "started": Console.humanTime(rotation.startedAt), "finished": Console.humanTime(rotation.finishedAt)]
            }
            return try page(context, "Keys").render("keys", values, section: "/keys")
        }
        // The progress bar's numbers while a rotation runs (console.js asks every few seconds).
        pages.get("forces/:force/keys/progress") { _, context -> Response in
            VaultAPI.json(RewrapProgress(try await keyStatus(context)).json)
        }
        pages.post("forces/:force/keys/rotate") { _, context -> Response in
            try confirmed(context)
            let force = try context.force()
            let rotation = try await engine.rotateMasterKey(principal: context.principal, force: force,
                                                            requestID: context.requestID)
            return try page(context, "Keys").done(
                "Rotation to \(rotation.to) started: every wrapped key is being rewrapped under it.",
                then: "/ui/forces/\(force)/keys")
        }
        pages.post("forces/:force/keys/:version/destroy") { _, context -> Response in
            try confirmed(context)
            let force = try context.force()
            let version = try context.masterKeyVersion()
            let reissued = try await engine.destroyMasterKey(principal: context.principal, force: force,
                                                             version: version, requestID: context.requestID)
            return try page(context, "Keys").done(
                "Master key version \(version) is destroyed. \(reissued.count) destruction certificate(s) were "
                    + "re-issued.", then: "/ui/forces/\(force)/keys")
        }

        // MARK: Certificates

        pages.get("forces/:force/certificates") { _, context -> Response in
            let force = try context.force()
            let list = try await engine.certificates(principal: context.principal, force: force, extract: nil,
                                                     requestID: context.requestID)
            let shown = list.sorted { $0.issuedAt > $1.issuedAt }.prefix(Self.pageRows)
            var values: [String: Any] = ["certificates": shown.map(certificateRow)]
            // Mustache shows a section for any number, 0 too: only a count worth saying is set.
            if list.count > shown.count { values["more"] = list.count - shown.count }
            return try page(context, "Certificates").render("certificates", values, section: "/certificates")
        }
        pages.get("forces/:force/certificates/:id") { _, context -> Response in
            let force = try context.force()
            let certificate = try await engine.certificate(principal: context.principal, force: force,
                                                           id: try context.parameters.require("id"),
                                                           requestID: context.requestID)
            var values = certificateRow(certificate)
            values["body"] = Console.values(certificate.body)
            values["json"] = Console.pretty(certificate.json)
            return try page(context, "Certificate \(certificate.id)").render("certificate", values,
                                                                             section: "/certificates")
        }
        pages.get("forces/:force/certificates/:id/download") { _, context -> Response in
            let force = try context.force()
            let certificate = try await engine.certificate(principal: context.principal, force: force,
                                                           id: try context.parameters.require("id"),
                                                           requestID: context.requestID)
            return Response(status: .ok, headers: [
                .contentType: "application/json",
                .contentDisposition: "attachment; filename=\"certificate-\(certificate.id).json\"",
            ], body: .init(byteBuffer: ByteBuffer(bytes: certificate.json.canonicalBytes() + [0x0A])))
        }

        // MARK: Audit

        pages.get("forces/:force/audit") { request, context -> Response in
            let force = try context.force()
            let known = ["principal", "use_case", "dataset", "action", "outcome", "from", "until", "after", "limit"]
            var filters: [(String, String)] = []
            var values: [String: Any] = [:]
            for (name, value) in request.uri.queryParameters {
                let name = String(name)
                let value = String(value).trimmingCharacters(in: .whitespaces)
                guard known.contains(name), !value.isEmpty else { continue }
                values["filter_" + name] = value
                filters.append((name, name == "from" || name == "until" ? Console.wireTime(fromInput: value) : value))
            }
            if !filters.contains(where: { $0.0 == "limit" }) { filters.append(("limit", "100")) }
            let searching = request.uri.queryParameters["search"] != nil
            if searching {
                let lines = try await engine.searchAudit(principal: context.principal, force: force,
                                                         query: try AuditQuery(parameters: filters),
                                                         requestID: context.requestID)
                values["searched"] = true
                values["results"] = lines.map(auditRow)
                values["result_count"] = lines.count
                if let last = lines.last, lines.count == Int(filters.first { $0.0 == "limit" }?.1 ?? "100") {
                    let next = filters.filter { $0.0 != "after" } + [("after", String(last.seq)), ("search", "1")]
                    values["next_page"] = "/ui/forces/\(force)/audit?" + next.map { name, value in
                        "\(name)=\(Console.queryEscape(value))"
                    }.joined(separator: "&")
                }
            }
            values["chain"] = try await audit.status(engine: engine, principal: context.principal, force: force,
                                                     requestID: context.requestID)
            return try page(context, "Audit").render("audit", values, section: "/audit")
        }
        pages.get("forces/:force/audit/export") { _, context -> Response in
            let force = try context.force()
            let export = try await engine.exportAudit(principal: context.principal, force: force,
                                                      since: .sequence(0), requestID: context.requestID)
            let date = Timestamp.format(secondsSinceEpoch: Int(engine.currentTime)).prefix(10)
            return Response(status: .ok, headers: [
                .contentType: "application/x-ndjson",
                .contentDisposition: "attachment; filename=\"audit-\(force)-\(date).ndjson\"",
            ], body: ResponseBody { writer in
                try await export.write { try await writer.write(ByteBuffer(bytes: $0)) }
                try await writer.finish(nil)
            })
        }

        // MARK: Operations

        pages.get("ops") { _, context -> Response in
            let forces = try Policy.forces(engine.forces, where: context.principal, holds: .ops)
            let now = engine.currentTime
            var sections: [[String: Any]] = []
            for force in forces {
                let archives = try await engine.listExtracts(principal: context.principal, force: force, dataset: nil,
                                                             archived: true, requestID: context.requestID)
                let expiring = archives.filter { ($0.expiresAt ?? .max) < now + 30 * 86_400 }
                    .sorted { ($0.expiresAt ?? 0) < ($1.expiresAt ?? 0) }
                let sweep = try await engine.shredExpired(principal: context.principal, force: force, dryRun: true,
                                                          requestID: context.requestID)
                let activity = try await engine.activity(principal: context.principal, force: force, days: 14,
                                                         requestID: context.requestID)
                sections.append([
                    "force": force.rawValue, "expiring_count": expiring.count,
                    "expiring": expiring.prefix(Self.pageRows).map { extractRow($0, now: now) },
                    "candidates": sweep.candidates.prefix(Self.pageRows).map { extractRow($0, now: now) },
                    "candidate_count": sweep.candidates.count,
                    "held": sweep.held.map { ["extract": $0.identity.extract.rawValue,
                                              "reason": $0.hold?.reason ?? ""] },
                    "charts": ConsoleCharts.activity(activity, days: 14, today: now / 86_400),
                ])
            }
            var page = ConsolePage(context, sessions: sessions, engine: engine, title: "Operations")
            page.force = nil
            return page.render("ops", ["sections": sections])
        }
    }

    // MARK: Rows

    /// The most rows a long list shows (newest or soonest first); the page says how many more there are.
    static let pageRows = 500

    static func extractRow(_ record: ExtractRecord, now: UnixTime) -> [String: Any] {
        var row = Console.values(record.json) as? [String: Any] ?? [:]
        row["size"] = Console.humanSize(Int64(record.plaintextSize))
        row["committed"] = record.committedAt.map { Console.humanTime(unixTime: $0) } ?? ""
        row["archived"] = record.archivedAt.map { Console.humanTime(unixTime: $0) } ?? ""
        row["expires"] = record.expiresAt.map { Console.humanTime(unixTime: $0) } ?? ""
        if let hold = record.hold {
            row["status"] = "held: \(hold.reason)"
            row["held"] = true
        } else if record.isPastRetention(at: now) {
            row["status"] = "retention ended: shredded at the next sweep"
            row["expired"] = true
        } else if record.state == .archived {
            row["status"] = "kept until " + (row["expires"] as? String ?? "")
        } else {
            row["status"] = record.state.rawValue
        }
        return row
    }

    static func certificateRow(_ certificate: DestructionCertificate) -> [String: Any] {
        let pending = certificate.pendingKEKs.map(\.description)
        return [
            "id": certificate.id, "extract": certificate.extract.rawValue, "force": certificate.force.rawValue,
            "verdict": certificate.verdict.rawValue, "complete": certificate.verdict == .complete,
            "issued": Console.humanTime(unixTime: certificate.issuedAt),
            "shredded": Console.humanTime(certificate.shreddedAt),
            "why": certificate.verdict == .complete
                ? "every key that ever wrapped this archive's key is destroyed, and its blob is deleted"
                : "custody has not yet destroyed \(pending.count) key(s) that once wrapped this archive's key: "
                    + pending.joined(separator: ", ") + ". The certificate is re-issued when they are destroyed.",
        ]
    }

    static func auditRow(_ line: AuditLine) -> [String: Any] {
        guard let json = try? JSONParser.parse(line.line) else { return ["seq": line.seq, "action": "(unreadable)"] }
        var row = Console.values(json) as? [String: Any] ?? [:]
        row["seq"] = line.seq
        row["when"] = Console.humanTime(json["time"]?.stringValue)
        row["denied"] = json["outcome"]?.stringValue == "denied"
        if let detail = json["detail"], detail != .null, detail != .object([:]) {
            row["detail_text"] = detail.canonicalString
        }
        return row
    }

    static func window(_ useCase: UseCase) -> String {
        switch (useCase.validFrom, useCase.validUntil) {
        case (nil, nil): return "always"
        case (let from?, nil): return "from " + Console.humanTime(unixTime: from)
        case (nil, let until?): return "until " + Console.humanTime(unixTime: until)
        case (let from?, let until?):
            return Console.humanTime(unixTime: from) + " to " + Console.humanTime(unixTime: until)
        }
    }

}

/// The rewrap job's progress as the keys page's bar shows it (and console.js updates it): done when nothing is left.
struct RewrapProgress {
    let value: Int64
    let max: Int64
    let percent: Int64
    let running: Bool

    init(_ status: KeyStatusDocument) {
        let total = status.rewrap.processed + status.rewrap.remaining
        (value, max) = total == 0 ? (1, 1) : (status.rewrap.processed, total)
        percent = value * 100 / max
        running = status.rewrap.state == "running"
    }

    var json: JSONValue {
        .object(["value": .integer(value), "max": .integer(max), "percent": .integer(percent),
                 "running": .bool(running)])
    }
}

/// The audit page's chain verification: each force's chain is verified in full at the first view and again when
/// the last full check is an hour old; in between, each view checks only the records added since the head verified
/// last, and that they extend it.
final class ConsoleAuditStatus: Sendable {
    private struct Verified {
        let head: AuditHead
        let fullAt: UnixTime
    }

    private let verified = Mutex<[ForceID: Verified]>([:])
    static let fullCheckInterval: Int64 = 3600

    func status(engine: VaultEngine, principal: Principal, force: ForceID, requestID: String) async throws
        -> [String: Any]
    {
        let now = engine.currentTime
        let known = verified.withLock { $0[force] }.flatMap { $0.fullAt + Self.fullCheckInterval > now ? $0 : nil }
        var values: [String: Any] = ["remote": engine.remoteCustody(force) != nil]
        do {
            let report = try await engine.verifyAudit(principal: principal, force: force, from: known?.head,
                                                      requestID: requestID)
            let fullAt = known?.fullAt ?? now
            verified.withLock {
                $0[force] = Verified(head: AuditHead(seq: report.lastSeq, hash: report.headHash), fullAt: fullAt)
            }
            values["verified"] = true
            values["through"] = report.lastSeq
            values["checkpoint_time"] = report.lastCheckpointTime.map { Console.humanTime(unixTime: $0) } ?? ""
            values["key"] = report.keyFingerprint
            values["full_at"] = Console.humanTime(unixTime: fullAt)
            if let witnessed = report.witnessedThrough { values["witnessed_through"] = witnessed }
        } catch let failure as AuditBreak {
            _ = verified.withLock { $0.removeValue(forKey: force) }
            values["verified"] = false
            values["failure"] = failure.description
            values["kind"] = failure.kind.rawValue
        }
        if values["witnessed_through"] == nil, let witnessed = try await engine.catalog.lastCosigned(force: force) {
            values["witnessed_through"] = witnessed.seq
        }
        return values
    }
}
