import ArgumentParser
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// How to reach vaultd; each option falls back to the environment, then to what `vault login` saved.
struct ServerOptions: ParsableArguments {
    @Option(help: ArgumentHelp("vaultd's URL (else VAULT_ADDR, else `vault login`).", valueName: "url"))
    var server: String?
    @Option(help: ArgumentHelp("CA certificate to trust for vaultd (else VAULT_CACERT).", valueName: "path"))
    var caFile: String?
    @Option(help: ArgumentHelp("File holding a bearer token (else VAULT_TOKEN or VAULT_TOKEN_FILE).",
                               valueName: "path"))
    var tokenFile: String?
    @Option(help: ArgumentHelp("Client certificate for mTLS (else VAULT_CLIENT_CERT).", valueName: "path"))
    var clientCert: String?
    @Option(help: ArgumentHelp("Client certificate key (else VAULT_CLIENT_KEY).", valueName: "path"))
    var clientKey: String?

    func withClient<T>(_ body: (VaultClient) async throws -> T) async throws -> T {
        let configuration = try ClientConfiguration.resolve(server: server, caFile: caFile, tokenFile: tokenFile,
                                                            certificate: clientCert, privateKey: clientKey)
        return try await VaultClient.with(configuration, body)
    }
}

/// A progress line on stderr, only when stderr is a terminal.
func progressReporter(_ label: String) -> (@Sendable (UInt64, UInt64) -> Void)? {
    guard isatty(STDERR_FILENO) == 1 else { return nil }
    return { done, total in
        let percent = total > 0 ? Int(done * 100 / total) : 0
        var line = "\r\(label): \(done >> 20) MiB" + (total > 0 ? " of \(total >> 20) MiB (\(percent)%)" : "")
        if total > 0, done >= total { line += "\n" }
        line.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}

/// A list as `{"key": [...]}` (`--json`, each item as the API sends it) or one line per item.
func printJSONOrLines<T>(_ items: [T], json: Bool, list: ListKey, encode: (T) -> JSONValue, line: (T) -> String) {
    if json {
        print(list.document(items.map(encode)).canonicalString)
        return
    }
    if items.isEmpty { print("(none)") }
    for item in items { print(line(item)) }
}

struct LoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login",
        abstract: "Remember vaultd's URL, its CA and your token for later commands.",
        discussion: """
            The token comes from VAULT_TOKEN, --token-file, or a prompt; it is stored in a 0600 file beside the \
            configuration ($VAULT_CLI_CONFIG, else ~/.config/vault/cli.json), never in the configuration itself.
            """)

    @Option(help: ArgumentHelp("vaultd's URL, e.g. https://127.0.0.1:8443.", valueName: "url")) var server: String
    @Option(help: ArgumentHelp("CA certificate that signed vaultd's certificate.", valueName: "path"))
    var caFile: String?
    @Option(help: ArgumentHelp("File holding the bearer token.", valueName: "path")) var tokenFile: String?

    func run() async throws {
        let path = ClientConfiguration.defaultPath
        let directory = DurableFile.parentDirectory(of: path)
        try FileBlobStore.makeDirectory(directory)
        var members: [String: JSONValue] = ["server": .string(server)]
        if let caFile { members["ca_file"] = .string(DurableFile.absolutePath(caFile)) }
        let token: SecureBytes?
        if let tokenFile {
            token = try SecretSource.file(tokenFile).read()
        } else if getenv("VAULT_TOKEN") != nil {
            token = try SecretSource.environment("VAULT_TOKEN").read()
            SecretSource.scrubEnvironment("VAULT_TOKEN")
        } else if Passphrase.canPrompt {
            token = try Passphrase.prompt("Bearer token (empty line for client certificates): ")
        } else {
            token = nil
        }
        if let token {
            let tokenPath = "\(directory)/token"
            try token.withUnsafeBytes { try DurableFile.write($0, to: tokenPath, permissions: 0o600) }
            members["token_file"] = .string(tokenPath)
        }
        try DurableFile.write(JSONValue.object(members).canonicalBytes() + [0x0A], to: path, permissions: 0o600)
        print("saved \(server) to \(path)")
    }
}

struct UploadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upload",
        abstract: "Upload an extract (plaintext, or a sealed file from `vault encrypt`) as the dataset's new current.")

    @Option(help: "The force id.") var force: String
    @Option(help: "The dataset id.") var dataset: String
    @Argument(help: ArgumentHelp("The file to upload.", valueName: "file")) var file: String
    @Flag(help: "Print the new extract as JSON.") var json = false
    @OptionGroup var server: ServerOptions

    func run() async throws {
        let force = try ForceID(force: force)
        let dataset = try DatasetID(dataset: dataset)
        let record = try await server.withClient { client in
            try await client.upload(force: force, dataset: dataset, path: file, progress: progressReporter("upload"))
        }
        if json {
            print(record.json.canonicalString)
        } else {
            print("uploaded \(file): extract \(record.extract) is current for \(force)/\(dataset) "
                + "(\(record.plaintextSize) bytes, \(record.source))")
        }
    }
}

