/// The one error type of the `KeyCustody` module.
///
/// Equality compares the code only, so callers match on what went wrong, not on the wording. The message never
/// holds key material, a passphrase or a PIN; the optional `underlying` keeps the native cause (an OpenSSL error
/// code, an `errno`, a PKCS#11 `CK_RV`) for diagnosis.
public struct CustodyError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What went wrong, stable across releases so scripts and callers can rely on it; declared here and nowhere
    /// else, and mapped to HTTP case by case (no default) by the vault's `HTTPErrorDescription`.
    public enum Code: String, Sendable, CaseIterable, CustomStringConvertible {
        public var description: String { rawValue }

        // Crypto
        /// An AEAD tag, MAC or signature did not verify.
        case authenticationFailure = "authentication_failure"
        /// A key, nonce, size or parameter is outside what the primitive accepts.
        case invalidParameter = "invalid_parameter"
        /// The crypto library itself failed (allocation, internal error).
        case cryptoLibraryFailure = "crypto_library_failure"
        /// Bytes that should be base64, hex or JSON are not.
        case malformedEncoding = "malformed_encoding"

        // Identifiers and configuration
        /// An id (force, dataset, extract, KEK) does not match DESIGN section 5.
        case invalidIdentifier = "invalid_identifier"
        /// The custody configuration file is missing, unreadable or invalid.
        case invalidConfiguration = "invalid_configuration"
        /// No passphrase or PIN could be obtained from the configured source.
        case passphraseUnavailable = "passphrase_unavailable"

        // Keyring
        /// The passphrase does not open the keyring (or its sealed part was altered).
        case wrongPassphrase = "wrong_passphrase"
        /// The keyring file is truncated, not JSON, or not a `vault-keyring-v1` document.
        case keyringMalformed = "keyring_malformed"
        /// The keyring opened but its contents break an invariant (e.g. two active master keys).
        case keyringInconsistent = "keyring_inconsistent"
        /// The keyring belongs to another force than the one expected.
        case wrongForce = "wrong_force"
        /// Another process holds the keyring's writer lock.
        case keyringLocked = "keyring_locked"
        /// The keyring was opened read-only and a write was asked for.
        case readOnly = "read_only"
        /// A file already exists where a new keyring would be created.
        case alreadyExists = "already_exists"
        /// Reading or writing a custody file failed.
        case io
        /// A file was replaced but its directory could not be synced: the change is visible, its durability across
        /// a power loss is not guaranteed.
        case notDurable = "not_durable"

        // Keys
        /// No key with this KEK id is held by this custody.
        case unknownKey = "unknown_key"
        /// The KEK exists but was destroyed: whatever it wrapped is gone.
        case keyDestroyed = "key_destroyed"
        /// The KEK is in a state that does not allow the operation (e.g. wrapping under a retiring key).
        case keyStateConflict = "key_state_conflict"
        /// The wrapped key does not authenticate under this context: wrong force, dataset or extract, or altered.
        case contextMismatch = "context_mismatch"
        /// The justification's purpose is not allowed for this key or operation.
        case purposeRefused = "purpose_refused"
        /// The wrapped key object itself is malformed (alg, iv or ct sizes).
        case malformedWrappedKey = "malformed_wrapped_key"
        /// The custody backend named in the configuration is not available in this build.
        case unsupportedBackend = "unsupported_backend"

        // PKCS#11 tokens
        /// The PKCS#11 module (the vendor's shared library) is missing or cannot be loaded.
        case moduleUnavailable = "pkcs11_module_unavailable"
        /// The token refused the user PIN.
        case wrongPIN = "wrong_pin"
        /// The token's user PIN is locked (too many wrong attempts) or expired.
        case pinLocked = "pin_locked"
        /// The token is not present, was removed, or the session with it was lost and could not be re-established.
        case tokenUnavailable = "token_unavailable"
        /// A key the vault holds on the token is no longer there (deleted outside the vault).
        case keyObjectMissing = "key_object_missing"
        /// A key object on the token under a vault key's label was not generated there as a key that never leaves
        /// it (`CKA_LOCAL`, `CKA_SENSITIVE`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`, not `CKA_EXTRACTABLE`):
        /// someone may hold a copy of it, so the vault neither adopts nor uses it.
        case keyObjectUntrusted = "key_object_untrusted"
        /// The token failed in a way it does not explain (`CKR_GENERAL_ERROR`, `CKR_FUNCTION_FAILED`, ...).
        case hsmFailure = "hsm_failure"

        // Remote custody (DESIGN 6.3)
        /// The force's custody service cannot be reached, timed out, or said it cannot serve right now.
        case custodyUnavailable = "custody_unavailable"
        /// The force's custody service refused the request (its own rules: use case, signed request, approvals,
        /// a witness alarm). `underlying` carries the service's own error code.
        case custodyRefused = "custody_refused"
        /// The force's custody service answered something that is not the protocol (a malformed or unexpected
        /// reply): nothing was done with it.
        case custodyProtocolError = "custody_protocol_error"
    }

    public let code: Code
    public let message: String
    /// The native cause, e.g. `"openssl:0x1C800064"` or `"errno:13"`. Never secret.
    public let underlying: String?
    public let file: String
    public let line: Int

    public init(
        _ code: Code, _ message: String, underlying: String? = nil,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.underlying = underlying
        self.file = file
        self.line = line
    }

    public var description: String {
        if let underlying { return "\(message) (\(underlying))" }
        return message
    }

    /// True for failures of the custody itself rather than of one key (a lost token, an I/O error): a batch stops
    /// and is retried later instead of setting keys aside as failed.
    public var isTransient: Bool {
        [.io, .notDurable, .tokenUnavailable, .hsmFailure, .moduleUnavailable, .wrongPIN, .pinLocked,
         .custodyUnavailable, .custodyProtocolError].contains(code)
    }

    public static func == (lhs: CustodyError, rhs: CustodyError) -> Bool { lhs.code == rhs.code }
}
