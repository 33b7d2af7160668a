import KeyCustody

/// The remote custody protocol (DESIGN 6.3; the README's "Remote custody protocol" is its contract): every JSON
/// shape that travels between a platform vaultd and a force's custody service, written once for both sides.
public enum CustodyWire {
    /// The largest request or answer body either side reads (a rewrap batch of 10,000 keys fits).
    public static let maximumBody = 16 << 20
    /// At most this many keys in one rewrap batch, and records in one witness submission.
    public static let maximumBatch = 10_000

    // MARK: Contexts, wrapped keys, justifications

    public static func json(_ context: WrapContext) -> JSONValue {
        .object(["force": .string(context.force.rawValue), "dataset": .string(context.dataset.rawValue),
                 "extract": .string(context.extract.rawValue)])
    }

    public static func context(_ value: JSONValue?, _ name: String = "context") throws -> WrapContext {
        guard let value else { throw malformed("\(name) is missing") }
        let fields = try JSONFields(value, context: name)
        try only(fields, ["force", "dataset", "extract"])
        return WrapContext(force: try ForceID(force: try fields.string("force")),
                           dataset: try DatasetID(dataset: try fields.string("dataset")),
                           extract: try ExtractID(try fields.string("extract")))
    }

    public static func wrappedKey(_ value: JSONValue?, _ name: String = "wrapped") throws -> WrappedKey {
        guard let value else { throw malformed("\(name) is missing") }
        return try WrappedKey(json: value)
    }

    public static func json(_ justification: Justification) -> JSONValue {
        var members: [String: JSONValue] = [
            "principal": .string(justification.principal), "purpose": .string(justification.purpose.rawValue),
            "request_id": .string(justification.requestID),
        ]
        if let useCase = justification.useCase { members["use_case"] = .string(useCase) }
        if let signed = justification.signedRequest { members["signed_request"] = signed.envelope }
        return .object(members)
    }

    public static func justification(_ value: JSONValue?) throws -> Justification {
        guard let value else { throw malformed("justification is missing") }
        let fields = try JSONFields(value, context: "justification")
        try only(fields, ["principal", "purpose", "request_id", "use_case", "signed_request"])
        guard let purpose = Justification.Purpose(rawValue: try fields.string("purpose")) else {
            throw malformed("justification: unknown purpose")
        }
        let principal = try fields.string("principal"), requestID = try fields.string("request_id")
        guard (1...128).contains(principal.utf8.count), (1...128).contains(requestID.utf8.count) else {
            throw malformed("justification: principal and request_id must be 1 to 128 bytes")
        }
        let useCase = fields.members["use_case"]?.stringValue
        let signed = try fields.members["signed_request"].map { try SignedReadRequest(envelope: $0) }
        return Justification(principal: principal, useCase: useCase, purpose: purpose, requestID: requestID,
                             signedRequest: signed)
    }

    public static func json(_ key: KeyInfo) -> JSONValue {
        .object(["id": .string(key.id.description), "kind": .string(key.kind.rawValue),
                 "state": .string(key.state.rawValue), "created": .string(key.created)])
    }

    public static func keyInfo(_ value: JSONValue) throws -> KeyInfo {
        let fields = try JSONFields(value, context: "key")
        guard let kind = KeyKind(rawValue: try fields.string("kind")),
            let state = KeyState(rawValue: try fields.string("state"))
        else { throw malformed("key: unknown kind or state") }
        return KeyInfo(id: try KEKID(try fields.string("id")), kind: kind, state: state,
                       created: try fields.string("created"))
    }

    public static func kek(_ value: JSONValue?, _ name: String) throws -> KEKID {
        guard let text = value?.stringValue else { throw malformed("\(name) must be a KEK id") }
        return try KEKID(text)
    }

    static func only(_ fields: JSONFields, _ known: Set<String>) throws {
        if let unknown = fields.members.keys.sorted().first(where: { !known.contains($0) }) {
            throw malformed("\(fields.context): unknown field \"\(unknown)\"")
        }
    }

    static func malformed(_ message: String) -> CustodyError { CustodyError(.malformedEncoding, message) }
}

/// A use case as the force's custody service authored and signed it (`vault-use-case-v1`): the platform stores and
/// enforces only versions whose signature verifies with the custody key its custody file names.
///
/// `{"document": {"datasets", "description", "force", "format", "id", "lawful_basis", "principals", "revoked_at",
/// "updated_at", "valid_from", "valid_until", "version"}, "signature": "<b64>"}`, times RFC 3339 UTC or null, the
/// signature Ed25519 over the document's canonical JSON.
public struct SignedUseCase: Sendable, Equatable {
    public static let format = "vault-use-case-v1"
    public let useCase: UseCase
    public let version: Int64
    public let document: JSONValue
    public let signature: [UInt8]

