import ArgumentParser
import KeyCustody
import Vault

/// Offline set-up of a force whose keys live on a PKCS#11 token.
struct HSMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm",
        abstract: "Set up a force's keys on its PKCS#11 token (HSM) offline.",
        subcommands: [Init.self])

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create master key version 1 of a new force on its token.",
            discussion: """
                The force's entry in the custody file names the module, the token label and where the PIN comes \
                from (pin_env or pin_file; never an argument). The key is generated on the token as a sensitive, \
                non-extractable AES-256 object. A force that already has a keyring moves with `vault keys migrate` \
                instead, so its existing keys stay readable.
                """)
        @Option(help: ArgumentHelp("The custody file (keys.toml).", valueName: "path")) var custody: String
        @Option(help: "The force id.") var force: String

        func run() async throws {
            let force = try ForceID(force: force)
            let configuration = try CustodyConfiguration.load(path: custody)
            guard let entry = configuration.force(force) else {
                throw CustodyError(.invalidConfiguration, "force \(force) is not in \(custody)")
            }
            guard case .pkcs11(let module, let token, let pin, let earlier) = entry.backend else {
                throw CustodyError(.invalidConfiguration, "force \(force) does not use backend \"pkcs11\" in \(custody)")
            }
            guard earlier == nil else {
                throw CustodyError(.keyStateConflict, "force \(force) has an earlier keyring: move its keys to the token "
                                    + "with `vault keys migrate --force \(force) --to pkcs11` while vaultd serves it")
            }
            let key = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: try pin.read(), force: force,
                                                   logger: makeLogger())
            print("\(force): \(key.id) created on token \(token) (\(key.state.rawValue))")
        }
    }
}
