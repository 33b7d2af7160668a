import KeyCustody
import Vault

/// The TOML files an operator writes: vaultd's configuration, the custody file and the custody service's
/// configuration. The first byte picks the parser; the rest is the file, as `load` would hand it over (UTF-8 only).
/// Errors are expected; a configuration that parses must hold only what its parser promises.
enum ConfigurationTarget {
    static func run(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let which = input.byte() % 3
        guard let text = String(validating: input.rest(), as: UTF8.self) else { return }
        let base = which & 1 == 0 ? "." : "/etc/vault"
        switch which {
        case 0: server(text, base: base)
        case 1: custody(text, base: base)
        default: custodyService(text, base: base)
        }
    }

    static func server(_ text: String, base: String) {
        guard let configuration = try? ServerConfiguration.parse(text, source: "vaultd.toml", baseDirectory: base)
        else { return }
        guard (1...65535).contains(configuration.port) else { violated("port \(configuration.port) was accepted") }
        for (id, principal) in configuration.principals {
            guard principal.id == id, Principal.isValidID(id) else { violated("principal id \(id) was accepted") }
        }
        guard (1...86_400).contains(configuration.auditCheckpointSeconds),
            (0...604_800).contains(configuration.shredIntervalSeconds),
            (1...168).contains(configuration.retrievalGrantHours),
            (1...100_000).contains(configuration.rewrapBatchSize),
            configuration.rotationDays.values.allSatisfy({ (1...3650).contains($0) })
        else { violated("a setting outside its documented range was accepted") }
        if let url = configuration.postgresURL, PostgresURL.redact(url) != url {
            violated("a catalog URL with a password was accepted")
        }
        _ = configuration.catalog.description
        _ = configuration.blobs.description
    }

    static func custody(_ text: String, base: String) {
        guard let configuration = try? CustodyConfiguration.parse(text, source: "custody.toml", baseDirectory: base)
        else { return }
        guard !configuration.forces.isEmpty,
            configuration.forces.map(\.id) == configuration.forces.map(\.id).sorted()
        else { violated("forces are not listed once each, in id order") }
        for force in configuration.forces {
            switch force.backend {
            case .keyring(let path, _): guard !path.isEmpty else { violated("an empty keyring path was accepted") }
            case .pkcs11(let module, let token, _, _):
                guard module.hasPrefix("/"), !token.isEmpty, token.utf8.count <= 32 else {
                    violated("a PKCS#11 module or token label outside the rules was accepted")
                }
            case .remote(let location):
                guard location.url.hasPrefix("https://") else { violated("a non-HTTPS custody URL was accepted") }
            }
            _ = force.backend.secretVariables
        }
    }

    static func custodyService(_ text: String, base: String) {
        guard let configuration = try? CustodyServiceConfiguration.parse(text, source: "custody-service.toml",
                                                                         baseDirectory: base)
        else { return }
        for principal in configuration.principals.values {
            guard Set(principal.grants.keys).isSubset(of: [.custodian, .auditor]) else {
                violated("a custody service principal with another role was accepted")
            }
        }
    }
}