    public init(useCase: UseCase, version: Int64, signer: AuditSigner) throws {
        self.useCase = useCase
        self.version = version
        document = Self.document(useCase, version: version)
        signature = try signer.sign(document.canonicalBytes())
    }

    static func document(_ useCase: UseCase, version: Int64) -> JSONValue {
        func time(_ value: UnixTime?) -> JSONValue {
            value.map { .string(Timestamp.format(secondsSinceEpoch: Int($0))) } ?? .null
        }
        return .object([
            "datasets": .array(useCase.datasets.map { .string($0.rawValue) }),
            "description": .string(useCase.description), "force": .string(useCase.force.rawValue),
            "format": .string(format), "id": .string(useCase.id.rawValue), "lawful_basis": .string(useCase.lawfulBasis),
            "principals": .array(useCase.principals.map { .string($0) }), "revoked_at": time(useCase.revokedAt),
            "updated_at": time(useCase.updatedAt), "valid_from": time(useCase.validFrom),
            "valid_until": time(useCase.validUntil), "version": .integer(version),
        ])
    }

    public var json: JSONValue { .object(["document": document, "signature": .string(Base64.encode(signature))]) }

    /// Reads a signed use case and checks its signature with `key`; refuses anything else.
    public init(json: JSONValue, verifyingWith key: Ed25519.PublicKey) throws {
        let fields = try JSONFields(json, context: "signed use case")
        try CustodyWire.only(fields, ["document", "signature"])
        guard let document = fields.members["document"] else { throw CustodyWire.malformed("document is missing") }
        let signature = try fields.base64("signature")
        guard key.isValidSignature(signature, for: document.canonicalBytes()) else {
            throw CustodyError(.authenticationFailure, "a use case's signature does not verify with the force's "
                                + "custody key: it was not authored at the force's custody service")
        }
        let body = try JSONFields(document, context: "use case document")
        try CustodyWire.only(body, ["datasets", "description", "force", "format", "id", "lawful_basis", "principals",
                                    "revoked_at", "updated_at", "valid_from", "valid_until", "version"])
        guard try body.string("format") == Self.format else { throw CustodyWire.malformed("not a \(Self.format)") }
        func time(_ key: String) throws -> UnixTime? {
            guard let value = body.members[key], value != .null else { return nil }
            guard let text = value.stringValue, let seconds = Timestamp.parse(text) else {
                throw CustodyWire.malformed("use case document: \(key) is not an RFC 3339 UTC time")
            }
            return UnixTime(seconds)
        }
        useCase = UseCase(
            force: try ForceID(force: try body.string("force")), id: try ResourceID(try body.string("id")),
            description: try body.string("description"), lawfulBasis: try body.string("lawful_basis"),
            datasets: try body.array("datasets").map { try DatasetID(dataset: $0.stringValue ?? "") },
            principals: try body.array("principals").map {
                guard let text = $0.stringValue else { throw CustodyWire.malformed("principals must be strings") }
                return text
            },
            validFrom: try time("valid_from"), validUntil: try time("valid_until"), revokedAt: try time("revoked_at"),
            updatedAt: try time("updated_at") ?? 0)
        version = try body.integer("version")
        self.document = document
        self.signature = signature
    }
}

/// The force's witness cosignature of a platform checkpoint (DESIGN 5.7): Ed25519 by the custody key over the
/// canonical JSON `{"checkpoint": {force, hash, seq, time}, "cosigned", "format": "vault-cosignature-v1", "witness"}`.
/// In an audit export it is the line `{"cosignature": {...}, "signature": "<b64>"}` after its checkpoint's line.
public struct Cosignature: Sendable, Equatable {
    public static let format = "vault-cosignature-v1"
    public let force: ForceID
    public let seq: Int64
    public let hash: String
    /// The platform checkpoint's own time.
    public let checkpointTime: UnixTime
    public let cosigned: UnixTime
    /// The witness key's id: the first 8 bytes of SHA-256 of its raw public key, in hex.
    public let witness: String
    public let signature: [UInt8]

    public init(checkpoint: AuditCheckpoint, cosigned: UnixTime, signer: AuditSigner) throws {
        force = checkpoint.force
        seq = checkpoint.seq
        hash = checkpoint.hash
        checkpointTime = checkpoint.time
        self.cosigned = cosigned
        witness = signer.publicKey.fingerprint
        signature = try signer.sign(Self.statement(force: force, seq: seq, hash: hash, checkpointTime: checkpointTime,
                                               cosigned: cosigned, witness: witness).canonicalBytes())
    }

