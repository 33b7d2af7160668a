import KeyCustody

/// The outcome of an audited action.
public enum AuditOutcome: String, Sendable, CaseIterable {
    case allowed, denied, error
}

/// An audit record before it joins its force's chain: what happened, by whom, to what. The catalog gives it its
/// sequence number and `prev` hash in the transaction that makes the change it records.
///
/// Never holds key material, tokens, passphrases or payload data: ids, principals, use cases, outcomes, sizes and
/// request ids only.
public struct AuditEntry: Sendable, Equatable {
    public var force: ForceID
    public var time: UnixTime
    public var principal: String
    public var action: String
    public var target: String
    /// The dataset the action concerns, if any (indexed for searches; the record itself names it in `target`).
    public var dataset: DatasetID?
    public var useCase: String?
    public var outcome: AuditOutcome
    public var detail: [String: JSONValue]
    public var requestID: String

    public init(
        force: ForceID, time: UnixTime = currentUnixTime(), principal: String, action: String, target: String,
        dataset: DatasetID? = nil, useCase: String? = nil, outcome: AuditOutcome, detail: [String: JSONValue] = [:],
        requestID: String
    ) {
        self.force = force
        self.time = time
        self.principal = principal
        self.action = action
        self.target = target
        self.dataset = dataset
        self.useCase = useCase
        self.outcome = outcome
        self.detail = detail
        self.requestID = requestID
    }
}

/// One record of a force's audit chain (DESIGN 5.5): canonical JSON with exactly the fields `seq`, `time`, `force`,
/// `principal`, `action`, `target`, `use_case`, `outcome`, `detail` and `prev`. Its hash is the SHA-256 of its
/// canonical line (without the newline); the next record's `prev` is that hash, so editing, removing, inserting or
/// reordering any record breaks the chain.
public struct AuditRecord: Sendable, Equatable {
    /// The `prev` of a force's first record.
    public static let genesis = String(repeating: "0", count: 64)
    /// Far beyond any real chain; bounds arithmetic on sequence numbers read from untrusted exports.
    public static let maximumSeq: Int64 = 1 << 53
    static let fields: Set<String> = ["seq", "time", "force", "principal", "action", "target", "use_case", "outcome",
                                      "detail", "prev"]

    public let seq: Int64
    public let time: UnixTime
    public let force: ForceID
    public let principal: String
    public let action: String
    public let target: String
    public let useCase: String?
    public let outcome: AuditOutcome
    public let detail: [String: JSONValue]
    public let prev: String
    /// The canonical line (no newline) and its hex SHA-256.
    public let line: [UInt8]
    public let hash: String

    /// Chains `entry` after the record whose hash is `prev`. The request id goes into `detail.request_id`.
    public init(entry: AuditEntry, seq: Int64, time: UnixTime, prev: String) {
        var detail = entry.detail
        detail["request_id"] = .string(entry.requestID)
        self.seq = seq
        self.time = time
        self.force = entry.force
        self.principal = entry.principal
        self.action = entry.action
        self.target = entry.target
        self.useCase = entry.useCase
        self.outcome = entry.outcome
        self.detail = detail
        self.prev = prev
        line = JSONValue.object([
            "seq": .integer(seq), "time": .string(Timestamp.format(secondsSinceEpoch: Int(time))),
            "force": .string(entry.force.rawValue), "principal": .string(entry.principal),
            "action": .string(entry.action), "target": .string(entry.target),
            "use_case": entry.useCase.map { .string($0) } ?? .null, "outcome": .string(entry.outcome.rawValue),
            "detail": .object(detail), "prev": .string(prev),
        ]).canonicalBytes()
        hash = Self.hash(of: line)
    }

