import COpenSSLCrypto
import KeyCustody
import Synchronization

/// The certificate revocation list for client certificates (DESIGN section 8), named by `tls.client_crl`: a PEM or
/// DER X.509 CRL signed by the client CA. A client certificate whose serial it lists is refused (`certificate_revoked`)
/// at its next request, on connections opened before the revocation too.
///
/// The file is read at start (a missing, malformed, unsigned or expired CRL stops vaultd) and again whenever it
/// changes (`refresh`, called every second by vaultd's jobs, off the request path). A CRL that cannot be read or
/// verified after a change, or whose `nextUpdate` has passed, refuses every certificate login (`crl_unavailable`,
/// 503) until a good one is in place: revocation fails closed. Bearer tokens are not affected.
public final class ClientRevocationList: Sendable {
    public let path: String
    let caFile: String

    /// One revoked certificate: its issuer's name (DER) and serial number (big-endian magnitude).
    struct Entry: Hashable, Sendable {
        let issuer: [UInt8]
        let serial: [UInt8]
    }

    struct Loaded: Sendable {
        var revoked: Set<Entry>
        /// When the issuer says a newer list is due (Unix seconds); nil if the list names no next update.
        var nextUpdate: Int64?
    }

    private struct State: Sendable {
        var stamp: FileStamp?
        var loaded: Result<Loaded, VaultError>
    }

    private let state: Mutex<State>

    /// Reads and verifies the list; throws when it is unusable.
    public init(path: String, caFile: String) throws {
        self.path = path
        self.caFile = caFile
        let stamp = FileStamp(path: path)
        let loaded = try Self.load(path: path, caFile: caFile)
        if let next = loaded.nextUpdate, next <= currentUnixTime() {
            throw VaultError(.invalidParameter, "the client CRL \(path) expired at "
                                + Timestamp.format(secondsSinceEpoch: Int(next)) + "; publish a new one")
        }
        state = Mutex(State(stamp: stamp, loaded: .success(loaded)))
    }

    /// Reads the file again if it changed since it was last read. Returns the error of a list that is now unusable.
    @discardableResult
    public func refresh() -> VaultError? {
        let stamp = FileStamp(path: path)
        if stamp == nil || stamp != state.withLock({ $0.stamp }) {
            let loaded: Result<Loaded, VaultError>
            do { loaded = .success(try Self.load(path: path, caFile: caFile)) } catch let error as VaultError {
                loaded = .failure(error)
            } catch {
                loaded = .failure(VaultError(.io, "cannot read the client CRL \(path)"))
            }
            state.withLock { $0 = State(stamp: stamp, loaded: loaded) }
        }
        if case .failure(let error) = state.withLock({ $0.loaded }) { return error }
        return nil
    }

    /// Refuses a client certificate (given as DER) that the list revokes, or every certificate while the list is
    /// unusable.
    func check(_ certificate: PeerCertificate) throws {
        let loaded: Loaded
        switch state.withLock({ $0.loaded }) {
        case .success(let value): loaded = value
        case .failure(let error): throw Self.unavailable(error.message)
        }
        if let next = loaded.nextUpdate, next <= currentUnixTime() {
            throw Self.unavailable("the client CRL expired at " + Timestamp.format(secondsSinceEpoch: Int(next))
                                    + "; its issuer must publish a new one")
        }
        if loaded.revoked.contains(Entry(issuer: certificate.issuer, serial: certificate.serial)) {
            throw APIError(status: .unauthorized, code: "certificate_revoked",
                           message: "the client certificate is revoked")
        }
    }

    static func unavailable(_ reason: String) -> APIError {
        APIError(status: .serviceUnavailable, code: "crl_unavailable",
                 message: "client certificates cannot be checked for revocation: \(reason)")
    }

