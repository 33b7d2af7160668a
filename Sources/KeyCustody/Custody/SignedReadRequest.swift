#if canImport(Glibc)
import Glibc
#endif

/// What a person (or a use-case service) asks to read, in their own words (DESIGN 5.6): canonical JSON signed with
/// the principal's Ed25519 key. A remote custody service unwraps for a read only on a fresh, never-replayed request
/// whose principal, dataset and purpose the force's use case covers; a platform cannot fabricate one, replay one
/// or point one at another dataset.
public struct ReadRequest: Sendable, Equatable {
    public static let format = "vault-read-request-v1"
    /// `expires - issued` may not exceed this.
    public static let maximumLifetime: Int64 = 300
    /// The extract field of a request for whatever extract of the dataset is current.
    public static let currentExtract = "current"

    public var dataset: DatasetID
    /// Unix seconds.
    public var issued: Int64
    public var expires: Int64
    /// An extract id (ULID), or `"current"`.
    public var extract: String
    public var force: ForceID
    /// 16 random bytes.
    public var nonce: [UInt8]
    public var principal: String
    public var purpose: Justification.Purpose
    public var useCase: String

    public init(force: ForceID, dataset: DatasetID, extract: String = ReadRequest.currentExtract, principal: String,
                purpose: Justification.Purpose, useCase: String, issued: Int64, lifetime: Int64 = 120,
                nonce: [UInt8] = SecureRandom.bytes(count: 16))
    {
        self.force = force
        self.dataset = dataset
        self.extract = extract
        self.principal = principal
        self.purpose = purpose
        self.useCase = useCase
        self.issued = issued
        self.expires = issued + lifetime
        self.nonce = nonce
    }

    public var json: JSONValue {
        .object([
            "dataset": .string(dataset.rawValue), "expires": .string(Timestamp.format(secondsSinceEpoch: Int(expires))),
            "extract": .string(extract), "force": .string(force.rawValue), "format": .string(Self.format),
            "issued": .string(Timestamp.format(secondsSinceEpoch: Int(issued))), "nonce": .string(Base64.encode(nonce)),
            "principal": .string(principal), "purpose": .string(purpose.rawValue), "use_case": .string(useCase),
        ])
    }

    /// Reads a request object, refusing unknown or missing fields and anything not in the 5.6 shape.
    public init(json: JSONValue) throws {
        let context = "read request"
        let fields = try JSONFields(json, context: context)
        let known: Set<String> = ["dataset", "expires", "extract", "force", "format", "issued", "nonce", "principal",
                                  "purpose", "use_case"]
        if let unknown = fields.members.keys.sorted().first(where: { !known.contains($0) }) {
            throw CustodyError(.malformedEncoding, "\(context): unknown field \"\(unknown)\"")
        }
        guard try fields.string("format") == Self.format else {
            throw CustodyError(.malformedEncoding, "\(context): format is not \(Self.format)")
        }
        func time(_ key: String) throws -> Int64 {
            guard let seconds = Timestamp.parse(try fields.string(key)) else {
                throw CustodyError(.malformedEncoding, "\(context): \(key) is not an RFC 3339 UTC time")
            }
            return Int64(seconds)
        }
        force = try ForceID(force: try fields.string("force"))
        dataset = try DatasetID(dataset: try fields.string("dataset"))
        extract = try fields.string("extract")
        if extract != Self.currentExtract { _ = try ExtractID(extract) }
        principal = try fields.string("principal")
        guard (1...128).contains(principal.utf8.count) else {
            throw CustodyError(.malformedEncoding, "\(context): principal must be 1 to 128 bytes")
        }
        guard let purpose = Justification.Purpose(rawValue: try fields.string("purpose")) else {
            throw CustodyError(.malformedEncoding, "\(context): unknown purpose")
        }
        self.purpose = purpose
        useCase = try fields.string("use_case")
        guard useCase.utf8.count <= 128 else {
            throw CustodyError(.malformedEncoding, "\(context): use_case is longer than 128 bytes")
        }
        issued = try time("issued")
        expires = try time("expires")
        nonce = try fields.base64("nonce")
        guard nonce.count == 16 else { throw CustodyError(.malformedEncoding, "\(context): nonce must be 16 bytes") }
    }
}

/// A read request with its signature, as sent: `{"request": {...}, "signature": "<b64 64 bytes>"}`. The signature
/// covers the canonical line of the request object exactly.
public struct SignedReadRequest: Sendable, Equatable {
    /// The largest envelope accepted anywhere (an HTTP header, a custody request body).
    public static let maximumSize = 4096

    public let request: ReadRequest
    /// The canonical JSON line that was signed.
    public let line: [UInt8]
    public let signature: [UInt8]

    /// Signs `request` with the principal's key.
    public init(signing request: ReadRequest, with key: Ed25519.PrivateKey) {
        self.request = request
        line = request.json.canonicalBytes()
        signature = key.signature(for: line)
    }

