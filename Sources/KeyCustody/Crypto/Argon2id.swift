internal import CSodium

/// Argon2id v1.3 password hashing (libsodium `crypto_pwhash`), which turns a keyring passphrase into its sealing key.
public enum Argon2id {
    public static let saltByteCount = 16

    /// Cost parameters as stored in a keyring's `kdf` object.
    public struct Parameters: Sendable, Equatable {
        public var opslimit: UInt64
        public var memlimit: UInt64

        public init(opslimit: UInt64, memlimit: UInt64) {
            self.opslimit = opslimit
            self.memlimit = memlimit
        }

        /// libsodium's "moderate" profile: 3 passes over 256 MiB, the default for new keyrings.
        public static let moderate = Parameters(opslimit: 3, memlimit: 268_435_456)
        /// libsodium's "interactive" profile: 2 passes over 64 MiB (faster; for tests and short-lived keyrings).
        public static let interactive = Parameters(opslimit: 2, memlimit: 67_108_864)
        /// libsodium's "sensitive" profile: 4 passes over 1 GiB.
        public static let sensitive = Parameters(opslimit: 4, memlimit: 1_073_741_824)

        /// Upper bounds the vault accepts from a file, so an edited keyring cannot make an opener hang or exhaust
        /// memory.
        public static let maximumOpslimit: UInt64 = 64
        public static let maximumMemlimit: UInt64 = 4 << 30

        /// Checks the parameters against libsodium's limits and the vault's upper bounds.
        public func validate() throws {
            _ = Sodium.ready
            let minOps = UInt64(crypto_pwhash_opslimit_min())
            let minMem = UInt64(crypto_pwhash_memlimit_min())
            guard opslimit >= minOps, opslimit <= Self.maximumOpslimit else {
                throw CustodyError(.invalidParameter,
                                   "Argon2id opslimit \(opslimit) is outside \(minOps)...\(Self.maximumOpslimit)")
            }
            guard memlimit >= minMem, memlimit <= Self.maximumMemlimit else {
                throw CustodyError(.invalidParameter,
                                   "Argon2id memlimit \(memlimit) is outside \(minMem)...\(Self.maximumMemlimit)")
            }
        }
    }

    /// Derives `outputByteCount` bytes from `passphrase` and `salt`.
    public static func deriveKey(
        passphrase: SecureBytes, salt: [UInt8], parameters: Parameters, outputByteCount: Int = 32
    ) throws -> SecureBytes {
        _ = Sodium.ready
        try parameters.validate()
        guard salt.count == saltByteCount else {
            throw CustodyError(.invalidParameter, "Argon2id salt must be \(saltByteCount) bytes")
        }
        return try SecureBytes(count: outputByteCount) { out in
            let status = passphrase.withUnsafeBytes { p in
                crypto_pwhash(
                    out.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(outputByteCount),
                    p.baseAddress!.assumingMemoryBound(to: CChar.self), UInt64(p.count), salt,
                    parameters.opslimit, Int(parameters.memlimit), crypto_pwhash_ALG_ARGON2ID13)
            }
            guard status == 0 else {
                throw CustodyError(.cryptoLibraryFailure,
                                   "Argon2id failed (not enough memory for memlimit \(parameters.memlimit)?)")
            }
        }
    }
}
