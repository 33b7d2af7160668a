import ArgumentParser
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

struct KeyringCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyring",
        abstract: "Create and manage a force's keyring file offline (when vaultd serves it, use `vault keys`).",
        subcommands: [Init.self, Rotate.self, Show.self, Passwd.self]
    )

    enum KDFProfile: String, ExpressibleByArgument, CaseIterable {
        case interactive, moderate, sensitive
        var parameters: Argon2id.Parameters {
            switch self {
            case .interactive: .interactive
            case .moderate: .moderate
            case .sensitive: .sensitive
            }
        }
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a keyring for a force with master key version 1.")

        @Option(help: "The force id (e.g. wmp).") var force: String
        @Option(help: ArgumentHelp("Where to write the keyring; an existing file is never overwritten.",
                                   valueName: "path"))
        var out: String
        @Option(help: "Argon2id cost: interactive (64 MiB), moderate (256 MiB, default) or sensitive (1 GiB).")
        var kdf: KDFProfile = .moderate
        @OptionGroup var passphrase: PassphraseOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let secret = try passphrase.read(creating: true)
            let custody = try KeyringCustody.create(at: out, force: force, passphrase: secret,
                                                    parameters: kdf.parameters, logger: makeLogger())
            let active = try await custody.activeMasterKey()
            print("created keyring for force \(force) at \(out); active master key \(active)")
        }
    }

    struct Rotate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create master key version v+1 (active); the previous version becomes retiring.")

        @Option(help: ArgumentHelp("The keyring file.", valueName: "path")) var keyring: String
        @OptionGroup var passphrase: PassphraseOptions

        func run() async throws {
            let custody = try KeyringCustody.open(at: keyring, passphrase: try passphrase.read(), mode: .readWrite,
                                                  logger: makeLogger())
            let previous = try await custody.activeMasterKey()
            let next = try await custody.rotate()
            print("rotated force \(custody.force): \(next) is active, \(previous) is retiring")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the keys of a keyring: ids, kinds, states and dates (never key bytes).")

        @Option(help: ArgumentHelp("The keyring file.", valueName: "path")) var keyring: String
        @Flag(help: "One JSON object on stdout.") var json = false
        @OptionGroup var passphrase: PassphraseOptions

        func run() async throws {
            let custody = try KeyringCustody.open(at: keyring, passphrase: try passphrase.read(), mode: .readOnly,
                                                  logger: makeLogger())
            let keys = try await custody.status()
            let parameters = custody.kdfParameters
            if json {
                let document = JSONValue.object([
                    "force": .string(custody.force.rawValue),
                    "path": .string(keyring),
                    "kdf": .object(["alg": .string("argon2id13"), "opslimit": .integer(Int64(parameters.opslimit)),
                                    "memlimit": .integer(Int64(parameters.memlimit))]),
                    "keys": .array(keys.map {
                        .object(["id": .string($0.id.description), "kind": .string($0.kind.rawValue),
                                 "state": .string($0.state.rawValue), "created": .string($0.created)])
                    }),
                ])
                print(document.canonicalString)
                return
            }
            print("keyring \(keyring): force \(custody.force), Argon2id opslimit \(parameters.opslimit), "
                + "memlimit \(parameters.memlimit >> 20) MiB")
            let idWidth = max(2, keys.map { $0.id.description.count }.max() ?? 0)
            func pad(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
            print("\(pad("ID", idWidth))  \(pad("KIND", 7))  \(pad("STATE", 9))  CREATED")
            for key in keys {
                print("\(pad(key.id.description, idWidth))  \(pad(key.kind.rawValue, 7))  "
                    + "\(pad(key.state.rawValue, 9))  \(key.created)")
            }
        }
    }

    struct Passwd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a keyring's passphrase (re-sealed with a new salt).",
            discussion: """
                The current passphrase comes from VAULT_PASSPHRASE or --passphrase-file; the new one from \
                VAULT_NEW_PASSPHRASE or --new-passphrase-file; either is prompted for on a terminal otherwise.
                """)

        @Option(help: ArgumentHelp("The keyring file.", valueName: "path")) var keyring: String
        @OptionGroup var passphrase: PassphraseOptions
        @Option(help: ArgumentHelp("File holding the new passphrase (else VAULT_NEW_PASSPHRASE, else a prompt).",
                                   valueName: "path"))
        var newPassphraseFile: String?
        @Option(help: "Also change the Argon2id cost.") var kdf: KDFProfile?

        func run() async throws {
            let custody = try KeyringCustody.open(at: keyring, passphrase: try passphrase.read(), mode: .readWrite,
                                                  logger: makeLogger())
            let newSecret: SecureBytes
            if let newPassphraseFile {
                newSecret = try SecretSource.file(newPassphraseFile).read()
            } else if getenv("VAULT_NEW_PASSPHRASE") != nil {
                defer { SecretSource.scrubEnvironment("VAULT_NEW_PASSPHRASE") }
                newSecret = try SecretSource.environment("VAULT_NEW_PASSPHRASE").read()
            } else if Passphrase.canPrompt {
                newSecret = try Passphrase.prompt("New keyring passphrase: ", confirm: true)
            } else {
                throw CustodyError(.passphraseUnavailable,
                                   "no new passphrase: set VAULT_NEW_PASSPHRASE or pass --new-passphrase-file PATH")
            }
            try custody.changePassphrase(to: newSecret, parameters: kdf?.parameters)
            print("changed the passphrase of the keyring of force \(custody.force) at \(keyring)")
        }
    }
}
