#if canImport(Glibc)
import Glibc
#endif
import KeyCustody

/// The vault's Ed25519 audit key, which signs chain checkpoints (DESIGN 5.5). The private key is a PEM PKCS#8 file
/// (mode 0600) in the data directory and lives in secure memory once loaded; the public key is written beside it
/// as a PEM `PUBLIC KEY` file and served at `GET /v1/audit/public-key`. Both files can be used with OpenSSL.
public final class AuditSigner: Sendable {
    public static let privateKeyFile = "audit-signing.key"
    public static let publicKeyFile = "audit-signing.pub"

    private let key: Ed25519.PrivateKey
    public var publicKey: Ed25519.PublicKey { key.publicKey }

    public init(key: Ed25519.PrivateKey) {
        self.key = key
    }

    /// Whether `directory` holds an audit key.
    public static func exists(in directory: String) -> Bool {
        access(directory + "/" + privateKeyFile, F_OK) == 0
    }

    /// Loads the audit key from `directory`, creating it (and the public key file) on first use.
    public static func loadOrCreate(in directory: String) throws -> AuditSigner {
        let privatePath = directory + "/" + privateKeyFile
        let publicPath = directory + "/" + publicKeyFile
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
        let pem = key.publicKey.pem
        let existing = (try? DurableFile.read(publicPath, limit: 4096)).map { String(decoding: $0, as: UTF8.self) }
        if existing != pem {
            do { try DurableFile.write(Array(pem.utf8), to: publicPath, permissions: 0o644) } catch let error as CustodyError {
                throw VaultError(.io, "cannot write the audit public key \(publicPath): \(error.message)",
                                 cause: error)
            }
        }
        return AuditSigner(key: key)
    }

    /// Signs the seal that ends an export.
    public func seal(force: ForceID, firstSeq: Int64, lastSeq: Int64, firstPrev: String, lastHash: String,
                     time: UnixTime) -> AuditExportSeal {
        let body = AuditExportSeal.body(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev,
                                        lastHash: lastHash, exportedAt: time)
        return AuditExportSeal(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev,
                               lastHash: lastHash, exportedAt: time, signature: key.signature(for: body.canonicalBytes()))
    }

    /// Signs a statement of the vault (a destruction certificate's canonical bytes).
    public func sign(_ statement: [UInt8]) -> [UInt8] { key.signature(for: statement) }

    /// Signs the checkpoint statement for record `seq` of `force`'s chain.
    public func checkpoint(force: ForceID, seq: Int64, hash: String, time: UnixTime) -> AuditCheckpoint {
        let signature = key.signature(for: AuditCheckpoint.signedBytes(force: force, seq: seq, hash: hash, time: time))
        return AuditCheckpoint(force: force, seq: seq, hash: hash, time: time, signature: signature)
    }
}
