/// What a wrapped extract key is bound to: the force, dataset and extract it belongs to (DESIGN 5.2).
///
/// A wrapped key unwraps only under the same context, so a wrapped key copied onto another extract's catalog row,
/// another dataset or another force fails to authenticate.
public struct WrapContext: Hashable, Sendable, CustomStringConvertible {
    public let force: ForceID
    public let dataset: DatasetID
    public let extract: ExtractID

    public init(force: ForceID, dataset: DatasetID, extract: ExtractID) {
        self.force = force
        self.dataset = dataset
        self.extract = extract
    }

    /// `"vault.wrap.v1" 0x00 kek 0x00 force 0x00 dataset 0x00 extract_id`
    public func additionalData(kek: KEKID) -> [UInt8] {
        var aad = Array("vault.wrap.v1".utf8)
        for part in [kek.description, force.rawValue, dataset.rawValue, extract.rawValue] {
            aad.append(0)
            aad.append(contentsOf: part.utf8)
        }
        return aad
    }

    public var description: String { "\(force)/\(dataset)/\(extract)" }
}

/// An extract key encrypted under a KEK: the JSON object of DESIGN 5.2, identical for every custody backend.
public struct WrappedKey: Hashable, Sendable {
    public static let algorithm = "A256GCM"
    public static let ivByteCount = 12
    public static let ciphertextByteCount = 32 + 16

    public let kek: KEKID
    public let iv: [UInt8]
    /// The 32-byte key followed by the 16-byte GCM tag.
    public let ciphertext: [UInt8]

    public init(kek: KEKID, iv: [UInt8], ciphertext: [UInt8]) throws {
        guard iv.count == Self.ivByteCount else {
            throw CustodyError(.malformedWrappedKey, "wrapped key iv must be \(Self.ivByteCount) bytes")
        }
        guard ciphertext.count == Self.ciphertextByteCount else {
            throw CustodyError(.malformedWrappedKey, "wrapped key ct must be \(Self.ciphertextByteCount) bytes")
        }
        self.kek = kek
        self.iv = iv
        self.ciphertext = ciphertext
    }

    /// `{"alg":"A256GCM","ct":"<b64>","iv":"<b64>","kek":"<id>"}`
    public var json: JSONValue {
        .object([
            "kek": .string(kek.description),
            "alg": .string(Self.algorithm),
            "iv": .string(Base64.encode(iv)),
            "ct": .string(Base64.encode(ciphertext)),
        ])
    }

    /// `json.canonicalString`, built directly (the hot path of a rotation writes one per key).
    public var canonicalText: String {
        "{\"alg\":\"\(Self.algorithm)\",\"ct\":\"\(Base64.encode(ciphertext))\",\"iv\":\"\(Base64.encode(iv))\","
            + "\"kek\":\"\(kek.description)\"}"
    }

    public init(json: JSONValue) throws {
        do {
            let fields = try JSONFields(json, context: "wrapped key")
            let alg = try fields.string("alg")
            guard alg == Self.algorithm else {
                throw CustodyError(.malformedWrappedKey, "wrapped key alg \"\(alg)\" is not \(Self.algorithm)")
            }
            try self.init(kek: try KEKID(try fields.string("kek")), iv: try fields.base64("iv"),
                          ciphertext: try fields.base64("ct"))
        } catch let error as CustodyError where error.code != .malformedWrappedKey {
            throw CustodyError(.malformedWrappedKey, error.message)
        }
    }
}

/// Why a key is being unwrapped: recorded by every backend in its own log, and checked against the key's kind.
public struct Justification: Sendable, CustomStringConvertible {
    public enum Purpose: String, Sendable, CaseIterable {
        /// An analyst reads a current extract under a use case.
        case useCaseRead = "use-case-read"
        /// An analyst reads an archive under an approved, dual-control grant.
        case archiveRetrieval = "archive-retrieval"
        /// A wrapped key moves to another KEK (rotation, archival); the key never leaves custody.
        case rewrap
        /// A custodian takes an extract out (portable export, offline decryption).
        case export
        /// vaultd checks a sealed upload chunk by chunk before accepting it; the plaintext is discarded.
        case ingestVerification = "ingest-verify"
        /// An uploader's new extract gets a fresh key (`generateDataKey`); never a purpose for unwrapping.
        case upload
    }

    public let principal: String
    public let useCase: String?
    public let purpose: Purpose
    public let requestID: String
    /// The principal's own signed read request (DESIGN 5.6), forwarded to a remote custody service, which requires
    /// it for reads; local backends do not need it.
    public let signedRequest: SignedReadRequest?

    public init(principal: String, useCase: String? = nil, purpose: Purpose, requestID: String,
                signedRequest: SignedReadRequest? = nil) {
        self.principal = principal
        self.useCase = useCase
        self.purpose = purpose
        self.requestID = requestID
        self.signedRequest = signedRequest
    }

    public var description: String {
        "purpose=\(purpose.rawValue) principal=\(principal) use_case=\(useCase ?? "-") request=\(requestID)"
    }

    /// Which purposes may unwrap under which kind of key: master keys serve live reads and exports; archive keys
    /// only approved retrievals. Rewrap is an operation of its own, never a plain unwrap.
    public func check(unwrapUnder kek: KEKID) throws {
        let allowed: Set<Purpose> = kek.isMaster ? [.useCaseRead, .export, .ingestVerification] : [.archiveRetrieval]
        guard allowed.contains(purpose) else {
            throw CustodyError(.purposeRefused,
                               "purpose \(purpose.rawValue) may not unwrap a key held under \(kek)")
        }
        if purpose == .useCaseRead || purpose == .archiveRetrieval {
            guard let useCase, !useCase.isEmpty else {
                throw CustodyError(.purposeRefused, "purpose \(purpose.rawValue) needs a use case")
            }
        }
    }
}