    public init(force: ForceID, seq: Int64, hash: String, checkpointTime: UnixTime, cosigned: UnixTime,
                witness: String, signature: [UInt8]) {
        self.force = force
        self.seq = seq
        self.hash = hash
        self.checkpointTime = checkpointTime
        self.cosigned = cosigned
        self.witness = witness
        self.signature = signature
    }

    static func statement(force: ForceID, seq: Int64, hash: String, checkpointTime: UnixTime, cosigned: UnixTime,
                          witness: String) -> JSONValue {
        .object([
            "checkpoint": AuditCheckpoint.body(force: force, seq: seq, hash: hash, time: checkpointTime),
            "cosigned": .string(Timestamp.format(secondsSinceEpoch: Int(cosigned))), "format": .string(format),
            "witness": .string(witness),
        ])
    }

    public var statement: JSONValue {
        Self.statement(force: force, seq: seq, hash: hash, checkpointTime: checkpointTime, cosigned: cosigned,
                       witness: witness)
    }

    public var json: JSONValue { .object(["cosignature": statement, "signature": .string(Base64.encode(signature))]) }

    public func isValid(key: Ed25519.PublicKey) -> Bool {
        key.fingerprint == witness && key.isValidSignature(signature, for: statement.canonicalBytes())
    }

    /// Reads a cosignature line strictly (the signature is checked with `isValid`).
    public init(json value: JSONValue) throws {
        let malformed = VaultError(.malformedAudit, "not a cosignature: {\"cosignature\":{checkpoint,cosigned,format,"
                                   + "witness},\"signature\":b64}")
        guard case .object(let members) = value, Set(members.keys) == ["cosignature", "signature"],
            case .object(let body) = members["cosignature"]!, Set(body.keys) == ["checkpoint", "cosigned", "format",
                                                                                  "witness"],
            body["format"]?.stringValue == Self.format, let witness = body["witness"]?.stringValue,
            witness.utf8.count == 16, let cosignedText = body["cosigned"]?.stringValue,
            let cosigned = Timestamp.parse(cosignedText), let checkpointBody = body["checkpoint"],
            let signatureText = members["signature"]?.stringValue, let signature = Base64.decode(signatureText),
            signature.count == Ed25519.signatureByteCount,
            let checkpoint = try? AuditCheckpoint(json: .object([
                "checkpoint": checkpointBody, "signature": .string(Base64.encode(signature))]))
        else { throw malformed }
        self.init(force: checkpoint.force, seq: checkpoint.seq, hash: checkpoint.hash,
                  checkpointTime: checkpoint.time, cosigned: UnixTime(cosigned), witness: witness,
                  signature: signature)
    }
}

/// What the platform sends its force's witness at a checkpoint: the size the witness cosigned last (`old_size`),
/// the new checkpoint and the record lines after `old_size` up to it.
public struct WitnessSubmission: Sendable {
    public let oldSize: Int64
    public let checkpoint: AuditCheckpoint
    public let records: [[UInt8]]

    public init(oldSize: Int64, checkpoint: AuditCheckpoint, records: [[UInt8]]) {
        self.oldSize = oldSize
        self.checkpoint = checkpoint
        self.records = records
    }

    public var json: JSONValue {
        .object(["old_size": .integer(oldSize), "checkpoint": checkpoint.json,
                 "records": .array(records.map { .string(String(decoding: $0, as: UTF8.self)) })])
    }

    public init(json: JSONValue) throws {
        let fields = try JSONFields(json, context: "witness submission")
        try CustodyWire.only(fields, ["old_size", "checkpoint", "records"])
        oldSize = try fields.integer("old_size")
        guard oldSize >= 0 else { throw CustodyWire.malformed("old_size must not be negative") }
        guard let checkpointJSON = fields.members["checkpoint"] else {
            throw CustodyWire.malformed("checkpoint is missing")
        }
        do { checkpoint = try AuditCheckpoint(json: checkpointJSON) } catch let error as VaultError {
            throw CustodyWire.malformed(error.message)
        }
        let lines = try fields.array("records")
        guard lines.count <= CustodyWire.maximumBatch else {
            throw CustodyWire.malformed("at most \(CustodyWire.maximumBatch) records per submission")
        }
        records = try lines.map {
            guard let text = $0.stringValue else { throw CustodyWire.malformed("records must be strings") }
            return Array(text.utf8)
        }
    }
}
