import KeyCustody
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PKI made with the `openssl` command, for benchmarks and tests: a CA, a server certificate for
/// 127.0.0.1/localhost, and client certificates whose subject CN is a principal id (optionally from a second,
/// untrusted CA).
public struct DevelopmentPKI: Sendable {
    public let directory: String

    public var caCertificate: String { "\(directory)/ca.pem" }
    public var serverCertificate: String { "\(directory)/server.pem" }
    public var serverKey: String { "\(directory)/server.key" }
    public func clientCertificate(_ name: String) -> String { "\(directory)/\(name).pem" }
    public func clientKey(_ name: String) -> String { "\(directory)/\(name).key" }

    public init(directory: String, clients: [String] = [], foreign: [String] = []) throws {
        self.directory = directory
        try FileBlobStore.makeDirectory(directory)
        try makeCA("ca", subject: "vault test CA")
        if !foreign.isEmpty { try makeCA("foreign-ca", subject: "some other CA") }
        try issue(name: "server", commonName: "localhost", ca: "ca",
                  extensions: "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        for name in clients {
            try issue(name: name, commonName: name, ca: "ca", extensions: "extendedKeyUsage=clientAuth\n")
        }
        for name in foreign {
            try issue(name: name, commonName: name, ca: "foreign-ca", extensions: "extendedKeyUsage=clientAuth\n")
        }
    }

    private func makeCA(_ name: String, subject: String) throws {
        try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).pem", "-days", "30",
                          "-subj", "/CN=\(subject)"])
    }

    private func issue(name: String, commonName: String, ca: String, extensions: String) throws {
        try DurableFile.write(Array(extensions.utf8), to: "\(directory)/\(name).ext")
        try Self.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr",
                          "-subj", "/CN=\(commonName)"])
        try Self.openssl(["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", "\(directory)/\(ca).pem",
                          "-CAkey", "\(directory)/\(ca).key", "-CAcreateserial", "-out", "\(directory)/\(name).pem",
                          "-days", "30", "-extfile", "\(directory)/\(name).ext"])
    }

    /// The CA's certificate revocation list (`ca.crl`, PEM), revoking the client certificates named `revoked` and due
    /// for renewal in a week. Replaced atomically, as a CA publishes it.
    public var revocationList: String { "\(directory)/ca.crl" }

    public func writeRevocationList(revoking revoked: [String]) throws {
        let configuration = """
            [ca]
            default_ca = vault_test_ca
            [vault_test_ca]
            database = \(directory)/crl-index.txt
            crlnumber = \(directory)/crl-number
            default_md = sha256
            default_crl_days = 7
            """
        try DurableFile.write(Array(configuration.utf8), to: "\(directory)/crl.cnf")
        try DurableFile.write([], to: "\(directory)/crl-index.txt")
        if access("\(directory)/crl-number", F_OK) != 0 {
            try DurableFile.write(Array("01\n".utf8), to: "\(directory)/crl-number")
        }
        let ca = ["-config", "\(directory)/crl.cnf", "-keyfile", "\(directory)/ca.key", "-cert", caCertificate]
        for name in revoked { try Self.openssl(["ca"] + ca + ["-revoke", clientCertificate(name)]) }
        try Self.openssl(["ca"] + ca + ["-gencrl", "-out", "\(directory)/ca.crl.new"])
        guard rename("\(directory)/ca.crl.new", revocationList) == 0 else {
            throw VaultError(.io, "cannot publish \(revocationList)")
        }
    }

    static func openssl(_ arguments: [String]) throws {
        guard try Subprocess.run("openssl", arguments).status == 0 else {
            throw VaultError(.io, "openssl \(arguments.first ?? "") failed")
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test or benchmark is about to start. Never the
/// same port twice in one process (so servers started side by side cannot be handed one port), and from 10000-19999:
/// below the kernel's ephemeral range, so no outgoing connection or port-0 bind takes it before the server binds it,
/// and apart from the ports `scripts/free_ports.py` hands the test services (20000-29999).
public func freeLoopbackPort() throws -> Int {
    try LoopbackPorts.shared.next()
}

private final class LoopbackPorts: Sendable {
    static let shared = LoopbackPorts()
    static let range = 10_000..<20_000
    private let handedOut = Mutex(Set<Int>())

    func next() throws -> Int {
        for _ in 0..<2_000 {
            let port = Int.random(in: Self.range)
            let fresh = handedOut.withLock { $0.insert(port).inserted }
            guard fresh else { continue }
            if Self.canBind(port) { return port }
        }
        throw VaultError(.io, "no free loopback port in \(Self.range.lowerBound)-\(Self.range.upperBound - 1)")
    }

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return withLoopbackAddress(port: port) { bind(fd, $0, $1) } == 0
    }
}

/// 127.0.0.1:`port` as a `sockaddr` for `bind` or `connect`.
func withLoopbackAddress<T>(port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}