    /// Parses the list (PEM, else DER), checks its signature against a certificate of the client CA whose subject
    /// is the list's issuer, and collects the revoked serials.
    static func load(path: String, caFile: String) throws -> Loaded {
        let invalid = { (reason: String) in VaultError(.invalidParameter, "client CRL \(path): \(reason)") }
        let bytes: [UInt8]
        do { bytes = try DurableFile.read(path, limit: 64 << 20) } catch let error as CustodyError {
            throw invalid(error.message)
        }
        guard let crl = parseCRL(bytes) else { throw invalid("not a PEM or DER X.509 CRL") }
        defer { X509_CRL_free(crl) }
        let authorities: [UInt8]
        do { authorities = try DurableFile.read(caFile, limit: 1 << 20) } catch let error as CustodyError {
            throw invalid("cannot read the client CA: \(error.message)")
        }
        let issuerName = X509_CRL_get_issuer(crl)
        var signed = false
        for certificate in parseCertificates(authorities) {
            defer { X509_free(certificate) }
            if X509_NAME_cmp(X509_get_subject_name(certificate), issuerName) == 0,
               let key = X509_get0_pubkey(certificate), X509_CRL_verify(crl, key) == 1
            {
                signed = true
            }
        }
        ERR_clear_error()
        guard signed else { throw invalid("not signed by the client CA (\(caFile))") }
        guard let issuer = der(of: issuerName) else { throw invalid("its issuer name cannot be encoded") }
        var revoked = Set<Entry>()
        if let list = X509_CRL_get_REVOKED(crl) {
            for index in 0..<OPENSSL_sk_num(list) {
                guard let entry = OPENSSL_sk_value(list, index),
                      let serial = X509_REVOKED_get0_serialNumber(OpaquePointer(entry))
                else { throw invalid("entry \(index) has no serial number") }
                revoked.insert(Entry(issuer: issuer, serial: magnitude(serial)))
            }
        }
        var nextUpdate: Int64?
        if let next = X509_CRL_get0_nextUpdate(crl) {
            var tm = tm()
            guard ASN1_TIME_to_tm(next, &tm) == 1 else { throw invalid("its nextUpdate is not a time") }
            nextUpdate = Int64(timegm(&tm))
        }
        return Loaded(revoked: revoked, nextUpdate: nextUpdate)
    }

    private static func parseCRL(_ bytes: [UInt8]) -> OpaquePointer? {
        bytes.withUnsafeBytes { buffer -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) else { return nil }
            defer { BIO_free(bio) }
            if let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) { return crl }
            ERR_clear_error()
            var start = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
            let crl = d2i_X509_CRL(nil, &start, buffer.count)
            ERR_clear_error()
            return crl
        }
    }

    private static func parseCertificates(_ bytes: [UInt8]) -> [OpaquePointer] {
        bytes.withUnsafeBytes { buffer -> [OpaquePointer] in
            guard let bio = BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) else { return [] }
            defer { BIO_free(bio) }
            var certificates: [OpaquePointer] = []
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) { certificates.append(certificate) }
            ERR_clear_error()
            return certificates
        }
    }

    /// The DER encoding of an X.509 name.
    static func der(of name: OpaquePointer?) -> [UInt8]? {
        guard let name else { return nil }
        let length = i2d_X509_NAME(name, nil)
        guard length > 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(length))
        let written = bytes.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var out = buffer.baseAddress
            return i2d_X509_NAME(name, &out)
        }
        return written == length ? bytes : nil
    }

    /// A serial number's big-endian magnitude, as OpenSSL holds it (no leading zeros).
    static func magnitude(_ serial: UnsafePointer<ASN1_INTEGER>) -> [UInt8] {
        let count = Int(ASN1_STRING_length(serial))
        guard count > 0, let data = ASN1_STRING_get0_data(serial) else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: count))
    }
}

/// What revocation needs of a client certificate: its issuer's name (DER) and serial number, read once per
/// connection from the certificate the TLS handshake verified.
struct PeerCertificate: Sendable, Equatable {
    let commonName: String
    let issuer: [UInt8]
    let serial: [UInt8]

    /// Reads a DER certificate; nil if OpenSSL cannot parse it (the handshake already verified it, so this is not
    /// expected).
    init?(der: [UInt8], commonName: String) {
        let parsed = der.withUnsafeBytes { buffer -> OpaquePointer? in
            var start = buffer.baseAddress?.assumingMemoryBound(to: UInt8.self)
            return d2i_X509(nil, &start, buffer.count)
        }
        guard let parsed else {
            ERR_clear_error()
            return nil
        }
        defer { X509_free(parsed) }
        guard let issuer = ClientRevocationList.der(of: X509_get_issuer_name(parsed)),
              let serial = X509_get0_serialNumber(parsed)
        else { return nil }
        self.commonName = commonName
        self.issuer = issuer
        self.serial = ClientRevocationList.magnitude(serial)
    }
}
