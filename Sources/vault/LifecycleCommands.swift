import ArgumentParser
import KeyCustody
import Vault

// The key and data lifecycle through vaultd (DESIGN sections 4 and 7): rotation, dual-control archive retrieval,
// legal hold, crypto-shredding and destruction certificates.

struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys", abstract: "A force's master keys in vaultd's custody (custodians).",
        subcommands: [Rotate.self, Migrate.self, Status.self, Destroy.self, PrincipalInit.self])

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create master key version v+1 and start the background rewrap job.",
            discussion: "Reads and uploads continue while the job moves every wrapped key; payloads are not touched.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "Wait until the rewrap job has moved every key.") var wait = false
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            try await KeysCommand.moveKeys(force: force, wait: wait, json: json, server: server) {
                try await $0.rotate(force: force)
            }
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a force from its keyring onto its PKCS#11 token (HSM).",
            discussion: """
                The force's custody-file entry must already say backend = "pkcs11" (module, token, pin_env or \
                pin_file) and keep its keyring lines as the earlier keyring. vaultd creates the next master key \
                version on the token as active; the rewrap job then moves every wrapped key onto it, resumable like \
                a rotation. Afterwards destroy the keyring's master keys with `vault keys destroy`.
                """)
        @Option(help: "The force id.") var force: String
        @Option(help: ArgumentHelp("The backend to move to.", valueName: "pkcs11")) var to: String
        @Flag(help: "Wait until the rewrap job has moved every key.") var wait = false
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func validate() throws {
            guard to == "pkcs11" else { throw ValidationError("--to must be pkcs11") }
        }

        func run() async throws {
            let force = try ForceID(force: force)
            try await KeysCommand.moveKeys(force: force, wait: wait, json: json, server: server) { [to] in
                try await $0.migrate(force: force, to: to)
            }
        }
    }

    /// Starts a rotation or a migration, optionally waits for its rewrap job, and reports.
    static func moveKeys(force: ForceID, wait: Bool, json: Bool, server: ServerOptions,
                         start: @escaping @Sendable (VaultClient) async throws -> RotationDocument) async throws
    {
        let (rotation, status) = try await server.withClient { client -> (RotationDocument, KeyStatusDocument?) in
            let rotation = try await start(client)
            guard wait else { return (rotation, nil) }
            while true {
                let status = try await client.keyStatus(force: force)
                if status.rewrap.remaining == 0 { return (rotation, status) }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
        if json {
            print((status?.json ?? rotation.json).canonicalString)
            return
        }
        print("\(force): \(rotation.from ?? "?") -> \(rotation.to) active; "
            + (status.map { "every wrapped key moved (\($0.rewrap.failed) failed)" }
                ?? "rewrap job started (vault keys status --force \(force))"))
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Versions, states, what each still wraps, and the rewrap job's progress.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let status = try await server.withClient { try await $0.keyStatus(force: force) }
            if json {
                print(status.json.canonicalString)
                return
            }
            for version in status.masterKeys {
                print("\(version.id)  \(version.state)  wraps \(version.wraps)  created \(version.created)")
            }
            print("archive keys: \(status.activeArchiveKeys) active, \(status.destroyedArchiveKeys) destroyed")
            let rewrap = status.rewrap
            print("rewrap: \(rewrap.state), processed \(rewrap.processed), remaining \(rewrap.remaining), "
                + "failed \(rewrap.failed)")
            for failure in status.failures {
                print("  failed: \(failure.extract) under \(failure.kek): \(failure.message)")
            }
        }
    }

    struct Destroy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Destroy a retired master key version that nothing references any more.",
            discussion: "Backups of the catalog holding keys under that version become undecryptable for good. "
                + "Pending destruction certificates are re-issued with the new verdict.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The master key version.") var version: Int
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            guard version > 0 else { throw ValidationError("--version must be positive") }
            let value = try await server.withClient { [version] in
                try await $0.destroyMasterKey(force: force, version: version)
            }
            if json {
                print(value.json.canonicalString)
                return
            }
            let reissued = value.reissuedCertificates
            print("destroyed \(value.destroyed)"
                + (reissued.isEmpty ? "" : "; \(reissued.count) destruction certificate(s) re-issued"))
        }
    }
}

