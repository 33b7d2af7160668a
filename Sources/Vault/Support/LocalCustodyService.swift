import KeyCustody
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A force's custody service as a throwaway local process (`vaultd custody serve`), for benchmarks and tests: its
/// own directory with the force's keys (a custody-file table given by the caller), its own CA and certificate for
/// 127.0.0.1, a second CA it trusts for platform instances with one client certificate (`vaultd-a`), and bearer tokens
/// for the custodians and auditors named.
public final class LocalCustodyService: @unchecked Sendable {
    public let force: ForceID
    public let directory: String
    /// The service's own CA and server certificate.
    public let pki: DevelopmentPKI
    /// The CA the force trusts for the platform's vaultd instances, with the client certificate `vaultd-a`.
    public let platformPKI: DevelopmentPKI
    public let port: Int
    let vaultdPath: String
    let environment: [String: String]
    public private(set) var pid: pid_t = 0
    /// Bearer tokens at the service, by principal.
    public private(set) var tokens: [String: String] = [:]

    /// `custodyTable`: the `[forces.<force>]` table of the force's keys (paths relative to `directory`);
    /// `environment`: what the service needs to open them (a passphrase, a PIN), given to it alone.
    public init(force: ForceID, directory: String, vaultdPath: String, custodyTable: String,
                environment: [String: String], custodians: [String], auditors: [String]) throws
    {
        self.force = force
        self.directory = directory
        self.vaultdPath = vaultdPath
        self.environment = environment
        try FileBlobStore.makeDirectory(directory)
        pki = try DevelopmentPKI(directory: "\(directory)/tls")
        platformPKI = try DevelopmentPKI(directory: "\(directory)/platform-pki", clients: ["vaultd-a"])
        port = try freeLoopbackPort()
        try DurableFile.write(Array(custodyTable.utf8), to: "\(directory)/keys.toml")
        var principals = ""
        for (id, role) in custodians.map({ ($0, "custodian") }) + auditors.map({ ($0, "auditor") }) {
            principals += "\n[[principals]]\nid = \"\(id)\"\n\(role) = [\"\(force)\"]\n"
        }
        try DurableFile.write(Array("""
            listen = "127.0.0.1:\(port)"
            data_dir = "data"
            force = "\(force)"
            custody = "keys.toml"

            [tls]
            certificate = "tls/server.pem"
            private_key = "tls/server.key"
            platform_ca = "platform-pki/ca.pem"
            \(principals)
            """.utf8), to: configurationFile)
        for id in custodians + auditors {
            let created = try Subprocess.run(vaultdPath, ["custody", "token", "create", "--config", configurationFile,
                                                          "--principal", id])
            guard created.status == 0 else { throw VaultError(.io, "cannot create a custody token for \(id)") }
            tokens[id] = String(decoding: created.stdout, as: UTF8.self).trimmingSpaces
        }
    }

    public var configurationFile: String { "\(directory)/custody.toml" }
    public var url: String { "https://127.0.0.1:\(port)" }
    /// The service's public key (PEM): it signs use cases and cosignatures.
    public var publicKeyFile: String { "\(directory)/data/audit-signing.pub" }

    /// Starts the service's process (without waiting for it: see `start`).
    public func spawn() throws {
        var environment = environment
        environment["PATH"] = "/usr/bin:/bin"
        pid = try Subprocess.spawn(vaultdPath, ["custody", "serve", "--config", configurationFile],
                                   environment: environment, logPath: "\(directory)/custody.log")
    }

