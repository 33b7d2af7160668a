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

    /// The status for an error thrown by the vault libraries; nil for errors that must not reach a client.
    public static func from(_ error: any Error) -> HTTPErrorDescription? {
        if let error = error as? VaultError {
            let status: Int
            switch error.code {
            case _ where VaultError.Code.denials.contains(error.code): status = 403
            case .notFound: status = 404
            case .alreadyExists:
                // The server's own file paths are not the client's business.
                return HTTPErrorDescription(status: 409, code: error.code.rawValue, message: "the extract exists already")
            case .duplicateExtract, .conflict, .keyInUse, .onHold, .staleArchival, .managedByForceCustody,
                .sizeMismatch, .witnessRefused:
                status = 409
            case .shredded: status = 410
            case .malformedHeader, .truncated, .integrityFailure, .keyCommitmentMismatch, .wrongForce,
                .invalidParameter, .malformedAudit, .malformedCertificate:
                status = 400
            case .catalogUnavailable, .auditUnavailable: status = 503
            case .blobStoreUnavailable, .blobStoreDenied:
                // The S3 bucket's name, endpoint and S3's own words stay in vaultd's log.
                return HTTPErrorDescription(status: 503, code: error.code.rawValue,
                                            message: "the blob store cannot be used right now; nothing was changed, "
                                                + "try again later")
            default: return nil
            }
            return HTTPErrorDescription(status: status, code: error.code.rawValue, message: error.message,
                                        details: error.details)
        }
        if let error = error as? CustodyError {
            switch error.code {
            case .invalidIdentifier, .malformedEncoding, .malformedWrappedKey:
                return HTTPErrorDescription(status: 400, code: error.code.rawValue, message: error.message)
            case .keyStateConflict:
                return HTTPErrorDescription(status: 409, code: error.code.rawValue, message: error.message)
            case .contextMismatch, .unknownKey, .keyDestroyed:
                // A sealed upload whose wrapped key does not open under this force's custody.
                return HTTPErrorDescription(status: 400, code: error.code.rawValue, message: error.message)
            case .tokenUnavailable, .hsmFailure, .moduleUnavailable, .wrongPIN, .pinLocked:
                // The force's HSM cannot be used right now: nothing was changed; retry when it is back.
                return HTTPErrorDescription(status: 503, code: error.code.rawValue, message: error.message)
            case .keyObjectMissing:
                return HTTPErrorDescription(status: 500, code: error.code.rawValue, message: error.message)
            case .custodyUnavailable:
                // The force's custody service is down or stalled: only that force's operations wait for it.
                return HTTPErrorDescription(status: 503, code: error.code.rawValue, message: error.message)
            case .custodyRefused:
                return HTTPErrorDescription(status: 403, code: error.code.rawValue,
                                            message: error.message + (error.underlying.map { " (\($0))" } ?? ""))
            case .custodyProtocolError:
                return HTTPErrorDescription(status: 502, code: error.code.rawValue, message: error.message)

            default:
                return nil
            }
        }
        return nil
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
