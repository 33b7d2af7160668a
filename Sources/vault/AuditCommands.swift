import ArgumentParser
import KeyCustody
import Vault

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "A force's tamper-evident audit trail: export, verify offline, search (auditors and DPOs).",
        subcommands: [Export.self, Verify.self, Search.self, PublicKey.self])

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Export a force's audit chain as NDJSON with its signed checkpoints.",
            discussion: """
                The export ends at a checkpoint signed when it was made, so `vault audit verify` can check all of it \
                offline. The export itself is recorded in the chain (action audit.export).
                """)
        @Option(help: "The force id.") var force: String
        @Option(help: ArgumentHelp("Only records after this sequence number, or from this RFC 3339 UTC time.",
                                   valueName: "seq|time"))
        var since: String?
        @Option(help: ArgumentHelp("Where to write the export (else standard output).", valueName: "file"))
        var out: String?
        @Flag(help: "Replace the output file if it exists.") var overwrite = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            if let since { _ = try AuditSince(parsing: since) }
            let bytes = try await server.withClient { client in
                try await client.exportAudit(force: force, since: since, outputPath: out, overwrite: overwrite)
            }
            if let out { printNotice("exported the audit chain of \(force) (\(bytes) bytes) into \(out)") }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify an audit export offline: every hash, sequence number and checkpoint signature.",
            discussion: """
                Exits 0 when the export verifies, 3 naming the first record that breaks (altered, removed, inserted, \
                reordered, or a bad signature), 6 when the public key file is not an Ed25519 PEM public key.
                """)
        @Argument(help: ArgumentHelp("The export (from `vault audit export`).", valueName: "file")) var file: String
        @Option(help: ArgumentHelp("The vault's audit public key (PEM), from the data directory or "
                                   + "`vault audit public-key`.", valueName: "path"))
        var publicKey: String
        @Option(help: ArgumentHelp("The force's witness key (its custody service's public key, PEM): every record up "
                                   + "to the last cosigned checkpoint must be witnessed.", valueName: "path"))
        var witnessKey: String?
        @Option(help: ArgumentHelp("A head verified before (seq:hash, as this command prints it): the export must "
                                   + "extend it, so a DPO knows the new export continues the chain checked last time.",
                                   valueName: "seq:hash"))
        var sinceHead: String?
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            func load(_ path: String) throws -> Ed25519.PublicKey {
                do {
                    return try Ed25519.PublicKey(pem: String(decoding: try DurableFile.read(path, limit: 64 * 1024),
                                                             as: UTF8.self))
                } catch let error as CustodyError {
                    throw VaultError(.malformedAudit, "\(path): \(error.message)")
                }
            }
            let key = try load(publicKey)
            let witness = try witnessKey.map(load)
            let head = try sinceHead.map(AuditHead.init)
            let report: AuditVerificationReport
            do {
                report = try AuditVerifier.verify(path: file, publicKey: key, witnessKey: witness, sinceHead: head)
            } catch let failure as AuditBreak {
                if json {
                    print(JSONValue.object([
                        "verified": .bool(false), "kind": .string(failure.kind.rawValue),
                        "line": .integer(Int64(failure.line)), "seq": failure.seq.map { .integer($0) } ?? .null,
                        "message": .string(failure.message),
                    ]).canonicalString)
                }
                throw VaultError(.auditChainBroken, "\(file) does not verify: \(failure)")
            }
            if json {
                var members: [String: JSONValue] = [
                    "verified": .bool(true), "force": .string(report.force.rawValue),
                    "first_seq": .integer(report.firstSeq), "last_seq": .integer(report.lastSeq),
                    "records": .integer(report.records), "checkpoints": .integer(Int64(report.checkpoints)),
                    "key_fingerprint": .string(report.keyFingerprint),
                    "cosignatures": .integer(Int64(report.cosignatures)),
                    "head": .string("\(report.lastSeq):\(report.headHash)"),
                ]
                if let witnessed = report.witnessedThrough {
                    members["witnessed_through"] = .integer(witnessed)
                    members["not_yet_witnessed"] = .integer(report.unwitnessed)
                }
                print(JSONValue.object(members).canonicalString)
            } else {
                let signed = report.lastCheckpointTime.map { Timestamp.format(secondsSinceEpoch: Int($0)) } ?? "-"
                print("verified: force \(report.force), records \(report.firstSeq)–\(report.lastSeq) "
                    + "(\(report.records) records, \(report.checkpoints) signed checkpoints, last signed \(signed), "
                    + "key \(report.keyFingerprint))")
                print("head \(report.lastSeq):\(report.headHash)"
                    + (head.map { " (extends the head verified before, \($0.seq):\($0.hash.prefix(12))…)" } ?? ""))
                if let witnessed = report.witnessedThrough {
                    print("witnessed by the force through seq \(witnessed)"
                        + (report.unwitnessed > 0 ? "; \(report.unwitnessed) later record(s) not yet witnessed" : ""))
                }
            }
        }
    }

    struct Search: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Search a force's audit chain: who did what, when, under which use case.",
            discussion: """
                Filters combine (AND). --action may end in * to match a prefix (use-case.*). Prints one line per \
                record, or the records' canonical JSON lines with --json. Searches are themselves audited.
                """)
        @Option(help: "The force id.") var force: String
        @Option(help: "Only this principal.") var principal: String?
        @Option(help: "Only this use case.") var useCase: String?
        @Option(help: "Only this dataset.") var dataset: String?
        @Option(help: "Only this action (e.g. read, upload, use-case.*).") var action: String?
        @Option(help: "Only this outcome: allowed, denied or error.") var outcome: String?
        @Option(help: ArgumentHelp("From this time (RFC 3339 UTC), inclusive.", valueName: "time")) var from: String?
        @Option(help: ArgumentHelp("Until this time (RFC 3339 UTC), exclusive.", valueName: "time")) var until: String?
        @Option(help: ArgumentHelp("Only records after this sequence number (paging).", valueName: "seq"))
        var after: Int64?
        @Option(help: "At most this many records (1-10000).") var limit = 1000
        @Flag(help: "Print the records as JSON lines.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            var parameters: [(String, String)] = []
            func add(_ name: String, _ value: String?) { if let value { parameters.append((name, value)) } }
            add("principal", principal)
            add("use_case", useCase)
            add("dataset", dataset)
            add("action", action)
            add("outcome", outcome)
            add("from", from)
            add("until", until)
            add("after", after.map(String.init))
            add("limit", String(limit))
            // Checked here too, so a typo fails before anything is sent.
            _ = try AuditQuery(parameters: parameters)
            let lines = try await server.withClient { try await $0.searchAudit(force: force, parameters: parameters) }
            for line in lines {
                if json {
                    print(String(decoding: line, as: UTF8.self))
                    continue
                }
                let record = try AuditRecord(line: line)
                var text = "\(record.seq)  \(Timestamp.format(secondsSinceEpoch: Int(record.time)))  \(record.principal)"
                    + "  \(record.action)  \(record.target)  \(record.outcome.rawValue)"
                if let useCase = record.useCase { text += "  use_case=\(useCase)" }
                if let reason = record.detail["reason"]?.stringValue { text += "  reason=\(reason)" }
                print(text)
            }
            if !json { printNotice("\(lines.count) record(s)") }
        }
    }

    struct PublicKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "public-key", abstract: "Fetch the vault's audit public key (PEM).",
            discussion: "Compare its fingerprint with the operator's copy (data dir audit-signing.pub) before relying on it.")
        @Option(help: ArgumentHelp("Where to write it (else standard output).", valueName: "file")) var out: String?
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let pem = try await server.withClient { try await $0.auditPublicKey() }
            let key = try Ed25519.PublicKey(pem: pem)
            if let out {
                try DurableFile.write(Array(pem.utf8), to: out, permissions: 0o644, replacing: false)
                printNotice("audit public key \(key.fingerprint) written to \(out)")
            } else {
                print(pem, terminator: "")
            }
        }
    }
}

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Export a current extract as a sealed .vault file (custodians), to decrypt offline.",
        discussion: """
            The file is the DESIGN 5.4 sealed format: `vault decrypt --keyring FORCE.keyring FILE.vault --out FILE` \
            opens it with the force's keyring alone, as long as the master key version named in its header has not \
            been destroyed. The export is recorded in the force's audit chain.
            """)
    @Option(help: "The force id.") var force: String
    @Option(help: "The dataset id.") var dataset: String
    @Option(help: "The extract you mean (refused if it is no longer current).") var extract: String?
    @Option(help: ArgumentHelp("Where to write the sealed file.", valueName: "file.vault")) var out: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false
    @OptionGroup var server: ServerOptions

    func run() async throws {
        let force = try ForceID(force: force)
        let dataset = try DatasetID(dataset: dataset)
        let extract = try extract.map { try ExtractID($0) }
        let header = try await server.withClient { client in
            try await client.exportExtract(force: force, dataset: dataset, extract: extract, outputPath: out,
                                           overwrite: overwrite, progress: progressReporter("export"))
        }
        print("exported extract \(header.identity.extract) of \(force)/\(dataset) (\(header.plaintextSize) bytes, "
            + "key \(header.wrappedKey.kek)) into \(out)")
    }
}
