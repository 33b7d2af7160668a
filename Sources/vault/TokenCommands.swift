import ArgumentParser
import KeyCustody
import Vault

/// Bearer tokens through vaultd's API: one's own, and those of the principals of forces one is custodian or ops of.
/// Tokens are issued on vaultd's host (`vaultd token create --ttl ...`).
struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens", abstract: "List and revoke bearer tokens (yours, or your force's people's).",
        subcommands: [List.self, Revoke.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tokens you may manage: id, principal, state, expiry (never the token itself).")
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let items = try await server.withClient { try await $0.tokens() }
            printJSONOrLines(items, json: json, list: .tokens, encode: \.json) { token in
                "\(token.id)  \(token.principal)  \(token.state)  expires \(token.expiresAt)"
                    + (token.description.isEmpty ? "" : "  \(token.description)")
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a token by its id: refused from the next request on, on every vaultd instance.")
        @Argument(help: "The token's id (the first 12 hex digits of its hash, as `vault tokens list` shows).")
        var id: String
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let token = try await server.withClient { try await $0.revokeToken(id: id) }
            print("revoked \(token.id) (\(token.principal))")
        }
    }
}
