import Logging
import TOMLKit

/// The custody file (`Keys.example` is a commented example): which forces exist and, for each, its custody backend
/// and where its passphrase or PIN comes from.
///
/// ```toml
/// [forces.wmp]
/// backend = "keyring"
/// keyring = "keyrings/wmp.keyring"          # relative to this file
/// passphrase_env = "VAULT_PASSPHRASE_WMP"   # or passphrase_file = "/run/secrets/wmp"
/// ```
public struct CustodyConfiguration: Sendable {
    public enum Backend: Sendable, Equatable {
        /// A keyring file (DESIGN 5.3) and where its passphrase comes from.
        case keyring(path: String, passphrase: SecretSource)
    }

    public struct Force: Sendable, Equatable {
        public let id: ForceID
        public let backend: Backend
    }

    /// Forces in id order.
    public let forces: [Force]

    public func force(_ id: ForceID) -> Force? { forces.first { $0.id == id } }

    /// Reads and validates a custody file. Relative paths are resolved against the file's directory.
    public static func load(path: String) throws -> CustodyConfiguration {
        let bytes: [UInt8]
        do {
            bytes = try DurableFile.read(path, limit: 1 << 20)
        } catch let error as CustodyError {
            throw CustodyError(.invalidConfiguration, "cannot read custody file: \(error.message)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CustodyError(.invalidConfiguration, "custody file \(path) is not UTF-8 text")
        }
        return try parse(text, source: path, baseDirectory: DurableFile.parentDirectory(of: path))
    }

    public static func parse(_ text: String, source: String, baseDirectory: String) throws -> CustodyConfiguration {
        let invalid = { (reason: String) in CustodyError(.invalidConfiguration, "\(source): \(reason)") }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw invalid("not valid TOML \(error.source.debugDescription): \(error.description)")
        }
        for key in table.keys where key != "forces" {
            throw invalid("unknown top-level key \"\(key)\" (expected [forces.<id>] tables)")
        }
        guard let forcesTable = table["forces"]?.table, !forcesTable.keys.isEmpty else {
            throw invalid("no forces: add a [forces.<id>] table per force")
        }
        var forces: [Force] = []
        for name in forcesTable.keys.sorted() {
            let id: ForceID
            do { id = try ForceID(force: name) } catch let error as CustodyError { throw invalid(error.message) }
            guard let entry = forcesTable[name]?.table else { throw invalid("forces.\(name) must be a table") }
            let where_ = "forces.\(name)"
            let known: Set<String> = ["backend", "keyring", "passphrase_env", "passphrase_file"]
            for key in entry.keys where !known.contains(key) {
                throw invalid("\(where_): unknown key \"\(key)\" (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let backend = entry["backend"]?.string else { throw invalid("\(where_): backend is missing") }
            switch backend {
            case "keyring":
                guard let keyring = entry["keyring"]?.string, !keyring.isEmpty else {
                    throw invalid("\(where_): keyring (the keyring file's path) is missing")
                }
                let env = entry["passphrase_env"]?.string
                let file = entry["passphrase_file"]?.string
                let source: SecretSource
                switch (env, file) {
                case (let env?, nil):
                    guard !env.isEmpty else { throw invalid("\(where_): passphrase_env is empty") }
                    source = .environment(env)
                case (nil, let file?):
                    source = .file(resolve(file, against: baseDirectory))
                case (nil, nil):
                    throw invalid("\(where_): say where the passphrase comes from (passphrase_env or passphrase_file)")
                default:
                    throw invalid("\(where_): give passphrase_env or passphrase_file, not both")
                }
                forces.append(Force(id: id, backend: .keyring(path: resolve(keyring, against: baseDirectory),
                                                              passphrase: source)))
            case "pkcs11", "remote":
                throw CustodyError(.unsupportedBackend,
                                   "\(source): \(where_): backend \"\(backend)\" is not available in this build")
            default:
                throw invalid("\(where_): unknown backend \"\(backend)\" (expected \"keyring\")")
            }
        }
        return CustodyConfiguration(forces: forces)
    }

    static func resolve(_ path: String, against base: String) -> String {
        path.hasPrefix("/") ? path : (base == "." ? path : "\(base)/\(path)")
    }

    /// Opens the custody of one force with its configured secret source.
    public func open(_ id: ForceID, mode: KeyringCustody.Mode, logger: Logger) throws -> any KeyCustodian {
        guard let force = force(id) else {
            throw CustodyError(.invalidConfiguration, "force \(id) is not in the custody file")
        }
        switch force.backend {
        case .keyring(let path, let source):
            let passphrase = try source.read()
            return try KeyringCustody.open(at: path, passphrase: passphrase, expectedForce: id, mode: mode,
                                           logger: logger)
        }
    }
}
