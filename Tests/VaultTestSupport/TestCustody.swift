import Foundation
import KeyCustody
import Logging

/// The custody backend of the running test (`TestBackend.current`): keyring, or PKCS#11 on SoftHSM2.
public enum TestCustody {
    public static var backend: String { TestBackend.current.custody.rawValue }
    public static var isPKCS11: Bool { TestBackend.current.custody == .pkcs11 }

    /// The SoftHSM2 module (Debian package softhsm2).
    public static let module = ProcessInfo.processInfo.environment["VAULT_TEST_PKCS11_MODULE"]
        ?? "/usr/lib/softhsm/libsofthsm2.so"
    /// The user PIN of every token the tests create (throwaway tokens in a temporary directory).
    public static let userPIN = "vault-test-user-pin"
    static let soPIN = "vault-test-so-pin"

    private static let logger = Logger(label: "test-custody") { _ in SwiftLogNoOpLogHandler() }
    private static let lock = NSLock()
    nonisolated(unsafe) private static var prepared: String?

    /// The SoftHSM2 configuration file: the one `make test` set up (`SOFTHSM2_CONF`), or a temporary token
    /// directory made on first use when the tests run without it.
    public static func softHSMConfiguration() throws -> String {
        lock.lock()
        defer { lock.unlock() }
        if let prepared { return prepared }
        if let existing = ProcessInfo.processInfo.environment["SOFTHSM2_CONF"] {
            prepared = existing
            return existing
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("vault-softhsm-\(getpid())")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("tokens"),
                                                withIntermediateDirectories: true)
        let configuration = directory.appendingPathComponent("softhsm2.conf").path
        try Data("""
            directories.tokendir = \(directory.path)/tokens
            objectstore.backend = file
            log.level = ERROR
            slots.removable = false

            """.utf8).write(to: URL(fileURLWithPath: configuration))
        setenv("SOFTHSM2_CONF", configuration, 1)
        prepared = configuration
        return configuration
    }

    /// The environment a vaultd or vault child process needs to reach the tokens (the PINs are added per force).
    public static func childEnvironment() throws -> [String: String] {
        isPKCS11 ? ["SOFTHSM2_CONF": try softHSMConfiguration()] : [:]
    }

    /// Initialises a fresh token labelled `<prefix>-<random>` and returns its label.
    public static func newToken(_ prefix: String) throws -> String {
        _ = try softHSMConfiguration()
        let label = "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())"
        lock.lock()
        defer { lock.unlock() }
        try PKCS11Administration.initializeToken(module: module, label: label, soPIN: secret(soPIN),
                                                 userPIN: secret(userPIN))
        return label
    }

    /// A fresh token with master key 1 of `force`, opened read-write; its label too.
    public static func freshToken(force: ForceID, prefix: String) throws -> (String, PKCS11Custody) {
        let token = try newToken(prefix)
        _ = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: secret(userPIN), force: force,
                                         logger: logger)
        return (token, try PKCS11Custody.open(module: module, tokenLabel: token, pin: secret(userPIN), force: force,
                                              mode: .readWrite, logger: logger))
    }

    public static func secret(_ text: String) -> SecureBytes {
        var bytes = Array(text.utf8)
        return SecureBytes(consuming: &bytes)
    }

    /// A force's custody on the backend under test: a keyring in `directory`, or a fresh token with master key 1.
    public static func create(force: ForceID, directory: TemporaryDirectory, passphrase: String) throws
        -> any KeyCustodian
    {
        guard isPKCS11 else {
            return try KeyringCustody.create(at: directory.file("\(force).keyring"), force: force,
                                             passphrase: secret(passphrase), parameters: .interactive, logger: logger)
        }
        let token = try newToken(force.rawValue)
        _ = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: secret(userPIN), force: force,
                                         logger: logger)
        return try PKCS11Custody.open(module: module, tokenLabel: token, pin: secret(userPIN), force: force,
                                      mode: .readWrite, logger: logger)
    }

    /// Opens the same keys again read-only, as someone holding the keyring passphrase or the token PIN would.
    public static func reopen(_ custody: any KeyCustodian, passphrase: String) throws -> any KeyCustodian {
        if let keyring = custody as? KeyringCustody {
            return try KeyringCustody.open(at: keyring.path, passphrase: secret(passphrase), logger: logger)
        }
        guard let token = custody as? PKCS11Custody else { fatalError("unknown custody \(type(of: custody))") }
        return try PKCS11Custody.open(module: module, tokenLabel: token.tokenLabel, pin: secret(userPIN),
                                      force: custody.force, mode: .readOnly, logger: logger)
    }

    /// A custody-file table for `force` on the backend under test, with the keys created, and the environment
    /// variables vaultd then needs (passphrase or PIN).
    public static func custodyTable(force: String, directory: TemporaryDirectory, passphraseVariable: String,
                                    passphrase: String, backend: String? = nil)
        throws -> (table: String, environment: [String: String])
    {
        let id = try ForceID(force: force)
        guard (backend ?? self.backend) == "pkcs11" else {
            _ = try KeyringCustody.create(at: directory.file("\(force).keyring"), force: id,
                                          passphrase: secret(passphrase), parameters: .interactive, logger: logger)
            return ("""
                [forces.\(force)]
                backend = "keyring"
                keyring = "\(force).keyring"
                passphrase_env = "\(passphraseVariable)"

                """, [passphraseVariable: passphrase])
        }
        let token = try newToken(force)
        _ = try PKCS11Custody.initialize(module: module, tokenLabel: token, pin: secret(userPIN), force: id,
                                         logger: logger)
        let pinVariable = "VAULT_PIN_\(force.uppercased().replacingOccurrences(of: "-", with: "_"))"
        return ("""
            [forces.\(force)]
            backend = "pkcs11"
            module = "\(module)"
            token = "\(token)"
            pin_env = "\(pinVariable)"

            """, [pinVariable: userPIN, "SOFTHSM2_CONF": try softHSMConfiguration()])
    }
}
