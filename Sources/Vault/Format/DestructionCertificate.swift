import KeyCustody

/// Evidence that an extract was crypto-shredded (DESIGN sections 4 and 7): canonical JSON signed with the vault's
/// Ed25519 audit key, verifiable offline with the public key alone.
///
/// ```
/// {"certificate":{"format":"vault-destruction-v1","id":"<ULID>","force":"wmp","dataset":"crime",
///   "extract":"<ULID>","ciphertext_sha256":"<hex>","ciphertext_size":N,"committed_at":"...","archived_at":"...",
///   "expires_at":"...","shred_started_at":"...","shredded_at":"...","reason":"retention-expired"|"early",
///   "note":"..."|null,"requested_by":"...","keks_destroyed":["ak:wmp:<ULID>"],"blob_deleted":true,
///   "lineage":[{"kek":"fmk:wmp:1","since":"...","until":"...","state":"retired"},...],
///   "verdict":"complete"|"pending","pending_keks":["fmk:wmp:1"],"supersedes":"<id>"|null,
///   "issued_at":"...","audit_key":"<fingerprint>"},
///  "signature":"<b64 Ed25519 over the canonical bytes of the certificate object>"}
/// ```
///
/// `complete` means custody reports every KEK that ever wrapped the extract key destroyed, so no copy of the wrapped
/// key (in the catalog, in any backup of it) can be opened again. `pending` lists the KEKs still alive or unknown
/// (custody does not list them; a lineage state `unknown`): backups
/// taken while the extract was current hold its key under them, until they are destroyed too. A later certificate
/// that `supersedes` this one is issued when they are.
public struct DestructionCertificate: Sendable, Equatable {
    public static let format = "vault-destruction-v1"

    public enum Verdict: String, Sendable {
        case complete
        case pending
    }

    /// The signed statement (the `certificate` object).
    public let body: JSONValue
    public let signature: [UInt8]

    public let id: String
    public let force: ForceID
    public let extract: ExtractID
    public let verdict: Verdict
    public let pendingKEKs: [KEKID]
    public let issuedAt: UnixTime
    /// When the archive was shredded, as the certificate states it.
    public var shreddedAt: String? { body["shredded_at"]?.stringValue }

    /// Only a positive destruction counts (DESIGN 5.8): custody lists the KEK as destroyed (its tombstone). A KEK
    /// custody does not list at all, after a move between backends say, is unknown: it may still open a copy.
    static func isDestroyed(_ kek: KEKID, _ keyStates: [KEKID: KeyState]) -> Bool { keyStates[kek] == .destroyed }

    /// A lineage entry's state as the certificate states it: custody's, or `unknown` when custody does not list it.
    static func stateName(_ kek: KEKID, _ keyStates: [KEKID: KeyState]) -> String {
        keyStates[kek]?.rawValue ?? "unknown"
    }

    /// Builds and signs a certificate.
    public static func issue(
        ticket: ShredTicket, shreddedAt: UnixTime, keksDestroyed: [KEKID], lineage: [LineageEntry],
        keyStates: [KEKID: KeyState], supersedes: String? = nil, signer: AuditSigner, now: UnixTime
    ) throws -> DestructionCertificate {
        let record = ticket.record
        func time(_ value: UnixTime?) -> JSONValue {
            value.map { .string(Timestamp.format(secondsSinceEpoch: Int($0))) } ?? .null
        }
        var seen = Set<KEKID>()
        let pending = lineage.map(\.kek).filter { !isDestroyed($0, keyStates) && seen.insert($0).inserted }
        let body = JSONValue.object([
            "format": .string(format), "id": .string(ExtractID.generate().rawValue),
            "force": .string(record.identity.force.rawValue), "dataset": .string(record.identity.dataset.rawValue),
            "extract": .string(record.identity.extract.rawValue),
            "ciphertext_sha256": .string(Hex.encode(record.ciphertextSHA256)),
            "ciphertext_size": .integer(Int64(record.ciphertextSize)),
            "committed_at": time(record.committedAt), "archived_at": time(record.archivedAt),
            "expires_at": time(record.expiresAt), "shred_started_at": time(ticket.startedAt),
            "shredded_at": time(shreddedAt), "reason": .string(ticket.reason.rawValue),
            "note": ticket.note.map { .string($0) } ?? .null, "requested_by": .string(ticket.requestedBy),
            "keks_destroyed": .array(keksDestroyed.map { .string($0.description) }), "blob_deleted": .bool(true),
            "lineage": .array(lineage.map { entry in
                .object(["kek": .string(entry.kek.description), "since": time(entry.since),
                         "until": time(entry.until ?? shreddedAt),
                         "state": .string(stateName(entry.kek, keyStates))])
            }),
            "verdict": .string(pending.isEmpty ? Verdict.complete.rawValue : Verdict.pending.rawValue),
            "pending_keks": .array(pending.map { .string($0.description) }),
            "supersedes": supersedes.map { .string($0) } ?? .null,
            "issued_at": time(now), "audit_key": .string(signer.publicKey.fingerprint),
        ])
        return try DestructionCertificate(body: body, signature: try signer.sign(body.canonicalBytes()))
    }

