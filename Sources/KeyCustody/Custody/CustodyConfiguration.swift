import Logging
import TOMLKit

#if canImport(Glibc)
import Glibc
#endif

/// The custody file (`Keys.example` is a commented example): which forces exist and, for each, its custody backend
/// and where its passphrase or PIN comes from.
///
/// ```toml
/// [forces.wmp]
/// backend = "keyring"
/// keyring = "keyrings/wmp.keyring"          # relative to this file
/// passphrase_env = "VAULT_PASSPHRASE_WMP"   # or passphrase_file = "/run/secrets/wmp"
///
/// [forces.nyp]
/// backend = "pkcs11"
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token = "nyp-vault"                       # the token's label
/// pin_env = "VAULT_PIN_NYP"                 # or pin_file = "/run/secrets/nyp-pin"
/// # keyring = ... and passphrase_env = ...  # the keyring the force moved from, while it still holds keys
/// ```
public struct CustodyConfiguration: Sendable {
    /// A keyring file and where its passphrase comes from.
    public struct KeyringLocation: Sendable, Equatable {
        public let path: String
        public let passphrase: SecretSource

        public init(path: String, passphrase: SecretSource) {
            self.path = path
            self.passphrase = passphrase
        }
    }

    /// Where a force's own custody service is and how the platform proves itself to it (backend `remote`).
    public struct RemoteLocation: Sendable, Equatable {
        /// `https://host:port` of the force's custody service.
        public let url: String
        /// The CA that signed the custody service's certificate.
        public let caFile: String
        /// This platform's client certificate and key (from the CA the force trusts for platform instances).
        public let clientCertificate: String
        public let clientKey: String
        /// The custody service's public key (PEM): it signs the force's use cases and witness cosignatures.
        public let custodyKey: String

        public init(url: String, caFile: String, clientCertificate: String, clientKey: String, custodyKey: String) {
            self.url = url
            self.caFile = caFile
            self.clientCertificate = clientCertificate
            self.clientKey = clientKey
            self.custodyKey = custodyKey
        }
    }

    public enum Backend: Sendable, Equatable {
        /// A keyring file (DESIGN 5.3) and where its passphrase comes from.
        case keyring(path: String, passphrase: SecretSource)
        /// A PKCS#11 token (DESIGN 6.2): the module's path, the token's label, where the user PIN comes from, and
        /// the keyring the force moved from, if any.
        case pkcs11(module: String, token: String, pin: SecretSource, earlier: KeyringLocation?)
        /// The force's own custody service (DESIGN 6.3): the platform holds no key of the force.
        case remote(RemoteLocation)