    /// Reads a record from its line, strictly: exactly the DESIGN 5.5 fields with their types, in canonical form (a
    /// re-encoding must give the same bytes, so one record has one spelling and one hash).
    public init(line: [UInt8]) throws {
        let value: JSONValue
        do { value = try JSONParser.parse(line) } catch let error as CustodyError {
            throw VaultError(.malformedAudit, "not JSON: \(error.message)", cause: error)
        }
        guard case .object(let members) = value else { throw VaultError(.malformedAudit, "not a JSON object") }
        let keys = Set(members.keys)
        if let extra = keys.subtracting(Self.fields).sorted().first {
            throw VaultError(.malformedAudit, "unexpected field \"\(extra)\"")
        }
        if let missing = Self.fields.subtracting(keys).sorted().first {
            throw VaultError(.malformedAudit, "field \"\(missing)\" is missing")
        }
        func string(_ key: String) throws -> String {
            guard let text = members[key]?.stringValue else {
                throw VaultError(.malformedAudit, "field \"\(key)\" must be a string")
            }
            return text
        }
        guard let seq = members["seq"]?.integerValue, (1...AuditRecord.maximumSeq).contains(seq) else {
            throw VaultError(.malformedAudit, "field \"seq\" must be an integer from 1 to \(AuditRecord.maximumSeq)")
        }
        guard let time = Timestamp.parse(try string("time")) else {
            throw VaultError(.malformedAudit, "field \"time\" must be an RFC 3339 UTC time")
        }
        guard let outcome = AuditOutcome(rawValue: try string("outcome")) else {
            throw VaultError(.malformedAudit, "field \"outcome\" must be allowed, denied or error")
        }
        guard case .object(let detail) = members["detail"]! else {
            throw VaultError(.malformedAudit, "field \"detail\" must be an object")
        }
        let useCase: String?
        switch members["use_case"]! {
        case .null: useCase = nil
        case .string(let text): useCase = text
        default: throw VaultError(.malformedAudit, "field \"use_case\" must be a string or null")
        }
        let prev = try string("prev")
        guard prev.utf8.count == 64, Hex.decode(prev) != nil, prev == prev.lowercased() else {
            throw VaultError(.malformedAudit, "field \"prev\" must be 64 lower-case hex digits")
        }
        let force: ForceID
        do { force = try ForceID(force: try string("force")) } catch let error as CustodyError {
            throw VaultError(.malformedAudit, error.message, cause: error)
        }
        guard value.canonicalBytes() == line else {
            throw VaultError(.malformedAudit, "not in canonical form (keys sorted, no extra whitespace)")
        }
        self.seq = seq
        self.time = UnixTime(time)
        self.force = force
        self.principal = try string("principal")
        self.action = try string("action")
        self.target = try string("target")
        self.useCase = useCase
        self.outcome = outcome
        self.detail = detail
        self.prev = prev
        self.line = line
        hash = Self.hash(of: line)
    }

    public static func hash(of line: [UInt8]) -> String { Hex.encode(Digest.hash(.sha256, line)) }

    public var requestID: String? { detail["request_id"]?.stringValue }
}

/// A signed statement that a force's chain had `hash` as the hash of record `seq` at `time` (DESIGN 5.5). The
/// signature is Ed25519 over the canonical JSON of `{"force","hash","seq","time"}`; in an export it is the line
/// `{"checkpoint":{...},"signature":"<b64>"}`.
public struct AuditCheckpoint: Sendable, Equatable {
    public let force: ForceID
    public let seq: Int64
    public let hash: String
    public let time: UnixTime
    public let signature: [UInt8]

    public init(force: ForceID, seq: Int64, hash: String, time: UnixTime, signature: [UInt8]) {
        self.force = force
        self.seq = seq
        self.hash = hash
        self.time = time
        self.signature = signature
    }

    /// The signed statement: `{"force","hash","seq","time"}`.
    static func body(force: ForceID, seq: Int64, hash: String, time: UnixTime) -> JSONValue {
        .object([
            "force": .string(force.rawValue), "seq": .integer(seq), "hash": .string(hash),
            "time": .string(Timestamp.format(secondsSinceEpoch: Int(time))),
        ])
    }

    /// The bytes the signature covers.
    public static func signedBytes(force: ForceID, seq: Int64, hash: String, time: UnixTime) -> [UInt8] {
        body(force: force, seq: seq, hash: hash, time: time).canonicalBytes()
    }

    public var signedBytes: [UInt8] { Self.signedBytes(force: force, seq: seq, hash: hash, time: time) }

    public var json: JSONValue {
        .object([
            "checkpoint": Self.body(force: force, seq: seq, hash: hash, time: time),
            "signature": .string(Base64.encode(signature)),
        ])
    }

    /// Reads a checkpoint line strictly (the signature is checked separately, by `AuditVerifier`).
    public init(json value: JSONValue) throws {
        guard case .object(let members) = value, Set(members.keys) == ["checkpoint", "signature"],
            case .object(let body) = members["checkpoint"]!, Set(body.keys) == ["force", "seq", "hash", "time"],
            let signatureText = members["signature"]?.stringValue, let signature = Base64.decode(signatureText),
            signature.count == Ed25519.signatureByteCount,
            let forceText = body["force"]?.stringValue, let force = try? ForceID(force: forceText),
            let seq = body["seq"]?.integerValue, (1...AuditRecord.maximumSeq).contains(seq),
            let hash = body["hash"]?.stringValue, hash.utf8.count == 64, Hex.decode(hash) != nil,
            let timeText = body["time"]?.stringValue, let time = Timestamp.parse(timeText)
        else {
            throw VaultError(.malformedAudit, "not a checkpoint: {\"checkpoint\":{force,hash,seq,time},\"signature\":b64}")
        }
        self.init(force: force, seq: seq, hash: hash, time: UnixTime(time), signature: signature)
    }
}

/// The first line of an audit export: which force, and which records it holds.
public struct AuditExportHeader: Sendable, Equatable {
    public static let format = "vault-audit-export-v1"
    public let force: ForceID
    /// The first and last sequence numbers in the export (`first > last` for an empty export).
    public let firstSeq: Int64
    public let lastSeq: Int64
    public let exportedAt: UnixTime
    /// The fingerprint of the audit public key that signed its checkpoints.
    public let keyFingerprint: String