    public init(envelope json: JSONValue) throws {
        let fields = try JSONFields(json, context: "signed read request")
        if let unknown = fields.members.keys.sorted().first(where: { $0 != "request" && $0 != "signature" }) {
            throw CustodyError(.malformedEncoding, "signed read request: unknown field \"\(unknown)\"")
        }
        guard let object = fields.members["request"] else {
            throw CustodyError(.malformedEncoding, "signed read request: field \"request\" is missing")
        }
        request = try ReadRequest(json: object)
        line = object.canonicalBytes()
        signature = try fields.base64("signature")
        guard signature.count == Ed25519.signatureByteCount else {
            throw CustodyError(.malformedEncoding, "signed read request: the signature must be 64 bytes")
        }
    }

    /// Parses the envelope's bytes (at most `maximumSize`).
    public init(bytes: [UInt8]) throws {
        guard bytes.count <= Self.maximumSize else {
            throw CustodyError(.malformedEncoding, "signed read request is larger than \(Self.maximumSize) bytes")
        }
        let json: JSONValue
        do { json = try JSONParser.parse(bytes) } catch let error as CustodyError {
            throw CustodyError(.malformedEncoding, "signed read request is not JSON: \(error.message)")
        }
        try self.init(envelope: json)
    }

    public var envelope: JSONValue {
        guard let object = try? JSONParser.parse(line) else { return .null }
        return .object(["request": object, "signature": .string(Base64.encode(signature))])
    }

    /// How it travels in the `X-Vault-Read-Request` header: base64 of the envelope's canonical JSON.
    public var headerValue: String { Base64.encode(envelope.canonicalBytes()) }

    public init(headerValue: String) throws {
        guard headerValue.utf8.count <= Base64.encodedLength(Self.maximumSize), let bytes = Base64.decode(headerValue)
        else { throw CustodyError(.malformedEncoding, "X-Vault-Read-Request is not base64 of a signed read request") }
        try self.init(bytes: bytes)
    }

    /// The request's hash, as the custody service's log names it: hex SHA-256 of the signed line.
    public var hash: String { Hex.encode(Digest.hash(.sha256, line)) }

    public func isSigned(by key: Ed25519.PublicKey) -> Bool { key.isValidSignature(signature, for: line) }
}

/// A principal's Ed25519 signing key for read requests, in a 0600 file (`vault keys principal-init`):
/// `{"format":"vault-principal-key-v1","principal":"analyst-wmp","private_key":"<b64 32-byte seed>"}`. Its public
/// key is registered with the force's custody service by a custodian.
public struct PrincipalSigningKey: Sendable {
    public static let format = "vault-principal-key-v1"
    public let principal: String
    public let key: Ed25519.PrivateKey

    public init(principal: String, key: Ed25519.PrivateKey = Ed25519.PrivateKey()) {
        self.principal = principal
        self.key = key
    }

    /// The file's bytes, in secure memory.
    public var document: SecureBytes {
        JSONValue.object(["format": .string(Self.format), "principal": .string(principal),
                          "private_key": .secret(key.seed)]).canonicalSecureBytes()
    }

    public init(document: SecureBytes) throws {
        let json = try document.withUnsafeBytes { try JSONParser.parse($0, secretMembers: ["private_key"]) }
        let fields = try JSONFields(json, context: "principal key")
        guard try fields.string("format") == Self.format else {
            throw CustodyError(.malformedEncoding, "principal key: format is not \(Self.format)")
        }
        principal = try fields.string("principal")
        let seed = try fields.secret("private_key")
        guard seed.count == 32 else { throw CustodyError(.malformedEncoding, "principal key: the key must be 32 bytes") }
        key = try Ed25519.PrivateKey(seed: seed)
    }

    /// Reads the key from `path`, which must be readable by its owner only.
    public static func load(path: String) throws -> PrincipalSigningKey {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw CustodyError(.io, "cannot read the signing key \(path)", underlying: errnoDescription())
        }
        guard info.st_mode & 0o077 == 0 else {
            throw CustodyError(.invalidConfiguration, "the signing key \(path) is readable by others: chmod 600 it")
        }
        return try PrincipalSigningKey(document: try DurableFile.readSecret(path))
    }

    /// From `VAULT_SIGNING_KEY` (the file's content) or `VAULT_SIGNING_KEY_FILE`; nil when neither is set.
    public static func fromEnvironment() throws -> PrincipalSigningKey? {
        if getenv("VAULT_SIGNING_KEY") != nil {
            defer { SecretSource.scrubEnvironment("VAULT_SIGNING_KEY") }
            return try PrincipalSigningKey(document: try SecretSource.environment("VAULT_SIGNING_KEY").read())
        }
        if let path = getenv("VAULT_SIGNING_KEY_FILE").map({ String(cString: $0) }), !path.isEmpty {
            return try load(path: path)
        }
        return nil
    }
}