struct ReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read the current extract of a dataset under a use case that names you.",
        discussion: "The output file appears only once the whole extract arrived and authenticated.")

    @Option(help: "The force id.") var force: String
    @Option(help: "The dataset id.") var dataset: String?
    @Option(help: "A specific extract id (refused unless it is current).") var extract: String?
    @Option(help: "An archive id: needs a retrieval granted to you by two custodians (vault archives request).")
    var archive: String?
    @Option(help: "The use case you read under.") var useCase: String
    @Option(help: ArgumentHelp("Where to write the extract.", valueName: "file")) var out: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false
    @Option(help: ArgumentHelp("Your signing key (vault keys principal-init), else VAULT_SIGNING_KEY_FILE or "
                               + "VAULT_SIGNING_KEY: the read carries your signed request (required by a force that "
                               + "runs its own custody service; --archive and --extract then need --dataset too).",
                               valueName: "path"))
    var signingKey: String?
    @OptionGroup var server: ServerOptions

    func validate() throws {
        guard [extract, archive].compactMap({ $0 }).count <= 1, dataset != nil || extract != nil || archive != nil else {
            throw ValidationError("give one of --dataset, --extract or --archive (--dataset may go with the others)")
        }
    }

    func run() async throws {
        let force = try ForceID(force: force)
        let dataset = try dataset.map { try DatasetID(dataset: $0) }
        let extract = try extract.map { try ExtractID($0) }
        let archive = try archive.map { try ExtractID($0) }
        var signed: SignedReadRequest?
        if let key = try signingKey.map({ try PrincipalSigningKey.load(path: $0) }) ?? PrincipalSigningKey.fromEnvironment() {
            guard let dataset else {
                throw ValidationError("a signed read names its dataset: add --dataset to --extract or --archive")
            }
            signed = SignedReadRequest(signing: ReadRequest(
                force: force, dataset: dataset, extract: (archive ?? extract)?.rawValue ?? ReadRequest.currentExtract,
                principal: key.principal, purpose: archive == nil ? .useCaseRead : .archiveRetrieval,
                useCase: useCase, issued: currentUnixTime()), with: key.key)
        }
        let request = signed
        let (bytes, id) = try await server.withClient { client in
            if let archive {
                return try await client.readArchive(force: force, extract: archive, useCase: useCase, outputPath: out,
                                                    overwrite: overwrite, signedRequest: request,
                                                    progress: progressReporter("read"))
            }
            return try await client.read(force: force, dataset: extract == nil ? dataset : nil, extract: extract,
                                         useCase: useCase, outputPath: out, overwrite: overwrite,
                                         signedRequest: request, progress: progressReporter("read"))
        }
        print("read \(archive == nil ? "extract" : "archive") \(id) of \(force) (\(bytes) bytes) into \(out)")
    }
}

struct ExtractsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "extracts", abstract: "Extract metadata.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The current extract of a dataset.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The dataset id.") var dataset: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let (force, dataset) = (try ForceID(force: force), try DatasetID(dataset: dataset))
            let items = try await server.withClient { try await $0.extracts(force: force, dataset: dataset) }
            printJSONOrLines(items, json: json, list: .extracts, encode: \.json, line: describeExtract)
        }
    }
}

func describeExtract(_ item: ExtractDocument) -> String {
    var text = "\(item.extract)  \(item.dataset)  \(item.state)  \(item.plaintextSize) bytes  "
        + "committed \(item.committedAt ?? "-")"
    if let expires = item.expiresAt { text += "  expires \(expires)" }
    if let hold = item.hold { text += "  HELD (\(hold.reason))" }
    if let certificate = item.certificate { text += "  certificate \(certificate)" }
    return text
}

struct ArchivesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archives",
        abstract: "Archived extracts: listing, dual-control retrieval, legal hold.",
        subcommands: [List.self, Request.self, Approve.self, Retrievals.self, Hold.self, Release.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A force's archives: metadata only.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await server.withClient { try await $0.archives(force: force) }
            printJSONOrLines(items, json: json, list: .archives, encode: \.json, line: describeExtract)
        }
    }
}

struct UseCaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "use-case", abstract: "A force's authorised use cases (custodians).",
        subcommands: [Put.self, Revoke.self, List.self])

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create or update a use case.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The use case id.") var id: String
        @Option(help: "What the use case is for.") var description: String
        @Option(help: "The lawful basis.") var lawfulBasis: String
        @Option(help: "A dataset it covers (repeat for several).") var dataset: [String]
        @Option(help: "A principal it names (repeat for several).") var principal: [String]
        @Option(help: "Valid from (RFC 3339 UTC, e.g. 2026-12-01T00:00:00Z).") var validFrom: String?
        @Option(help: "Valid until (RFC 3339 UTC).") var validUntil: String?
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let from = try validFrom.map { try UseCaseRequest.time($0, member: "valid_from") }
            let until = try validUntil.map { try UseCaseRequest.time($0, member: "valid_until") }
            let body = UseCaseRequest(description: description, lawfulBasis: lawfulBasis,
                                      datasets: try dataset.map { try DatasetID(dataset: $0) }, principals: principal,
                                      validFrom: from, validUntil: until)
            let (force, id) = (try ForceID(force: force), try ResourceID(id, kind: "use case id"))
            let value = try await server.withClient { try await $0.putUseCase(force: force, id: id, body: body) }
            if json {
                print(value.json.canonicalString)
            } else if value.revoked {
                print("use case \(id) of \(force) saved, but it stays revoked: a revoked use case is never reinstated; "
                    + "authorise the work under a new id")
            } else {
                print("use case \(id) of \(force) saved")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a use case: reads under it stop.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The use case id.") var id: String
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let (force, id) = (try ForceID(force: force), try ResourceID(id, kind: "use case id"))
            _ = try await server.withClient { try await $0.revokeUseCase(force: force, id: id) }
            print("use case \(id) of \(force) revoked")
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a force's use cases.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await server.withClient { try await $0.useCases(force: force) }
            printJSONOrLines(items, json: json, list: .useCases, encode: \.json) { item in
                "\(item.id)  datasets=\(item.datasets.joined(separator: ","))  "
                    + "principals=\(item.principals.joined(separator: ","))\(item.revoked ? "  REVOKED" : "")"
            }
        }
    }
}
