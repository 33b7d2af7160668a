internal import CPKCS11
import Logging

/// An Ed25519 signing key that never leaves a PKCS#11 token (`CKK_EC_EDWARDS`, signing with `CKM_EDDSA`): the
/// vault's audit key when vaultd's configuration puts it on an HSM, so that whoever copies the data directory or
/// its backups cannot sign checkpoints, export seals or destruction certificates.
///
/// The key pair is generated on the token (private part sensitive and never extractable, a token object) and
/// found again by its label. A private key object under the label that the token did not generate as one that
/// never leaves it is refused (`key_object_untrusted`), like every other key of the vault on a token.
public final class PKCS11SigningKey: Sendable {
    let token: PKCS11Token
    /// The key pair's label (`CKA_LABEL`, also its `CKA_ID`).
    public let label: String
    /// The raw 32-byte Ed25519 public key.
    public let publicKey: [UInt8]
    private let privateHandle: CK_OBJECT_HANDLE

    /// The DER of the Ed25519 curve's object identifier (1.3.101.112), the key pair's `CKA_EC_PARAMS`.
    static let ed25519Parameters: [UInt8] = [0x06, 0x03, 0x2B, 0x65, 0x70]

    private init(token: PKCS11Token, label: String, publicKey: [UInt8], privateHandle: CK_OBJECT_HANDLE) {
        self.token = token
        self.label = label
        self.publicKey = publicKey
        self.privateHandle = privateHandle
    }

    /// Whether the token holds a key pair labelled `label` (not checked for trust: only for the start-up rule that a
    /// missing audit key is never silently replaced).
    public static func exists(module path: String, tokenLabel: String, pin: SecureBytes, label: String,
                              logger: Logger) throws -> Bool
    {
        let token = try PKCS11Token(module: try PKCS11Module.load(path), label: tokenLabel, pin: pin, logger: logger)
        return try token.withSession("find signing key") { session in
            !(try token.findObjects(session: session, template: template(.privateKey, label: label))).isEmpty
        }
    }

    /// Opens the key pair labelled `label` on the token, generating it first when there is none and `create` is true.
    public static func open(module path: String, tokenLabel: String, pin: SecureBytes, label: String, create: Bool,
                            logger: Logger) throws -> PKCS11SigningKey
    {
        let token = try PKCS11Token(module: try PKCS11Module.load(path), label: tokenLabel, pin: pin, logger: logger)
        return try token.withSession("open signing key") { session in
            var privates = try token.findObjects(session: session, template: template(.privateKey, label: label))
            var publics = try token.findObjects(session: session, template: template(.publicKey, label: label))
            if privates.isEmpty && publics.isEmpty && create {
                let (publicHandle, privateHandle) = try generate(token: token, label: label, session: session)
                privates = [privateHandle]
                publics = [publicHandle]
                logger.notice("signing key generated on the token", metadata: ["token": "\(tokenLabel)",
                                                                               "label": "\(label)"])
            }
            guard privates.count == 1, publics.count == 1 else {
                throw CustodyError(privates.isEmpty ? .keyObjectMissing : .keyringInconsistent,
                                   "token \(tokenLabel) holds \(privates.count) private and \(publics.count) public "
                                       + "Ed25519 key object(s) labelled \(label); expected one of each")
            }
            try token.checkProtection(privates[0], label: label, session: session)
            guard let point = try token.attribute(CK_ATTRIBUTE_TYPE(CKA_EC_POINT), of: publics[0], session: session),
                  let publicKey = rawPoint(point)
            else {
                throw CustodyError(.keyringInconsistent, "the public key labelled \(label) on token \(tokenLabel) "
                                    + "is not an Ed25519 point")
            }
            return PKCS11SigningKey(token: token, label: label, publicKey: publicKey, privateHandle: privates[0])
        }
    }

    /// Signs `message` on the token (PureEdDSA, RFC 8032): the same signature as an in-memory Ed25519 key's.
    public func sign(_ message: [UInt8]) throws -> [UInt8] {
        let initialise = try token.module.function(\.C_SignInit, "C_SignInit")
        let sign = try token.module.function(\.C_Sign, "C_Sign")
        return try token.withSession("sign") { session in
            var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_EDDSA), pParameter: nil, ulParameterLen: 0)
            try PKCS11Error.check(initialise(session, &mechanism, privateHandle), "C_SignInit", context: label)
            var signature = [UInt8](repeating: 0, count: 64)
            var length = CK_ULONG(signature.count)
            var data = message
            try data.withUnsafeMutableBufferPointer { input in
                try signature.withUnsafeMutableBufferPointer { output in
                    try PKCS11Error.check(sign(session, input.baseAddress, CK_ULONG(input.count), output.baseAddress,
                                               &length), "C_Sign", context: label)
                }
            }
            guard length == 64 else {
                throw CustodyError(.hsmFailure, "the token made a \(length)-byte EdDSA signature, not 64")
            }
            return signature
        }
    }

    private enum Part { case privateKey, publicKey }

    private static func template(_ part: Part, label: String) -> AttributeTemplate {
        var template = AttributeTemplate()
        template.add(CK_ATTRIBUTE_TYPE(CKA_CLASS),
                     ulong: CK_ULONG(part == .privateKey ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY))
        template.add(CK_ATTRIBUTE_TYPE(CKA_KEY_TYPE), ulong: CK_ULONG(CKK_EC_EDWARDS))
        template.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
        return template
    }

    private static func generate(token: PKCS11Token, label: String, session: CK_SESSION_HANDLE) throws
        -> (public: CK_OBJECT_HANDLE, private: CK_OBJECT_HANDLE)
    {
        let generate = try token.module.function(\.C_GenerateKeyPair, "C_GenerateKeyPair")
        var publicTemplate = AttributeTemplate()
        publicTemplate.add(CK_ATTRIBUTE_TYPE(CKA_TOKEN), bool: true)
        publicTemplate.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
        publicTemplate.add(CK_ATTRIBUTE_TYPE(CKA_ID), bytes: Array(label.utf8))
        publicTemplate.add(CK_ATTRIBUTE_TYPE(CKA_VERIFY), bool: true)
        publicTemplate.add(CK_ATTRIBUTE_TYPE(CKA_EC_PARAMS), bytes: ed25519Parameters)
        var privateTemplate = AttributeTemplate()
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_TOKEN), bool: true)
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_ID), bytes: Array(label.utf8))
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_PRIVATE), bool: true)
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), bool: true)
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), bool: false)
        privateTemplate.add(CK_ATTRIBUTE_TYPE(CKA_SIGN), bool: true)
        var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_EC_EDWARDS_KEY_PAIR_GEN), pParameter: nil,
                                     ulParameterLen: 0)
        var publicHandle = CK_OBJECT_HANDLE(0)
        var privateHandle = CK_OBJECT_HANDLE(0)
        try publicTemplate.withAttributes { publicAttributes, publicCount in
            try privateTemplate.withAttributes { privateAttributes, privateCount in
                try PKCS11Error.check(generate(session, &mechanism, publicAttributes, publicCount, privateAttributes,
                                               privateCount, &publicHandle, &privateHandle),
                                      "C_GenerateKeyPair", context: label)
            }
        }
        return (publicHandle, privateHandle)
    }

    /// The raw 32-byte point from `CKA_EC_POINT`: a DER OCTET STRING (PKCS#11 3.0), or the bare point.
    static func rawPoint(_ value: [UInt8]) -> [UInt8]? {
        if value.count == 34, value[0] == 0x04, value[1] == 0x20 { return Array(value[2...]) }
        return value.count == 32 ? value : nil
    }
}