    public init(force: ForceID, firstSeq: Int64, lastSeq: Int64, exportedAt: UnixTime, keyFingerprint: String) {
        self.force = force
        self.firstSeq = firstSeq
        self.lastSeq = lastSeq
        self.exportedAt = exportedAt
        self.keyFingerprint = keyFingerprint
    }

    public var json: JSONValue {
        .object([
            "format": .string(Self.format), "force": .string(force.rawValue), "first_seq": .integer(firstSeq),
            "last_seq": .integer(lastSeq), "exported_at": .string(Timestamp.format(secondsSinceEpoch: Int(exportedAt))),
            "key_fingerprint": .string(keyFingerprint),
        ])
    }

    public init(json value: JSONValue) throws {
        guard case .object(let members) = value, members["format"]?.stringValue == Self.format,
            let forceText = members["force"]?.stringValue, let force = try? ForceID(force: forceText),
            let first = members["first_seq"]?.integerValue, let last = members["last_seq"]?.integerValue,
            (1...AuditRecord.maximumSeq).contains(first), (first - 1...AuditRecord.maximumSeq).contains(last),
            let exportedText = members["exported_at"]?.stringValue, let exported = Timestamp.parse(exportedText),
            let fingerprint = members["key_fingerprint"]?.stringValue
        else { throw VaultError(.malformedAudit, "not a \(Self.format) header") }
        self.init(force: force, firstSeq: first, lastSeq: last, exportedAt: UnixTime(exported),
                  keyFingerprint: fingerprint)
    }
}

/// The signed last line of an audit export: which force, which records (first and last seq), what the first
/// record's `prev` and the last record's hash are, and when it was made. The Ed25519 signature covers the canonical
/// JSON of these fields with `"format":"vault-audit-export-v1"`, so nothing can be cut from either end of an export,
/// and a partial export (`--since`) is tied to the record before it.
public struct AuditExportSeal: Sendable, Equatable {
    public let force: ForceID
    public let firstSeq: Int64
    public let lastSeq: Int64
    public let firstPrev: String
    public let lastHash: String
    public let exportedAt: UnixTime
    public let signature: [UInt8]

    public init(force: ForceID, firstSeq: Int64, lastSeq: Int64, firstPrev: String, lastHash: String,
                exportedAt: UnixTime, signature: [UInt8]) {
        self.force = force
        self.firstSeq = firstSeq
        self.lastSeq = lastSeq
        self.firstPrev = firstPrev
        self.lastHash = lastHash
        self.exportedAt = exportedAt
        self.signature = signature
    }

    static func body(force: ForceID, firstSeq: Int64, lastSeq: Int64, firstPrev: String, lastHash: String,
                     exportedAt: UnixTime) -> JSONValue {
        .object([
            "format": .string(AuditExportHeader.format), "force": .string(force.rawValue),
            "first_seq": .integer(firstSeq), "last_seq": .integer(lastSeq), "first_prev": .string(firstPrev),
            "last_hash": .string(lastHash),
            "exported_at": .string(Timestamp.format(secondsSinceEpoch: Int(exportedAt))),
        ])
    }

    /// The bytes the signature covers.
    public var signedBytes: [UInt8] {
        Self.body(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev, lastHash: lastHash,
                  exportedAt: exportedAt).canonicalBytes()
    }

    public var json: JSONValue {
        .object([
            "export": Self.body(force: force, firstSeq: firstSeq, lastSeq: lastSeq, firstPrev: firstPrev,
                                lastHash: lastHash, exportedAt: exportedAt),
            "signature": .string(Base64.encode(signature)),
        ])
    }

    public init(json value: JSONValue) throws {
        func hex64(_ text: String?) -> String? {
            guard let text, text.utf8.count == 64, Hex.decode(text) != nil, text == text.lowercased() else { return nil }
            return text
        }
        guard case .object(let members) = value, Set(members.keys) == ["export", "signature"],
            case .object(let body) = members["export"]!,
            Set(body.keys) == ["format", "force", "first_seq", "last_seq", "first_prev", "last_hash", "exported_at"],
            body["format"]?.stringValue == AuditExportHeader.format,
            let forceText = body["force"]?.stringValue, let force = try? ForceID(force: forceText),
            let first = body["first_seq"]?.integerValue, let last = body["last_seq"]?.integerValue,
            (1...AuditRecord.maximumSeq).contains(first), (first - 1...AuditRecord.maximumSeq).contains(last),
            let firstPrev = hex64(body["first_prev"]?.stringValue), let lastHash = hex64(body["last_hash"]?.stringValue),
            let exportedText = body["exported_at"]?.stringValue, let exported = Timestamp.parse(exportedText),
            let signatureText = members["signature"]?.stringValue, let signature = Base64.decode(signatureText),
            signature.count == Ed25519.signatureByteCount
        else { throw VaultError(.malformedAudit, "not an export seal") }
        self.init(force: force, firstSeq: first, lastSeq: last, firstPrev: firstPrev, lastHash: lastHash,
                  exportedAt: UnixTime(exported), signature: signature)
    }
}

