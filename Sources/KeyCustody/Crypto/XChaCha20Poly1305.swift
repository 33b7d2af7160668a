internal import CSodium

/// XChaCha20-Poly1305 (IETF construction, 24-byte nonce) from libsodium; seals keyring files (DESIGN 5.3).
public enum XChaCha20Poly1305 {
    public static let keyByteCount = 32
    public static let nonceByteCount = 24
    public static let tagByteCount = 16

    /// Encrypts `plaintext` and returns ciphertext || tag.
    public static func seal(
        key: SecureBytes, nonce: [UInt8], plaintext: UnsafeRawBufferPointer, aad: [UInt8]
    ) throws -> [UInt8] {
        _ = Sodium.ready
        try check(key: key, nonce: nonce)
        var output = [UInt8](repeating: 0, count: plaintext.count + tagByteCount)
        var outputLength: UInt64 = 0
        let status = key.withUnsafeBytes { k in
            aad.withUnsafeBytes { a in
                output.withUnsafeMutableBytes { o in
                    crypto_aead_xchacha20poly1305_ietf_encrypt(
                        o.baseAddress!.assumingMemoryBound(to: UInt8.self), &outputLength,
                        plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(plaintext.count),
                        a.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(a.count),
                        nil, nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
        guard status == 0, Int(outputLength) == output.count else {
            throw CustodyError(.cryptoLibraryFailure, "XChaCha20-Poly1305 encryption failed")
        }
        return output
    }

    /// Decrypts ciphertext || tag into secure memory (keyring plaintext holds keys).
    public static func open(key: SecureBytes, nonce: [UInt8], sealed: [UInt8], aad: [UInt8]) throws -> SecureBytes {
        _ = Sodium.ready
        try check(key: key, nonce: nonce)
        guard sealed.count >= tagByteCount else {
            throw CustodyError(.authenticationFailure, "XChaCha20-Poly1305 input is shorter than its tag")
        }
        return try SecureBytes(count: sealed.count - tagByteCount) { out in
            var outputLength: UInt64 = 0
            let status = key.withUnsafeBytes { k in
                aad.withUnsafeBytes { a in
                    sealed.withUnsafeBytes { c in
                        crypto_aead_xchacha20poly1305_ietf_decrypt(
                            out.baseAddress!.assumingMemoryBound(to: UInt8.self), &outputLength, nil,
                            c.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(c.count),
                            a.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(a.count),
                            nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
                    }
                }
            }
            guard status == 0 else {
                throw CustodyError(.authenticationFailure, "XChaCha20-Poly1305 authentication failed")
            }
        }
    }

    private static func check(key: SecureBytes, nonce: [UInt8]) throws {
        guard key.count == keyByteCount else {
            throw CustodyError(.invalidParameter, "XChaCha20-Poly1305 key must be \(keyByteCount) bytes")
        }
        guard nonce.count == nonceByteCount else {
            throw CustodyError(.invalidParameter, "XChaCha20-Poly1305 nonce must be \(nonceByteCount) bytes")
        }
    }
}
