import ArgumentParser
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// How to reach a force's own custody service (`vaultd custody serve`): its URL, its CA and a custodian's or
/// auditor's token there; each option falls back to `VAULT_CUSTODY_ADDR`, `VAULT_CUSTODY_CACERT`,
/// `VAULT_CUSTODY_TOKEN_FILE` (or `VAULT_CUSTODY_TOKEN`).
struct CustodyServiceOptions: ParsableArguments {
    @Option(name: .customLong("custody"),
            help: ArgumentHelp("The force's custody service URL (else VAULT_CUSTODY_ADDR).", valueName: "url"))
    var server: String?
    @Option(name: .customLong("custody-ca-file"),
            help: ArgumentHelp("CA certificate of the custody service (else VAULT_CUSTODY_CACERT).", valueName: "path"))
    var caFile: String?
    @Option(name: .customLong("custody-token-file"),
            help: ArgumentHelp("Your token at the custody service (else VAULT_CUSTODY_TOKEN_FILE or VAULT_CUSTODY_TOKEN).",
                               valueName: "path"))
    var tokenFile: String?

    func withClient<T>(_ body: (VaultClient) async throws -> T) async throws -> T {
        let configuration = try ClientConfiguration.resolve(server: server, caFile: caFile, tokenFile: tokenFile,
                                                            certificate: nil, privateKey: nil, prefix: "VAULT_CUSTODY")
        return try await VaultClient.with(configuration, body)
    }
}

/// A force's own custody service, as its custodians and auditors use it (DESIGN 6.3). Use cases are managed with
/// `vault use-case put|revoke|list --server <custody URL>`; the rest is here.
struct CustodyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custody",
        abstract: "A force's own custody service: signing keys, archive approvals, witness alarms (custodians).",
        subcommands: [PrincipalPut.self, Principals.self, Approve.self, Alarms.self, ClearAlarms.self])

    struct PrincipalPut: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "principal-put",
            abstract: "Register (or replace) the public key a principal signs read requests with.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The principal id.") var principal: String
        @Option(help: ArgumentHelp("The principal's public key (PEM, from vault keys principal-init).",
                                   valueName: "path")) var publicKey: String
        @OptionGroup var custody: CustodyServiceOptions

        func run() async throws {
            let pem = String(decoding: try DurableFile.read(publicKey, limit: 64 * 1024), as: UTF8.self)
            let key = try Ed25519.PublicKey(pem: pem)
            let force = try ForceID(force: force)
            let id = try ResourceID(principal, kind: "principal id")
            try await custody.withClient {
                try await $0.registerSigningKey(force: force, principal: id, publicKeyPEM: pem)
            }
            print("registered the signing key \(key.fingerprint) of \(principal) with the custody service of \(force)")
        }
    }

    struct Principals: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The registered signing keys.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var custody: CustodyServiceOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await custody.withClient { try await $0.registeredKeys(force: force) }
            printJSONOrLines(items, json: json, list: .principals, encode: \.json) { item in
                "\(item.principal)  key \(item.key)  registered by \(item.registeredBy) at \(item.registeredAt)"
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve, at the force's custody service, that an analyst may retrieve an archive.",
            discussion: """
                The custody service unwraps the archive's key only after two different custodians approved it there \
                within 24 hours (and the analyst's signed request names the same archive and use case). Approve on \
                the platform too (vault archives approve), which grants the platform's side of the retrieval.
                """)
        @Option(help: "The force id.") var force: String
        @Option(help: "The archive (extract id).") var archive: String
        @Option(help: "The analyst who asked.") var analyst: String
        @Option(help: "The use case of the retrieval.") var useCase: String
        @OptionGroup var custody: CustodyServiceOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let extract = try ExtractID(archive)
            let value = try await custody.withClient { [analyst, useCase] in
                try await $0.approveAtCustody(force: force, extract: extract, analyst: analyst, useCase: useCase)
            }
            let count = value.approvals
            print("approved at the custody service of \(force): \(count) of 2 approvals"
                + (count >= 2 ? "; the force's custody will unwrap this retrieval until 24 h after the earlier of the two approvals" : ""))
        }
    }

    struct Alarms: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The witness alarms of the force's custody service.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var custody: CustodyServiceOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await custody.withClient { try await $0.witnessAlarms(force: force) }
            printJSONOrLines(items, json: json, list: .alarms, encode: \.json) { item in
                "#\(item.id)  \(item.raisedAt)  \(item.reason)  \(item.cleared ? "cleared" : "STANDING")  \(item.message)"
            }
        }
    }

    struct ClearAlarms: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "clear-alarms",
            abstract: "Clear the standing witness alarms, with a reason: unwraps resume (a chain that still does not "
                + "verify raises a new alarm at the next submission).")
        @Option(help: "The force id.") var force: String
        @Option(help: "Why (recorded in the force's log).") var reason: String
        @OptionGroup var custody: CustodyServiceOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let value = try await custody.withClient { [reason] in
                try await $0.clearAlarms(force: force, reason: reason)
            }
            print("cleared \(value.cleared) alarm(s) at the custody service of \(force)")
        }
    }
}

extension KeysCommand {
    struct PrincipalInit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "principal-init",
            abstract: "Create your Ed25519 signing key for read requests (DESIGN 5.6).",
            discussion: """
                Writes the private key to --out (mode 0600) and the public key beside it (--out + .pub, PEM). A \
                custodian registers the public key with the force's custody service (vault custody principal-put); \
                `vault read` then signs each read with the private key (--signing-key or VAULT_SIGNING_KEY_FILE).
                """)
        @Option(help: "Your principal id.") var principal: String
        @Option(help: ArgumentHelp("Where to write the private key.", valueName: "path")) var out: String

        func run() async throws {
            guard Principal.isValidID(principal) else {
                throw ValidationError("a principal id is 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-'")
            }
            let key = PrincipalSigningKey(principal: principal)
            try key.document.withUnsafeBytes { try DurableFile.write($0, to: out, permissions: 0o600, replacing: false) }
            try DurableFile.write(Array(key.key.publicKey.pem.utf8), to: out + ".pub", permissions: 0o644,
                                  replacing: false)
            print("wrote the signing key of \(principal) to \(out) and its public key to \(out).pub "
                + "(key \(key.key.publicKey.fingerprint))")
        }
    }
}
