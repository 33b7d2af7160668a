internal import COpenSSLCrypto

/// The hash functions the vault uses, all from libcrypto.
public enum HashFunction: Sendable {
    case sha256
    case sha512

    /// Output length in bytes.
    public var byteCount: Int {
        switch self {
        case .sha256: 32
        case .sha512: 64
        }
    }

    var evp: OpaquePointer {
        switch self {
        case .sha256: EVP_sha256()
        case .sha512: EVP_sha512()
        }
    }
}

/// An incremental hash (SHA-256 or SHA-512) over data that arrives in pieces.
///
/// Owns an `EVP_MD_CTX`, freed on deinit. Not thread-safe: one stream, one owner.
public final class Digest {
    private let context: OpaquePointer
    public let function: HashFunction
    private var finished = false

    public init(_ function: HashFunction) {
        guard let context = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        guard EVP_DigestInit_ex(context, function.evp, nil) == 1 else {
            fatalError("EVP_DigestInit_ex failed: \(OpenSSLError.lastErrorDescription())")
        }
        self.context = context
        self.function = function
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "Digest used after finalize()")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        guard EVP_DigestUpdate(context, base, bytes.count) == 1 else {
            fatalError("EVP_DigestUpdate failed: \(OpenSSLError.lastErrorDescription())")
        }
    }

    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The digest of everything passed to `update`. The object cannot be used afterwards.
    public func finalize() -> [UInt8] {
        precondition(!finished, "Digest finalized twice")
        finished = true
        var output = [UInt8](repeating: 0, count: function.byteCount)
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(context, &output, &length) == 1, Int(length) == function.byteCount else {
            fatalError("EVP_DigestFinal_ex failed: \(OpenSSLError.lastErrorDescription())")
        }
        return output
    }

    /// One-shot hash of `bytes`.
    public static func hash(_ function: HashFunction, _ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let digest = Digest(function)
        digest.update(bytes)
        return digest.finalize()
    }

    public static func hash(_ function: HashFunction, _ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { hash(function, $0) }
    }
}

/// HMAC (RFC 2104) over SHA-256 or SHA-512, from libcrypto.
public enum HMAC {
    /// The full-length authentication code of `message` under `key`.
    public static func authenticationCode(
        _ function: HashFunction, key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer
    ) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: function.byteCount)
        var length: UInt32 = 0
        // HMAC() wants non-NULL pointers even for empty inputs.
        let empty: UInt8 = 0
        let ok = withUnsafePointer(to: empty) { emptyPointer -> Bool in
            let keyBase = key.baseAddress ?? UnsafeRawPointer(emptyPointer)
            let messageBase = message.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? emptyPointer
            return output.withUnsafeMutableBufferPointer { out in
                COpenSSLCrypto.HMAC(function.evp, keyBase, Int32(key.count), messageBase, message.count,
                     out.baseAddress, &length) != nil
            }
        }
        guard ok, Int(length) == function.byteCount else {
            fatalError("HMAC failed: \(OpenSSLError.lastErrorDescription())")
        }
        return output
    }

    public static func authenticationCode(_ function: HashFunction, key: SecureBytes, message: [UInt8]) -> [UInt8] {
        key.withUnsafeBytes { k in message.withUnsafeBytes { authenticationCode(function, key: k, message: $0) } }
    }

    /// Checks `tag` in constant time. A tag shorter than the full output is accepted only when the caller states
    /// the truncated length it expects (`truncatedTo`), which must be at least 16 bytes.
    public static func isValid(
        _ tag: [UInt8], _ function: HashFunction, key: UnsafeRawBufferPointer, message: UnsafeRawBufferPointer,
        truncatedTo expectedLength: Int? = nil
    ) -> Bool {
        let length = expectedLength ?? function.byteCount
        guard length >= 16, length <= function.byteCount, tag.count == length else { return false }
        let full = authenticationCode(function, key: key, message: message)
        return constantTimeEquals(Array(full.prefix(length)), tag)
    }
}
