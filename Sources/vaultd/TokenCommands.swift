import ArgumentParser
import KeyCustody
import Logging
import Vault

/// The catalog and principals a token command works on: vaultd's (`vaultd token ...`) or a force's custody service's
/// (`vaultd custody token ...`). The commands are the same for both.
protocol TokenStore {
    /// Opens the catalog named by the configuration at `path`; `body` runs with it and the configured principals.
    static func with<T>(config path: String, _ body: (any Catalog, [String: Principal]) async throws -> T)
        async throws -> T
}

enum VaultdTokens: TokenStore {
    static func with<T>(config path: String, _ body: (any Catalog, [String: Principal]) async throws -> T)
        async throws -> T
    {
        let configuration: ServerConfiguration
        do { configuration = try ServerConfiguration.load(path: path) } catch {
            throw VaultDaemon.fail(String(describing: error), exit: 6)
        }
        try FileBlobStore.makeDirectory(configuration.dataDirectory)
        let (catalog, pool) = try await Storage.openCatalog(configuration.catalog, logger: Logger(
            label: "vaultd", factory: { _ in SwiftLogNoOpLogHandler() }))
        defer { pool?.cancel() }
        return try await body(catalog, configuration.principals)
    }
}

enum CustodyServiceTokens: TokenStore {
    static func with<T>(config path: String, _ body: (any Catalog, [String: Principal]) async throws -> T)
        async throws -> T
    {
        let configuration: CustodyServiceConfiguration
        do { configuration = try CustodyServiceConfiguration.load(path: path) } catch {
            throw VaultDaemon.fail(String(describing: error), exit: 6)
        }
        try FileBlobStore.makeDirectory(configuration.dataDirectory)
        let catalog = try SQLiteCatalog(path: configuration.catalogPath, extraMigrations: [CustodyService.migration])
        return try await body(catalog, configuration.principals)
    }
}

/// Runs a token command's body, turning a vault error into one line and an exit code (6 for a bad argument).
private func running<T>(_ body: () async throws -> T) async throws -> T {
    do { return try await body() } catch let error as VaultError {
        throw VaultDaemon.fail(error.message, exit: error.code == .invalidParameter ? 6 : 1)
    }
}

struct TokenCreate<Store: TokenStore>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "create",
            abstract: "Create a bearer token for a configured principal; it is printed once, only its hash is kept.")
    }

    @Option(help: ArgumentHelp("The configuration file.", valueName: "path")) var config: String
    @Option(help: "The principal id (must be in the configuration).") var principal: String
    @Option(help: "What the token is for.") var description = ""
    @Option(help: ArgumentHelp("How long the token is valid: a number and s, m, h or d, up to 365d.",
                               valueName: "lifetime"))
    var ttl = "30d"

    func run() async throws {
        let lifetime: Int64
        do { lifetime = try BearerToken.lifetime(ttl) } catch let error as VaultError {
            throw VaultDaemon.fail(error.message, exit: 6)
        }
        let token = try await Store.with(config: config) { catalog, principals in
            guard let grantee = principals[principal] else {
                throw VaultDaemon.fail("principal \(principal) is not in \(config)", exit: 6)
            }
            return try await running {
                try await BearerToken.issue(for: grantee, description: description, lifetime: lifetime,
                                            catalog: catalog)
            }
        }
        // The only place the token is ever shown.
        token.withUnsafeBytes { bytes in
            FileHandle.standardOutput.write(String(decoding: bytes, as: UTF8.self) + "\n")
        }
    }
}

struct TokenList<Store: TokenStore>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "list",
                             abstract: "List every bearer token: id, principal, state, expiry (never the token).")
    }

    @Option(help: ArgumentHelp("The configuration file.", valueName: "path")) var config: String
    @Flag(help: "One JSON object on stdout.") var json = false

    func run() async throws {
        let now = currentUnixTime()
        let tokens = try await Store.with(config: config) { catalog, principals in
            try await running {
                try await TokenAdministration(catalog: catalog, principals: principals).list(caller: nil)
            }
        }.map { $0.document(now: now) }
        if json {
            print(ListKey.tokens.document(tokens.map(\.json)).canonicalString)
        } else {
            for token in tokens {
                print("\(token.id)  \(token.principal)  \(token.state)  expires \(token.expiresAt)"
                      + (token.description.isEmpty ? "" : "  \(token.description)"))
            }
        }
    }
}

struct TokenRevoke<Store: TokenStore>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "revoke",
                             abstract: "Revoke a bearer token by its id (from `list`): refused from the next request on.")
    }

    @Option(help: ArgumentHelp("The configuration file.", valueName: "path")) var config: String
    @Argument(help: "The token's id: the first 12 hex digits of its hash, as `list` shows.") var id: String

    func run() async throws {
        let token = try await Store.with(config: config) { catalog, principals in
            try await running {
                try await TokenAdministration(catalog: catalog, principals: principals)
                    .revoke(id: id, caller: nil, requestID: "token-revoke-" + id)
            }
        }
        print("revoked \(token.id) (\(token.principal))")
    }
}
