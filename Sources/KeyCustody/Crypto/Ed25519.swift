internal import CSodium

/// Ed25519 signatures (RFC 8032) from libsodium: the vault's audit key signs checkpoints and certificates.
public enum Ed25519 {
    public static let publicKeyByteCount = 32
    public static let signatureByteCount = 64

    /// A signing key. The 64-byte libsodium secret key (seed || public key) stays in secure memory.
    public struct PrivateKey: Sendable {
        private let secretKey: SecureBytes
        public let publicKey: PublicKey

        /// A fresh key pair from the CSPRNG.
        public init() {
            _ = Sodium.ready
            let seed = SecureBytes.random(count: 32)
            self = try! PrivateKey(seed: seed)
        }

        /// The key pair for a 32-byte seed (the form in which the key is stored).
        public init(seed: SecureBytes) throws {
            _ = Sodium.ready
            guard seed.count == 32 else { throw CustodyError(.invalidParameter, "Ed25519 seed must be 32 bytes") }
            var publicBytes = [UInt8](repeating: 0, count: 32)
            secretKey = SecureBytes(count: 64) { sk in
                seed.withUnsafeBytes { s in
                    _ = crypto_sign_seed_keypair(&publicBytes, sk.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                 s.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
            publicKey = try PublicKey(rawRepresentation: publicBytes)
        }

        /// The 32-byte seed, for storage in a protected file.
        public var seed: SecureBytes {
            secretKey.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(32))) }
        }

        /// A detached 64-byte signature of `message`.
        public func signature(for message: [UInt8]) -> [UInt8] {
            var signature = [UInt8](repeating: 0, count: signatureByteCount)
            secretKey.withUnsafeBytes { sk in
                _ = crypto_sign_detached(&signature, nil, message, UInt64(message.count),
                                         sk.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
            return signature
        }
    }

    /// A verification key.
    public struct PublicKey: Sendable, Equatable {
        public let rawRepresentation: [UInt8]

        public init(rawRepresentation: [UInt8]) throws {
            guard rawRepresentation.count == publicKeyByteCount else {
                throw CustodyError(.invalidParameter, "Ed25519 public key must be \(publicKeyByteCount) bytes")
            }
            self.rawRepresentation = rawRepresentation
        }

        /// True when `signature` is a valid signature of `message` under this key (strict RFC 8032 checks: canonical
        /// S, no small-order points).
        public func isValidSignature(_ signature: [UInt8], for message: [UInt8]) -> Bool {
            _ = Sodium.ready
            guard signature.count == signatureByteCount else { return false }
            return crypto_sign_verify_detached(signature, message, UInt64(message.count), rawRepresentation) == 0
        }
    }
}
