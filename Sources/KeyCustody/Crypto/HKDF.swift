internal import COpenSSLCrypto

/// HKDF (RFC 5869) from libcrypto.
///
/// Cobblestone-256 uses `expand` only (its input key is already uniformly random); `deriveKey` runs the full
/// extract-then-expand and is here for completeness and for the Wycheproof known-answer tests.
public enum HKDF {
    /// HKDF-Expand of a pseudorandom key. Fails for an output longer than 255 × the hash length.
    public static func expand(
        _ function: HashFunction, pseudoRandomKey: SecureBytes, info: [UInt8], outputByteCount: Int
    ) throws -> SecureBytes {
        try derive(function, mode: vault_hkdf_mode_expand_only(), salt: [], key: pseudoRandomKey, info: info,
                   outputByteCount: outputByteCount)
    }

    /// HKDF-Extract followed by HKDF-Expand.
    public static func deriveKey(
        _ function: HashFunction, inputKeyMaterial: SecureBytes, salt: [UInt8], info: [UInt8], outputByteCount: Int
    ) throws -> SecureBytes {
        try derive(function, mode: vault_hkdf_mode_extract_and_expand(), salt: salt, key: inputKeyMaterial,
                   info: info, outputByteCount: outputByteCount)
    }

    private static func derive(
        _ function: HashFunction, mode: Int32, salt: [UInt8], key: SecureBytes, info: [UInt8], outputByteCount: Int
    ) throws -> SecureBytes {
        guard outputByteCount > 0, outputByteCount <= 255 * function.byteCount else {
            throw CustodyError(
                .invalidParameter,
                "HKDF output of \(outputByteCount) bytes is outside 1...\(255 * function.byteCount)")
        }
        var ok = false
        let output = SecureBytes(count: outputByteCount) { out in
            ok = key.withUnsafeBytes { keyBytes in
                salt.withUnsafeBytes { saltBytes in
                    info.withUnsafeBytes { infoBytes in
                        vault_hkdf(
                            function.evp, mode,
                            saltBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), saltBytes.count,
                            keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), keyBytes.count,
                            infoBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), infoBytes.count,
                            out.baseAddress?.assumingMemoryBound(to: UInt8.self), out.count) == 1
                    }
                }
            }
        }
        guard ok else { throw OpenSSLError.failure("HKDF") }
        return output
    }
}
