import KeyCustody

/// The CLI's exit codes, so scripts can tell failures apart. Documented in the README.
public enum ExitStatus: Int32, Sendable, CaseIterable {
    case success = 0
    /// Anything not listed below (I/O, an internal error).
    case failure = 1
    /// Wrong passphrase, or no passphrase available.
    case passphrase = 2
    /// The data does not verify: tampered, truncated, extended, wrong context, or wrong key.
    case integrity = 3
    /// The keyring belongs to another force than the file or command.
    case wrongForce = 4
    /// Another writer holds the keyring lock.
    case locked = 5
    /// Malformed input: a keyring, header, id or configuration that cannot be parsed.
    case malformed = 6
    /// A key is unknown, destroyed or in the wrong state for the operation.
    case keyState = 7
    /// The output file exists already.
    case exists = 8
    /// The vault refused for now (HTTP 503: its audit trail cannot be written), or gave no answer at all (the
    /// message names the URL tried). Retry later.
    case unavailable = 12
    /// The extract was crypto-shredded (HTTP 410); the message names its destruction certificate.
    case gone = 13
    /// The command line itself is wrong.
    case usage = 64

    public static func forError(_ error: any Error) -> ExitStatus {
        if let error = error as? VaultError {
            switch error.code {
            case .integrityFailure, .truncated, .keyCommitmentMismatch, .auditChainBroken: return .integrity
            case .malformedHeader, .malformedAudit, .invalidParameter: return .malformed
            case .wrongForce: return .wrongForce
            case .alreadyExists: return .exists
            case .malformedCertificate: return .malformed
            case .shredded: return .gone
            default: return .failure
            }
        }
        if let error = error as? CustodyError {
            switch error.code {
            case .wrongPassphrase, .passphraseUnavailable, .wrongPIN, .pinLocked: return .passphrase
            case .contextMismatch, .authenticationFailure: return .integrity
            case .wrongForce: return .wrongForce
            case .keyringLocked: return .locked
            case .keyringMalformed, .keyringInconsistent, .malformedEncoding, .malformedWrappedKey,
                .invalidIdentifier, .invalidConfiguration:
                return .malformed
            case .unknownKey, .keyDestroyed, .keyStateConflict, .purposeRefused, .readOnly, .keyObjectMissing,
                 .keyObjectUntrusted:
                return .keyState
            case .alreadyExists: return .exists
            default: return .failure
            }
        }
        return .failure
    }
}
