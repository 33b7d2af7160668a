import KeyCustody

/// The one error type of the `Vault` module. Equality compares the code only; messages never hold key material,
/// passphrases, tokens or payload bytes.
public struct VaultError: Error, Equatable, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// A chunk, tag or hash did not verify: the ciphertext was altered or belongs elsewhere.
        public static let integrityFailure = Code("integrity_failure")
        /// The ciphertext's length is impossible: cut short, or extended.
        public static let truncated = Code("truncated")
        /// The key commitment does not match: wrong key, or wrong force/dataset/extract context.
        public static let keyCommitmentMismatch = Code("key_commitment_mismatch")
        /// A sealed file's header is missing, not canonical JSON, or inconsistent.
        public static let malformedHeader = Code("malformed_header")
        /// The sealed file belongs to another force than the keyring offered.
        public static let wrongForce = Code("wrong_force")
        /// A parameter is outside what the format allows (key size, message size).
        public static let invalidParameter = Code("invalid_parameter")
        /// Reading or writing a file failed.
        public static let io = Code("io")
        /// An output file already exists and would be overwritten.
        public static let alreadyExists = Code("already_exists")
    }

    public let code: Code
    public let message: String
    public let underlying: String?
    /// Extra facts for the client (the certificate id of a shredded extract), shown in the JSON error beside the
    /// code and message. Never secrets.
    public let details: [String: String]
    public let file: String
    public let line: Int

    public init(_ code: Code, _ message: String, underlying: String? = nil, details: [String: String] = [:],
                file: String = #fileID, line: Int = #line)
    {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.details = details
        self.file = file
        self.line = line
    }

    public var description: String {
        if let underlying { return "\(message) (\(underlying))" }
        return message
    }

    public static func == (lhs: VaultError, rhs: VaultError) -> Bool { lhs.code == rhs.code }
}
