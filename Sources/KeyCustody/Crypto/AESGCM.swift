internal import COpenSSLCrypto

/// AES-GCM from libcrypto with a 16-byte tag. The vault uses AES-256 with 96-bit nonces everywhere; AES-128/192 and
/// other nonce lengths (1 to 128 bytes, OpenSSL's limit) are accepted so the primitive can be checked against the
/// Wycheproof vectors.
///
/// A context owns one `EVP_CIPHER_CTX` with the key schedule already expanded, so a stream of chunks under one key
/// (Cobblestone) pays for the key set-up once. One context serves one direction and one thread at a time.
public final class AESGCMContext {
    public enum Direction: Sendable { case seal, open }

    public static let tagByteCount = 16
    /// OpenSSL 3 holds at most a 1024-bit GCM IV.
    public static let maximumNonceByteCount = 128

    private let context: OpaquePointer
    public let direction: Direction
    private var nonceByteCount = 12

    public init(key: SecureBytes, direction: Direction) throws {
        let cipher: OpaquePointer
        switch key.count {
        case 16: cipher = EVP_aes_128_gcm()
        case 24: cipher = EVP_aes_192_gcm()
        case 32: cipher = EVP_aes_256_gcm()
        default:
            throw CustodyError(.invalidParameter, "AES-GCM key must be 16, 24 or 32 bytes, not \(key.count)")
        }
        guard let context = EVP_CIPHER_CTX_new() else { throw OpenSSLError.failure("EVP_CIPHER_CTX_new") }
        self.context = context
        self.direction = direction
        let ok = key.withUnsafeBytes { keyBytes in
            EVP_CipherInit_ex(context, cipher, nil, keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), nil,
                              direction == .seal ? 1 : 0) == 1
        }
        guard ok else { throw OpenSSLError.failure("AES-GCM key set-up") }
    }

    /// EVP_CIPHER_CTX_free cleanses the key schedule.
    deinit { EVP_CIPHER_CTX_free(context) }

    private func start(nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer) throws {
        guard nonce.count > 0, let nonceBase = nonce.baseAddress else {
            throw CustodyError(.invalidParameter, "AES-GCM nonce must not be empty")
        }
        guard nonce.count <= Self.maximumNonceByteCount else {
            throw CustodyError(.invalidParameter,
                               "AES-GCM nonce of \(nonce.count) bytes exceeds \(Self.maximumNonceByteCount) bytes")
        }
        if nonce.count != nonceByteCount {
            guard EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_IVLEN, Int32(nonce.count), nil) == 1 else {
                OpenSSLError.clear()
                throw CustodyError(.invalidParameter, "AES-GCM nonce of \(nonce.count) bytes is not supported")
            }
            nonceByteCount = nonce.count
        }
        guard EVP_CipherInit_ex(context, nil, nil, nil, nonceBase.assumingMemoryBound(to: UInt8.self), -1) == 1 else {
            throw OpenSSLError.failure("AES-GCM nonce set-up")
        }
        if aad.count > 0 {
            var written: Int32 = 0
            guard aad.count <= Int(Int32.max),
                EVP_CipherUpdate(context, nil, &written, aad.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                 Int32(aad.count)) == 1
            else { throw OpenSSLError.failure("AES-GCM associated data") }
        }
    }

    /// Encrypts `plaintext` into `ciphertext` (same length) and writes the 16-byte tag to `tag`.
    public func seal(
        nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
        ciphertext: UnsafeMutableRawPointer, tag: UnsafeMutableRawPointer
    ) throws {
        precondition(direction == .seal, "AESGCMContext opened for decryption used to seal")
        precondition(plaintext.count <= Int(Int32.max), "AES-GCM input too large for one call")
        try start(nonce: nonce, aad: aad)
        var written: Int32 = 0
        let out = ciphertext.assumingMemoryBound(to: UInt8.self)
        if plaintext.count > 0 {
            guard EVP_CipherUpdate(context, out, &written,
                                   plaintext.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                   Int32(plaintext.count)) == 1
            else { throw OpenSSLError.failure("AES-GCM encryption") }
        }
        var finalWritten: Int32 = 0
        guard EVP_CipherFinal_ex(context, out.advanced(by: Int(written)), &finalWritten) == 1,
            EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(Self.tagByteCount), tag) == 1
        else { throw OpenSSLError.failure("AES-GCM finalisation") }
    }

    /// Decrypts `ciphertext` into `plaintext` (same length) and checks `tag`.
    ///
    /// On `.authenticationFailure` the output buffer holds unauthenticated bytes: the caller must discard it.
    public func open(
        nonce: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer,
        tag: UnsafeRawBufferPointer, plaintext: UnsafeMutableRawPointer
    ) throws {
        precondition(direction == .open, "AESGCMContext opened for encryption used to open")
        precondition(ciphertext.count <= Int(Int32.max), "AES-GCM input too large for one call")
        guard tag.count == Self.tagByteCount else {
            throw CustodyError(.authenticationFailure, "AES-GCM tag must be \(Self.tagByteCount) bytes")
        }
        try start(nonce: nonce, aad: aad)
        var written: Int32 = 0
        let out = plaintext.assumingMemoryBound(to: UInt8.self)
        if ciphertext.count > 0 {
            guard EVP_CipherUpdate(context, out, &written,
                                   ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                   Int32(ciphertext.count)) == 1
            else { throw OpenSSLError.failure("AES-GCM decryption") }
        }
        guard EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(Self.tagByteCount),
                                  UnsafeMutableRawPointer(mutating: tag.baseAddress!)) == 1
        else { throw OpenSSLError.failure("AES-GCM tag set-up") }
        var finalWritten: Int32 = 0
        guard EVP_CipherFinal_ex(context, out.advanced(by: Int(written)), &finalWritten) == 1 else {
            OpenSSLError.clear()
            throw CustodyError(.authenticationFailure, "AES-GCM authentication failed")
        }
    }
}