extension ArchivesCommand {
    struct Request: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Ask to read an archive (analysts); two different custodians must approve.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The archive's extract id.") var extract: String
        @Option(help: "The use case the read is for (it must name you and cover the dataset).") var useCase: String
        @Option(help: "Why the archive is needed (recorded in the audit trail).") var reason: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let extract = try ExtractID(extract)
            let value = try await server.withClient { [useCase, reason] in
                try await $0.requestRetrieval(force: force, extract: extract, useCase: useCase, reason: reason)
            }
            if json {
                print(value.json.canonicalString)
            } else {
                print("retrieval \(value.id) requested; it needs two custodians' approval "
                    + "(vault archives approve --force \(force) --retrieval \(value.id))")
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve a retrieval (custodians); the second approval by another custodian grants it.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The retrieval id.") var retrieval: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let id = try ResourceID(retrieval, kind: "retrieval id")
            let value = try await server.withClient { try await $0.approveRetrieval(force: force, id: id) }
            if json {
                print(value.json.canonicalString)
            } else if value.state == "granted" {
                print("retrieval \(id) granted to \(value.analyst) under use case \(value.useCase) until "
                    + (value.expiresAt ?? "?"))
            } else {
                print("retrieval \(id) approved (1 of 2); a different custodian must approve too")
            }
        }
    }

    struct Retrievals: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Retrieval requests and grants of a force.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await server.withClient { try await $0.retrievals(force: force) }
            printJSONOrLines(items, json: json, list: .retrievals, encode: \.json) { item in
                "\(item.id)  \(item.state)  archive \(item.extract)  analyst \(item.analyst)  use case \(item.useCase)  "
                    + "approvals [\(item.approvals.map(\.custodian).joined(separator: ","))]"
                    + (item.expiresAt.map { "  expires \($0)" } ?? "")
            }
        }
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Place a legal hold (custodians): the extract is never shredded while held.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The extract id.") var extract: String
        @Option(help: "Why (recorded in the audit trail and shown in listings).") var reason: String
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let extract = try ExtractID(extract)
            _ = try await server.withClient { [reason] in
                try await $0.placeHold(force: force, extract: extract, reason: reason)
            }
            print("legal hold placed on \(extract) of \(force)")
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Lift a legal hold (custodians).")
        @Option(help: "The force id.") var force: String
        @Option(help: "The extract id.") var extract: String
        @Option(help: "Why the hold ends (recorded in the audit trail).") var reason: String
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let extract = try ExtractID(extract)
            _ = try await server.withClient { [reason] in
                try await $0.releaseHold(force: force, extract: extract, reason: reason)
            }
            print("legal hold on \(extract) of \(force) released")
        }
    }
}

struct ShredCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shred",
        abstract: "Crypto-shred archives: every expired, unheld one (ops), or one archive early (custodians).",
        discussion: """
            `vault shred --expired [--dry-run] [--force F]` destroys each expired archive's key in custody, deletes \
            its blob and issues a signed destruction certificate. `vault shred --force F --extract ID --reason TEXT` \
            shreds one archive before its expiry. Held archives are never shredded.
            """)
    @Flag(help: "Shred every expired, unheld archive (ops).") var expired = false
    @Flag(help: "With --expired: list what would be shredded, change nothing.") var dryRun = false
    @Option(help: "The force id (required with --extract).") var force: String?
    @Option(help: "One archive to shred early (custodians).") var extract: String?
    @Option(help: "Why the archive is shredded early.") var reason: String?
    @Flag(help: "JSON output.") var json = false
    @OptionGroup var server: ServerOptions

    func validate() throws {
        if expired {
            guard extract == nil, reason == nil else { throw ValidationError("--expired takes no --extract or --reason") }
        } else {
            guard force != nil, extract != nil, reason != nil else {
                throw ValidationError("give --expired, or --force, --extract and --reason")
            }
            guard !dryRun else { throw ValidationError("--dry-run goes with --expired") }
        }
    }

    func run() async throws {
        let force = try force.map { try ForceID(force: $0) }
        if expired {
            let report = try await server.withClient { [dryRun] in try await $0.shredExpired(force: force, dryRun: dryRun) }
            if json {
                print(report.json.canonicalString)
                return
            }
            if let candidates = report.candidates {
                print("would shred \(candidates.count) archive(s)")
                for item in candidates { print("  " + describeExtract(item)) }
            }
            if let shredded = report.shredded {
                print("shredded \(shredded.count) archive(s)")
                for item in shredded {
                    print("  \(item.force)/\(item.extract)  certificate \(item.certificate)  \(item.verdict)")
                }
            }
            for item in report.held {
                print("  kept (legal hold): \(item.force)/\(item.extract)  \(item.reason)")
            }
            return
        }
        let extract = try ExtractID(extract!)
        let certificate = try await server.withClient { [force, reason] in
            try await $0.shredArchive(force: force!, extract: extract, reason: reason!)
        }
        if json {
            print(certificate.json.canonicalString)
        } else {
            print("shredded \(extract) of \(force!): certificate \(certificate.id), verdict \(certificate.verdict.rawValue)")
        }
    }
}

