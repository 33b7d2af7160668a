import KeyCustody

/// How vault errors appear over HTTP: a status and the JSON body `{"error":{"code":"...","message":"..."}}`.
/// Messages never contain secrets (no error type of the vault carries one). Errors with no meaning for a client
/// are answered with a bare 500 and logged.
public struct HTTPErrorDescription: Sendable, Equatable {
    public let status: Int
    public let code: String
    public let message: String
    public let details: [String: String]

    public init(status: Int, code: String, message: String, details: [String: String] = [:]) {
        self.status = status
        self.code = code
        self.message = message
        self.details = details
    }

    public var json: JSONValue {
        var members: [String: JSONValue] = details.mapValues { .string($0) }
        members["code"] = .string(code)
        members["message"] = .string(message)
        return .object(["error": .object(members)])
    }

    /// The status for an error thrown by the vault libraries; nil for errors that must not reach a client (answered
    /// with a bare 500 and logged). Every code is decided here case by case, with no default: a new code does not
    /// compile until someone says what a client sees for it.
    public static func from(_ error: any Error) -> HTTPErrorDescription? {
        if let error = error as? VaultError {
            guard let status = status(of: error.code) else { return nil }
            switch error.code {
            case .alreadyExists:
                // The server's own file paths are not the client's business.
                return HTTPErrorDescription(status: status, code: error.code.rawValue,
                                            message: "the extract exists already")
            case .blobStoreUnavailable, .blobStoreDenied:
                // The S3 bucket's name, endpoint and S3's own words stay in vaultd's log.
                return HTTPErrorDescription(status: status, code: error.code.rawValue,
                                            message: "the blob store cannot be used right now; nothing was changed, "
                                                + "try again later")
            default:
                return HTTPErrorDescription(status: status, code: error.code.rawValue, message: error.message,
                                            details: error.details)
            }
        }
        if let error = error as? CustodyError {
            guard let status = status(of: error.code) else { return nil }
            let message = error.code == .custodyRefused
                ? error.message + (error.underlying.map { " (\($0))" } ?? "") : error.message
            return HTTPErrorDescription(status: status, code: error.code.rawValue, message: message)
        }
        return nil
    }

    /// The HTTP status of each vault code; nil for the internal ones.
    public static func status(of code: VaultError.Code) -> Int? {
        switch code {
        case .otherForce, .roleRequired, .useCaseRequired, .noSuchUseCase, .useCaseRevoked, .notNamed,
            .outsideValidityWindow, .datasetNotCovered, .archivedExtract, .selfApproval, .duplicateApproval, .noGrant,
            .grantExpired, .approvalPending, .custodyRefused, .signedRequestRequired, .signedRequestInvalid,
            .signedRequestExpired, .signedRequestReplayed, .signedRequestMismatch, .witnessAlarm, .purposeNotServed:
            return 403
        case .notFound: return 404
        case .alreadyExists, .duplicateExtract, .conflict, .keyInUse, .onHold, .staleArchival, .managedByForceCustody,
            .sizeMismatch, .witnessRefused:
            return 409
        case .shredded: return 410
        case .malformedHeader, .truncated, .integrityFailure, .keyCommitmentMismatch, .wrongForce, .invalidParameter,
            .malformedAudit, .malformedCertificate:
            return 400
        case .catalogUnavailable, .auditUnavailable, .blobStoreUnavailable, .blobStoreDenied: return 503
        // The server's own trouble: logged, answered with a bare 500.
        case .io, .leaseLost, .auditChainBroken: return nil
        // Only a client raises it, about what a server sent.
        case .malformedResponse: return nil
        }
    }

    /// The HTTP status of each custody code; nil for the internal ones (the server's own custody files and
    /// libraries, which a client can neither cause nor fix).
    public static func status(of code: CustodyError.Code) -> Int? {
        switch code {
        // A sealed upload whose wrapped key or header does not open under this force's custody.
        case .invalidIdentifier, .malformedEncoding, .malformedWrappedKey, .contextMismatch, .unknownKey,
            .keyDestroyed:
            return 400
        case .keyStateConflict: return 409
        // The force's HSM cannot be used right now: nothing was changed; retry when it is back.
        case .tokenUnavailable, .hsmFailure, .moduleUnavailable, .wrongPIN, .pinLocked: return 503
        // The force's custody service is down or stalled: only that force's operations wait for it.
        case .custodyUnavailable: return 503
        case .custodyRefused: return 403
        case .custodyProtocolError: return 502
        case .keyObjectMissing, .keyObjectUntrusted: return 500
        case .authenticationFailure, .invalidParameter, .cryptoLibraryFailure, .invalidConfiguration,
            .passphraseUnavailable, .wrongPassphrase, .keyringMalformed, .keyringInconsistent, .wrongForce,
            .keyringLocked, .readOnly, .alreadyExists, .io, .notDurable, .purposeRefused, .unsupportedBackend:
            return nil
        }
    }
}

/// One byte range of an HTTP `Range` header (RFC 9110 section 14.1.2): `bytes=a-b`, `bytes=a-` or `bytes=-n`.
public enum ByteRange: Equatable, Sendable {
    case closed(UInt64, UInt64)
    case from(UInt64)
    case suffix(UInt64)

    /// Parses a single-range header; nil for anything else (several ranges, other units, bad numbers).
    public static func parse(_ header: String) -> ByteRange? {
        guard header.hasPrefix("bytes="), header.utf8.count <= 100 else { return nil }
        let spec = header.dropFirst(6)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { return nil }
        let first = spec[..<dash]
        let last = spec[spec.index(after: dash)...]
        func number(_ text: Substring) -> UInt64? {
            guard !text.isEmpty, text.utf8.count <= 19, text.utf8.allSatisfy({ (48...57).contains($0) }) else {
                return nil
            }
            return UInt64(text)
        }
        switch (first.isEmpty, last.isEmpty) {
        case (false, false):
            guard let a = number(first), let b = number(last), a <= b else { return nil }
            return .closed(a, b)
        case (false, true):
            return number(first).map { .from($0) }
        case (true, false):
            guard let n = number(last), n > 0 else { return nil }
            return .suffix(n)
        case (true, true):
            return nil
        }
    }

    /// The byte positions selected in a body of `size` bytes; nil when unsatisfiable (answer 416).
    public func resolve(size: UInt64) -> Range<UInt64>? {
        switch self {
        case .closed(let a, let b):
            guard a < size else { return nil }
            return a..<min(b + 1, size)
        case .from(let a):
            guard a < size else { return nil }
            return a..<size
        case .suffix(let n):
            guard size > 0 else { return nil }
            return (size - min(n, size))..<size
        }
    }
}
