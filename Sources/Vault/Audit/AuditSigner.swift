#if canImport(Glibc)
import Glibc
#endif
import KeyCustody

/// The vault's Ed25519 audit key, which signs chain checkpoints (DESIGN 5.5), export seals and destruction
/// certificates. By default the private key is a PEM PKCS#8 file (mode 0600) in the data directory and lives in
/// secure memory once loaded; with `[audit_key]` in vaultd's configuration it is a key pair generated on a PKCS#11
/// token that never leaves it (`PKCS11SigningKey`). Either way the public key is written to the data directory as a
/// PEM `PUBLIC KEY` file and served at `GET /v1/audit/public-key`; the signatures are the same Ed25519 signatures.
public final class AuditSigner: Sendable {
    public static let privateKeyFile = "audit-signing.key"
    public static let publicKeyFile = "audit-signing.pub"

    enum Backend: Sendable {
        case memory(Ed25519.PrivateKey)
        case token(PKCS11SigningKey)
    }

    private let backend: Backend
    public let publicKey: Ed25519.PublicKey

    public init(key: Ed25519.PrivateKey) {
        backend = .memory(key)
        publicKey = key.publicKey
    }

    /// The audit key on a token; its public key is written to `directory` for verifiers.
    public init(token key: PKCS11SigningKey, publicKeyDirectory directory: String) throws {
        backend = .token(key)
        do { publicKey = try Ed25519.PublicKey(rawRepresentation: key.publicKey) } catch let error as CustodyError {
            throw VaultError(.malformedAudit, "the audit key on the token is not an Ed25519 key: \(error.message)")
        }
        try Self.writePublicKey(publicKey, in: directory)
    }

    /// Where the token holds the audit key (`[audit_key]` in vaultd's configuration).
    public var onToken: Bool { if case .token = backend { true } else { false } }

    /// An Ed25519 signature of `message` by the audit key. A token that cannot sign right now throws (its error:
    /// `token_unavailable`, `hsm_failure`...); nothing signed is then stored.
    func signature(_ message: [UInt8]) throws -> [UInt8] {
        switch backend {
        case .memory(let key): return key.signature(for: message)
        case .token(let key): return try key.sign(message)
        }
    }

    /// Writes the public key file (PEM) unless it already holds this key.
    static func writePublicKey(_ key: Ed25519.PublicKey, in directory: String) throws {
        let publicPath = directory + "/" + publicKeyFile
        let pem = key.pem
        let existing = (try? DurableFile.read(publicPath, limit: 4096)).map { String(decoding: $0, as: UTF8.self) }
        guard existing != pem else { return }
        do { try DurableFile.write(Array(pem.utf8), to: publicPath, permissions: 0o644) } catch let error as CustodyError {
            throw VaultError(.io, "cannot write the audit public key \(publicPath): \(error.message)", cause: error)
        }
    }

    /// Whether `directory` holds an audit key.
    public static func exists(in directory: String) -> Bool {
        access(directory + "/" + privateKeyFile, F_OK) == 0
    }

    /// Loads the audit key from `directory`, creating it (and the public key file) on first use.
    public static func loadOrCreate(in directory: String) throws -> AuditSigner {
        let privatePath = directory + "/" + privateKeyFile
        let key: Ed25519.PrivateKey
        if access(privatePath, F_OK) == 0 {
            do {
                key = try Ed25519.PrivateKey(pkcs8PEM: try DurableFile.readSecret(privatePath, limit: 4096))
            } catch let error as CustodyError {
                throw VaultError(.malformedAudit, "the audit key \(privatePath) cannot be read: \(error.message)",
                                 cause: error)
            }
        } else {
            key = Ed25519.PrivateKey()
            do {
                try key.pkcs8PEM.withUnsafeBytes { try DurableFile.write($0, to: privatePath, replacing: false) }
            } catch let error as CustodyError {
                throw VaultError(.io, "cannot create the audit key \(privatePath): \(error.message)", cause: error)
            }
        }
        // The public key file is derived; rewrite it if it is missing or does not match.
        try writePublicKey(key.publicKey, in: directory)
        return AuditSigner(key: key)
    }

    /// Signs the seal that ends an export.
    public func seal(force: ForceID, firstSeq: Int64, lastSeq: Int64, firstPrev: String, lastHash: String,
                     time: UnixTime) throws -> AuditExportSeal {
        let body = AuditExportSeal.body(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev,
                                        lastHash: lastHash, exportedAt: time)
        return AuditExportSeal(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev,
                               lastHash: lastHash, exportedAt: time, signature: try signature(body.canonicalBytes()))
    }

    /// Signs a statement of the vault (a destruction certificate's canonical bytes).
    public func sign(_ statement: [UInt8]) throws -> [UInt8] { try signature(statement) }

    /// Signs the checkpoint statement for record `seq` of `force`'s chain.
    public func checkpoint(force: ForceID, seq: Int64, hash: String, time: UnixTime) throws -> AuditCheckpoint {
        let signature = try signature(AuditCheckpoint.signedBytes(force: force, seq: seq, hash: hash, time: time))
        return AuditCheckpoint(force: force, seq: seq, hash: hash, time: time, signature: signature)
    }
}