    /// Starts the service and waits (up to 10 s) until it accepts connections.
    public func start() async throws {
        try spawn()
        for _ in 0..<200 {
            if Self.accepts(port: port) { return }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                pid = 0
                let log = (try? DurableFile.read("\(directory)/custody.log", limit: 1 << 20)) ?? []
                let last = String(decoding: log, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
                throw VaultError(.io, "the custody service did not start: \(last) (\(directory)/custody.log)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw VaultError(.io, "the custody service does not accept connections (see \(directory)/custody.log)")
    }

    /// Stops it (SIGKILL: a crash, as the kill tests need), if it runs.
    public func kill() {
        guard pid > 0 else { return }
        Subprocess.stop(pid, signal: SIGKILL)
        pid = 0
    }

    deinit { kill() }

    /// Copies what the platform needs (the service's CA and public key, the platform's client certificate and key)
    /// into `platformDirectory` and returns the platform's custody-file table for the force.
    public func remoteTable(copyingInto platformDirectory: String) throws -> String {
        for (from, to) in [(pki.caCertificate, "\(force)-custody-ca.pem"), (publicKeyFile, "\(force)-custody.pub"),
                           (platformPKI.clientCertificate("vaultd-a"), "vaultd-a.pem"),
                           (platformPKI.clientKey("vaultd-a"), "vaultd-a.key")] {
            try DurableFile.write(try DurableFile.read(from, limit: 1 << 20), to: "\(platformDirectory)/\(to)")
        }
        return """
            [forces.\(force)]
            backend = "remote"
            url = "\(url)"
            ca = "\(force)-custody-ca.pem"
            client_certificate = "vaultd-a.pem"
            client_key = "vaultd-a.key"
            custody_key = "\(force)-custody.pub"

            """
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withLoopbackAddress(port: port) { connect(fd, $0, $1) } == 0
    }
}

extension LocalCustodyService {
    /// A service with a fresh keyring for `force` (fast KDF limits; a random passphrase only the service's process
    /// receives), started and ready, with one custodian `custodian`. With `keyring`, the service fronts that existing
    /// keyring instead (an absolute path; a benchmark seeds keys through it first, then hands it over).
    public static func launch(force: ForceID, directory: String, vaultdPath: String,
                              keyring: (path: String, passphrase: String)? = nil, logger: Logger) async throws
        -> LocalCustodyService
    {
        try FileBlobStore.makeDirectory(directory)
        let path: String
        let passphrase: String
        if let keyring {
            (path, passphrase) = keyring
        } else {
            path = "\(directory)/\(force).keyring"
            passphrase = Hex.encode(SecureRandom.bytes(count: 16))
            var bytes = Array(passphrase.utf8)
            _ = try KeyringCustody.create(at: path, force: force, passphrase: SecureBytes(consuming: &bytes),
                                          parameters: .interactive, logger: logger)
        }
        let named = keyring == nil ? "\(force).keyring" : path
        let service = try LocalCustodyService(
            force: force, directory: directory, vaultdPath: vaultdPath,
            custodyTable: "[forces.\(force)]\nbackend = \"keyring\"\nkeyring = \"\(named)\"\n"
                + "passphrase_env = \"VAULT_CUSTODY_PASSPHRASE\"\n",
            environment: ["VAULT_CUSTODY_PASSPHRASE": passphrase], custodians: ["custodian"], auditors: [])
        try await service.start()
        return service
    }

    /// The platform's side of the force: remote custody over mTLS with the platform's client certificate.
    public func remoteCustody(timeout: TimeAmount = .seconds(10)) throws -> RemoteCustody {
        try RemoteCustody(force: force, location: CustodyConfiguration.RemoteLocation(
            url: url, caFile: pki.caCertificate, clientCertificate: platformPKI.clientCertificate("vaultd-a"),
            clientKey: platformPKI.clientKey("vaultd-a"), custodyKey: publicKeyFile), timeout: timeout)
    }

    /// As the custodian at the service: authorises `principal` for `datasets` under `useCase` and registers its
    /// signing key.
    public func authorize(_ principal: PrincipalSigningKey, datasets: [DatasetID], useCase: String) async throws {
        var token = Array(tokens["custodian"]!.utf8)
        let configuration = ClientConfiguration(server: url, caFile: pki.caCertificate,
                                                token: SecureBytes(consuming: &token), certificate: nil, privateKey: nil)
        let body = UseCaseRequest(description: "benchmark", lawfulBasis: "benchmark", datasets: datasets,
                                  principals: [principal.principal])
        let useCaseID = try ResourceID(useCase, kind: "use case id")
        let principalID = try ResourceID(principal.principal, kind: "principal id")
        try await VaultClient.with(configuration) { client in
            _ = try await client.putUseCase(force: force, id: useCaseID, body: body)
            try await client.registerSigningKey(force: force, principal: principalID,
                                                publicKeyPEM: principal.key.publicKey.pem)
        }
    }
}
