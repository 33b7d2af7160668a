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

// MARK: PEM files (RFC 8410), readable by OpenSSL and any other Ed25519 tool

extension Ed25519.PrivateKey {
    /// The DER of a PKCS#8 Ed25519 private key, up to the 32-byte seed.
    private static let pkcs8Prefix: [UInt8] = [
        0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ]
    private static let pemBegin = "-----BEGIN PRIVATE KEY-----\n"
    private static let pemEnd = "\n-----END PRIVATE KEY-----\n"

    /// The key as a PEM `PRIVATE KEY` (PKCS#8) file, in secure memory.
    public var pkcs8PEM: SecureBytes {
        let der = seed.withUnsafeBytes { seed in
            SecureBytes(count: Self.pkcs8Prefix.count + 32) { out in
                out.copyBytes(from: Self.pkcs8Prefix)
                UnsafeMutableRawBufferPointer(rebasing: out[Self.pkcs8Prefix.count...]).copyMemory(from: seed)
            }
        }
        let begin = Array(Self.pemBegin.utf8), end = Array(Self.pemEnd.utf8)
        let encodedLength = Base64.encodedLength(der.count)
        let encoded = Base64.encodeSecret(der)
        return encoded.withUnsafeBytes { body in
            SecureBytes(count: begin.count + encodedLength + end.count) { out in
                out.copyBytes(from: begin)
                UnsafeMutableRawBufferPointer(rebasing: out[begin.count...]).copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: body.prefix(encodedLength)))
                UnsafeMutableRawBufferPointer(rebasing: out[(begin.count + encodedLength)...]).copyBytes(from: end)
            }
        }
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8 Ed25519, as `openssl genpkey -algorithm ed25519` writes it).
    public init(pkcs8PEM pem: SecureBytes) throws {
        let malformed = CustodyError(.malformedEncoding, "not a PEM Ed25519 private key (PKCS#8)")
        let der: SecureBytes = try pem.withUnsafeBytes { text in
            guard let body = PEM.body(of: text, label: "PRIVATE KEY") else { throw malformed }
            // The base64 body without line breaks, in secure memory.
            let compact = SecureBytes(count: body.filter { $0 != 0x0A && $0 != 0x0D }.count) { out in
                var index = 0
                for byte in body where byte != 0x0A && byte != 0x0D {
                    out[index] = byte
                    index += 1
                }
            }
            guard let der = compact.withUnsafeBytes({ Base64.decodeSecret($0) }) else { throw malformed }
            return der
        }
        let seed: SecureBytes = try der.withUnsafeBytes { bytes in
            guard bytes.count == Self.pkcs8Prefix.count + 32, Array(bytes.prefix(Self.pkcs8Prefix.count)) == Self.pkcs8Prefix
            else { throw malformed }
            return SecureBytes(copying: UnsafeRawBufferPointer(rebasing: bytes.suffix(32)))
        }
        try self.init(seed: seed)
    }
}

extension Ed25519.PublicKey {
    /// The DER of a SubjectPublicKeyInfo for Ed25519, up to the 32-byte key.
    private static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]

    /// The key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) file.
    public var pem: String {
        "-----BEGIN PUBLIC KEY-----\n" + Base64.encode(Self.spkiPrefix + rawRepresentation)
            + "\n-----END PUBLIC KEY-----\n"
    }

    /// Reads a PEM `PUBLIC KEY` for Ed25519 (as `openssl pkey -pubout` writes it).
    public init(pem: String) throws {
        let malformed = CustodyError(.malformedEncoding, "not a PEM Ed25519 public key")
        let bytes = Array(pem.utf8)
        // The body is copied out while `bytes` is alive: the buffer `PEM.body` points into is gone after the call.
        guard let body = bytes.withUnsafeBytes({ PEM.body(of: $0, label: "PUBLIC KEY").map { Array($0) } }),
            let der = Base64.decode(String(decoding: body.filter { $0 != 0x0A && $0 != 0x0D }, as: UTF8.self)),
            der.count == Self.spkiPrefix.count + 32, Array(der.prefix(Self.spkiPrefix.count)) == Self.spkiPrefix
        else { throw malformed }
        try self.init(rawRepresentation: Array(der.suffix(32)))
    }

    /// A short fingerprint to name the key in reports: the first 16 hex digits of the SHA-256 of the raw key.
    public var fingerprint: String { String(Hex.encode(Digest.hash(.sha256, rawRepresentation)).prefix(16)) }
}

/// The body of one PEM block (RFC 7468) with `label`; surrounding text is allowed, as in OpenSSL.
enum PEM {
    static func body(of text: UnsafeRawBufferPointer, label: String) -> UnsafeRawBufferPointer? {
        let begin = Array("-----BEGIN \(label)-----".utf8), end = Array("-----END \(label)-----".utf8)
        guard let start = find(begin, in: text, from: 0) else { return nil }
        let bodyStart = start + begin.count
        guard let stop = find(end, in: text, from: bodyStart) else { return nil }
        var lower = bodyStart, upper = stop
        while lower < upper, text[lower] == 0x0A || text[lower] == 0x0D { lower += 1 }
        while upper > lower, text[upper - 1] == 0x0A || text[upper - 1] == 0x0D { upper -= 1 }
        return UnsafeRawBufferPointer(rebasing: text[lower..<upper])
    }

    private static func find(_ needle: [UInt8], in text: UnsafeRawBufferPointer, from: Int) -> Int? {
        guard text.count >= needle.count else { return nil }
        var index = from
        while index + needle.count <= text.count {
            if text[index] == needle[0], Array(text[index..<(index + needle.count)]) == needle { return index }
            index += 1
        }
        return nil
    }
}