        /// The environment variables holding this backend's secrets (vaultd scrubs them once read).
        public var secretVariables: [String] {
            var sources: [SecretSource] = []
            switch self {
            case .keyring(_, let passphrase): sources = [passphrase]
            case .pkcs11(_, _, let pin, let earlier): sources = [pin] + (earlier.map { [$0.passphrase] } ?? [])
            case .remote: sources = []
            }
            return sources.compactMap { if case .environment(let name) = $0 { return name } else { return nil } }
        }
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
        let table = try TOMLDocument.parse(text, invalid: invalid)
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
            let known: Set<String> = ["backend", "keyring", "passphrase_env", "passphrase_file", "module", "token",
                                      "pin_env", "pin_file", "url", "ca", "client_certificate", "client_key",
                                      "client_key_env", "custody_key"]
            for key in entry.keys where !known.contains(key) {
                throw invalid("\(where_): unknown key \"\(key)\" (known: \(known.sorted().joined(separator: ", ")))")
            }
            /// Exactly one of `<name>_env` and `<name>_file`.
            func secret(_ name: String, _ what: String) throws -> SecretSource? {
                try SecretSource.configured(env: entry["\(name)_env"]?.string, file: entry["\(name)_file"]?.string,
                                            name: name, what: what, where: where_,
                                            resolve: { resolve($0, against: baseDirectory) }, invalid: invalid)
            }
            guard let backend = entry["backend"]?.string else { throw invalid("\(where_): backend is missing") }
            let keyringPath = entry["keyring"]?.string
            if let keyringPath, keyringPath.isEmpty { throw invalid("\(where_): keyring is empty") }
            let passphrase = try secret("passphrase", "keyring passphrase")
            switch backend {
            case "keyring":
                for key in ["module", "token", "pin_env", "pin_file"] where entry[key] != nil {
                    throw invalid("\(where_): \(key) belongs to backend \"pkcs11\", not \"keyring\"")
                }
                guard let keyringPath else {
                    throw invalid("\(where_): keyring (the keyring file's path) is missing")
                }
                guard let passphrase else {
                    throw invalid("\(where_): say where the passphrase comes from (passphrase_env or passphrase_file)")
                }
                forces.append(Force(id: id, backend: .keyring(path: resolve(keyringPath, against: baseDirectory),
                                                              passphrase: passphrase)))
            case "pkcs11":
                guard let module = entry["module"]?.string, !module.isEmpty else {
                    throw invalid("\(where_): module (the PKCS#11 library's path, e.g. "
                                    + "/usr/lib/softhsm/libsofthsm2.so) is missing")
                }
                guard module.hasPrefix("/") else { throw invalid("\(where_): module must be an absolute path") }
                guard let token = entry["token"]?.string, !token.isEmpty, token.utf8.count <= 32 else {
                    throw invalid("\(where_): token (the token's label, at most 32 bytes) is missing or too long")
                }
                guard let pin = try secret("pin", "token PIN") else {
                    throw invalid("\(where_): say where the token PIN comes from (pin_env or pin_file)")
                }
                var earlier: KeyringLocation?
                switch (keyringPath, passphrase) {
                case (let path?, let passphrase?):
                    earlier = KeyringLocation(path: resolve(path, against: baseDirectory), passphrase: passphrase)
                case (nil, nil): earlier = nil
                case (_?, nil): throw invalid("\(where_): the earlier keyring needs passphrase_env or passphrase_file")
                case (nil, _?): throw invalid("\(where_): a passphrase is given but no keyring")
                }
                forces.append(Force(id: id, backend: .pkcs11(module: module, token: token, pin: pin, earlier: earlier)))
            case "remote":
                for key in ["keyring", "passphrase_env", "passphrase_file", "module", "token", "pin_env", "pin_file"]
                    where entry[key] != nil {
                    throw invalid("\(where_): \(key) has no place in a remote force's table: the platform holds no "
                                    + "keyring, passphrase or PIN of a force whose custody service holds its keys")
                }
                guard let url = entry["url"]?.string, url.hasPrefix("https://"), url.utf8.count > 8 else {
                    throw invalid("\(where_): url (the force's custody service, https://host:port) is missing")
                }
                func file(_ key: String, _ what: String) throws -> String {
                    guard let value = entry[key]?.string, !value.isEmpty else {
                        throw invalid("\(where_): \(key) (\(what)) is missing")
                    }
                    return resolve(value, against: baseDirectory)
                }
                let clientKey: String
                switch (entry["client_key"]?.string, entry["client_key_env"]?.string) {
                case (let path?, nil): clientKey = resolve(path, against: baseDirectory)
                case (nil, let name?):
                    guard let value = getenv(name).map({ String(cString: $0) }), !value.isEmpty else {
                        throw invalid("\(where_): client_key_env names \(name), which is not set")
                    }
                    clientKey = value
                default:
                    throw invalid("\(where_): give client_key (the platform's client key file) or client_key_env "
                                    + "(a variable naming that file), not both or neither")
                }
                let trimmed = url.hasSuffix("/") ? String(url.dropLast()) : url
                forces.append(Force(id: id, backend: .remote(RemoteLocation(
                    url: trimmed, caFile: try file("ca", "the CA of the custody service's certificate"),
                    clientCertificate: try file("client_certificate", "this platform's client certificate"),
                    clientKey: clientKey,
                    custodyKey: try file("custody_key", "the custody service's public key, PEM")))))
            default:
                throw invalid("\(where_): unknown backend \"\(backend)\" (expected \"keyring\", \"pkcs11\" or "
                                + "\"remote\")")
            }
        }
        return CustodyConfiguration(forces: forces)
    }

    public static func resolve(_ path: String, against base: String) -> String {
        path.hasPrefix("/") ? path : (base == "." ? path : "\(base)/\(path)")
    }

    /// Opens the custody of one force with its configured secret source. A remote force is opened by `remote` (the
    /// client lives with the vault's HTTP code); without it, a remote force is refused.
    public func open(_ id: ForceID, mode: KeyringCustody.Mode, logger: Logger,
                     remote: ((ForceID, RemoteLocation) throws -> any KeyCustodian)? = nil) throws -> any KeyCustodian {
        guard let force = force(id) else {
            throw CustodyError(.invalidConfiguration, "force \(id) is not in the custody file")
        }
        switch force.backend {
        case .remote(let location):
            guard let remote else {
                throw CustodyError(.unsupportedBackend, "force \(id) is held by its own custody service at "
                                    + "\(location.url): its keys are not here")
            }
            return try remote(id, location)
        case .keyring(let path, let source):
            let passphrase = try source.read()
            return try KeyringCustody.open(at: path, passphrase: passphrase, expectedForce: id, mode: mode,
                                           logger: logger)
        case .pkcs11(let module, let token, let pinSource, let earlierLocation):
            // The token reconciles concurrent writers itself (each change starts from its newest state record):
            // shared mode means read-write for it.
            let tokenMode: KeyringCustody.Mode = mode == .shared ? .readWrite : mode
            guard let earlierLocation else {
                return try PKCS11Custody.open(module: module, tokenLabel: token, pin: try pinSource.read(), force: id,
                                              mode: tokenMode, logger: logger)
            }
            let earlier = try KeyringCustody.open(at: earlierLocation.path,
                                                  passphrase: try earlierLocation.passphrase.read(),
                                                  expectedForce: id, mode: mode, allowHandedOver: true, logger: logger)
            return try MigratingCustody.open(module: module, tokenLabel: token, pin: try pinSource.read(), force: id,
                                             earlier: earlier, mode: tokenMode, logger: logger)
        }
    }
}