    /// A certificate for the same shredding with the key states of now: the next revision of `previous`.
    public func reissued(keyStates: [KEKID: KeyState], signer: AuditSigner, now: UnixTime) throws
        -> DestructionCertificate
    {
        guard case .object(var members) = body else { return self }
        let lineage = (members["lineage"]?.arrayValue ?? []).map { entry -> JSONValue in
            guard case .object(var fields) = entry, let text = fields["kek"]?.stringValue,
                let kek = try? KEKID(text) else { return entry }
            fields["state"] = .string(Self.stateName(kek, keyStates))
            return .object(fields)
        }
        let pending = pendingKEKs.filter { !Self.isDestroyed($0, keyStates) }
        members["lineage"] = .array(lineage)
        members["pending_keks"] = .array(pending.map { .string($0.description) })
        members["verdict"] = .string(pending.isEmpty ? Verdict.complete.rawValue : Verdict.pending.rawValue)
        members["supersedes"] = .string(id)
        members["id"] = .string(ExtractID.generate().rawValue)
        members["issued_at"] = .string(Timestamp.format(secondsSinceEpoch: Int(now)))
        members["audit_key"] = .string(signer.publicKey.fingerprint)
        let body = JSONValue.object(members)
        return try DestructionCertificate(body: body, signature: try signer.sign(body.canonicalBytes()))
    }

    /// Reads a certificate strictly from its parts (the signature is checked by `verify`).
    public init(body: JSONValue, signature: [UInt8]) throws {
        let malformed = { (reason: String) in
            VaultError(.malformedCertificate, "not a destruction certificate: \(reason)")
        }
        guard signature.count == Ed25519.signatureByteCount else { throw malformed("the signature is not 64 bytes") }
        guard case .object(let members) = body else { throw malformed("the certificate is not an object") }
        let required = ["format", "id", "force", "dataset", "extract", "ciphertext_sha256", "ciphertext_size",
                        "committed_at", "archived_at", "expires_at", "shred_started_at", "shredded_at", "reason",
                        "note", "requested_by", "keks_destroyed", "blob_deleted", "lineage", "verdict",
                        "pending_keks", "supersedes", "issued_at", "audit_key"]
        guard Set(members.keys) == Set(required) else {
            throw malformed("fields must be exactly \(required.sorted().joined(separator: ", "))")
        }
        guard members["format"]?.stringValue == Self.format else { throw malformed("format is not \(Self.format)") }
        guard let id = members["id"]?.stringValue, (try? ExtractID(id)) != nil else { throw malformed("bad id") }
        guard let forceText = members["force"]?.stringValue, let force = try? ForceID(force: forceText),
            let extractText = members["extract"]?.stringValue, let extract = try? ExtractID(extractText)
        else { throw malformed("bad force or extract") }
        guard let verdictText = members["verdict"]?.stringValue, let verdict = Verdict(rawValue: verdictText) else {
            throw malformed("verdict must be complete or pending")
        }
        guard let pendingList = members["pending_keks"]?.arrayValue else { throw malformed("pending_keks is not a list") }
        let pending = try pendingList.map { item -> KEKID in
            guard let text = item.stringValue, let kek = try? KEKID(text) else { throw malformed("bad pending kek") }
            return kek
        }
        guard (verdict == .complete) == pending.isEmpty else {
            throw malformed("verdict \(verdict.rawValue) contradicts pending_keks")
        }
        guard let issuedText = members["issued_at"]?.stringValue, let issued = Timestamp.parse(issuedText) else {
            throw malformed("bad issued_at")
        }
        self.body = body
        self.signature = signature
        self.id = id
        self.force = force
        self.extract = extract
        self.verdict = verdict
        self.pendingKEKs = pending
        self.issuedAt = UnixTime(issued)
    }

    /// Parses `{"certificate":{...},"signature":"b64"}`.
    public init(json: JSONValue) throws {
        guard case .object(let members) = json, Set(members.keys) == ["certificate", "signature"],
            let certificate = members["certificate"], let text = members["signature"]?.stringValue,
            let signature = Base64.decode(text)
        else {
            throw VaultError(.malformedCertificate,
                             "not a destruction certificate: expected {\"certificate\":{...},\"signature\":\"b64\"}")
        }
        try self.init(body: certificate, signature: signature)
    }

    /// Parses a certificate file: one canonical JSON document, optionally followed by a newline.
    public init(bytes: [UInt8]) throws {
        var bytes = bytes
        if bytes.last == 0x0A { bytes.removeLast() }
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch {
            throw VaultError(.malformedCertificate, "not a destruction certificate: not JSON")
        }
        try self.init(json: json)
    }

    public var json: JSONValue { .object(["certificate": body, "signature": .string(Base64.encode(signature))]) }

    /// The canonical certificate file: the JSON document and a newline.
    public var bytes: [UInt8] { json.canonicalBytes() + [0x0A] }

    /// True when `publicKey` signed exactly this certificate.
    public func verify(publicKey: Ed25519.PublicKey) -> Bool {
        publicKey.isValidSignature(signature, for: body.canonicalBytes())
    }
}