struct CertificatesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certificates", abstract: "Destruction certificates of shredded extracts.",
        subcommands: [List.self, Show.self, Verify.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A force's certificates (custodians, auditors, ops).")
        @Option(help: "The force id.") var force: String
        @Option(help: "Only this extract's certificates.") var extract: String?
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let extract = try extract.map { try ExtractID($0) }
            let items = try await server.withClient { try await $0.certificates(force: force, extract: extract) }
            printJSONOrLines(items, json: json, list: .certificates, encode: \.json) { item in
                "\(item.id)  extract \(item.extract)  \(item.verdict.rawValue)  shredded \(item.shreddedAt ?? "?")"
                    + (item.pendingKEKs.isEmpty ? ""
                        : "  pending on " + item.pendingKEKs.map(\.description).joined(separator: ","))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch one certificate; with --out, save it for offline verification.")
        @Option(help: "The force id.") var force: String
        @Argument(help: "The certificate id.") var id: String
        @Option(help: ArgumentHelp("Save the certificate file here.", valueName: "file")) var out: String?
        @Flag(help: "Replace the output file if it exists.") var overwrite = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let id = try ExtractID(id)
            let certificate = try await server.withClient { try await $0.certificate(force: force, id: id) }
            if let out {
                let file = try AtomicOutputFile(path: out, replacing: overwrite)
                try certificate.bytes.withUnsafeBytes { try file.write($0) }
                try file.commit()
                print("certificate \(id) saved to \(out) (verify it with vault certificates verify \(out) "
                    + "--public-key PEM)")
            } else {
                print(certificate.json.canonicalString)
            }
        }
    }

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a certificate file's signature offline against the vault's audit public key.",
            discussion: "Exit 0 when the signature is valid, 3 when it is not, 6 when the file is not a certificate.")
        @Argument(help: "The certificate file.") var file: String
        @Option(help: ArgumentHelp("The vault's audit public key (PEM), e.g. from vault audit public-key.",
                                   valueName: "path")) var publicKey: String
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let key = try Ed25519.PublicKey(pem: String(decoding: try DurableFile.read(publicKey, limit: 64 * 1024),
                                                        as: UTF8.self))
            let certificate = try DestructionCertificate(bytes: try DurableFile.read(file, limit: 1 << 20))
            guard certificate.verify(publicKey: key) else {
                throw VaultError(.integrityFailure, "certificate \(certificate.id) does NOT verify against \(publicKey) "
                                    + "(altered, or signed by another vault)")
            }
            if json {
                print(JSONValue.object(["valid": .bool(true), "certificate": certificate.body]).canonicalString)
            } else {
                print("certificate \(certificate.id) verifies: \(certificate.force)/\(certificate.extract) shredded, "
                    + "verdict \(certificate.verdict.rawValue)"
                    + (certificate.pendingKEKs.isEmpty ? "" : " (pending on "
                        + certificate.pendingKEKs.map(\.description).joined(separator: ", ") + ")"))
            }
        }
    }
}
