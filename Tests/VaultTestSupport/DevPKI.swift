import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PKI made with the `openssl` command: a CA, a server certificate for 127.0.0.1/localhost, and client
/// certificates whose subject CN is a principal id.
public struct DevPKI {
    public let directory: String

    public var caCertificate: String { "\(directory)/ca.pem" }
    public var serverCertificate: String { "\(directory)/server.pem" }
    public var serverKey: String { "\(directory)/server.key" }
    public func clientCertificate(_ name: String) -> String { "\(directory)/\(name).pem" }
    public func clientKey(_ name: String) -> String { "\(directory)/\(name).key" }

    /// Creates the CA, the server certificate and one client certificate per name; `foreign` names get a
    /// certificate from a second, untrusted CA.
    public init(directory: String, clients: [String], foreign: [String] = []) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(directory)/ca.key", "-out", "\(directory)/ca.pem", "-days", "30",
                          "-subj", "/CN=vault test CA"])
        try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(directory)/foreign-ca.key", "-out", "\(directory)/foreign-ca.pem",
                          "-days", "30", "-subj", "/CN=some other CA"])
        try issue(name: "server", commonName: "localhost", ca: "ca",
                  extensions: "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        for name in clients {
            try issue(name: name, commonName: name, ca: "ca", extensions: "extendedKeyUsage=clientAuth\n")
        }
        for name in foreign {
            try issue(name: name, commonName: name, ca: "foreign-ca", extensions: "extendedKeyUsage=clientAuth\n")
        }
    }

    private func issue(name: String, commonName: String, ca: String, extensions: String) throws {
        let ext = "\(directory)/\(name).ext"
        try extensions.write(toFile: ext, atomically: true, encoding: .utf8)
        try Self.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(directory)/\(name).key", "-out", "\(directory)/\(name).csr",
                          "-subj", "/CN=\(commonName)"])
        try Self.openssl(["x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", "\(directory)/\(ca).pem",
                          "-CAkey", "\(directory)/\(ca).key", "-CAcreateserial", "-out", "\(directory)/\(name).pem",
                          "-days", "30", "-extfile", ext])
    }

    static func openssl(_ arguments: [String]) throws {
        let result = try Binaries.run("/usr/bin/openssl", arguments)
        guard result.status == 0 else {
            throw TestVectors.VectorError(message: "openssl \(arguments.first ?? "") failed: \(result.stderr)")
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
public func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    guard bound == 0 else { throw TestVectors.VectorError(message: "cannot bind a loopback port") }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}