/// One-shot AES-GCM on small inputs (wrapped keys).
public enum AESGCM {
    /// Encrypts `plaintext`; returns the ciphertext and the 16-byte tag.
    public static func seal(
        key: SecureBytes, nonce: [UInt8], plaintext: UnsafeRawBufferPointer, aad: [UInt8]
    ) throws -> (ciphertext: [UInt8], tag: [UInt8]) {
        let context = try AESGCMContext(key: key, direction: .seal)
        // One extra byte keeps the output pointer valid for an empty plaintext.
        var ciphertext = [UInt8](repeating: 0, count: plaintext.count + 1)
        var tag = [UInt8](repeating: 0, count: AESGCMContext.tagByteCount)
        try nonce.withUnsafeBytes { n in
            try aad.withUnsafeBytes { a in
                try ciphertext.withUnsafeMutableBytes { c in
                    try tag.withUnsafeMutableBytes { t in
                        try context.seal(nonce: n, aad: a, plaintext: plaintext, ciphertext: c.baseAddress!,
                                         tag: t.baseAddress!)
                    }
                }
            }
        }
        ciphertext.removeLast()
        return (ciphertext, tag)
    }

    /// Decrypts and authenticates; the plaintext lands in secure memory (it is usually a key) and is wiped if the
    /// tag does not verify.
    public static func open(
        key: SecureBytes, nonce: [UInt8], ciphertext: [UInt8], tag: [UInt8], aad: [UInt8]
    ) throws -> SecureBytes {
        let context = try AESGCMContext(key: key, direction: .open)
        return try SecureBytes(count: ciphertext.count) { out in
            try nonce.withUnsafeBytes { n in
                try aad.withUnsafeBytes { a in
                    try ciphertext.withUnsafeBytes { c in
                        try tag.withUnsafeBytes { t in
                            try context.open(nonce: n, aad: a, ciphertext: c, tag: t, plaintext: out.baseAddress!)
                        }
                    }
                }
            }
        }
    }
}
