internal import CPKCS11
import Logging

/// Token administration outside the custody protocol: setting up a software token (SoftHSM2) and the incident
/// drills the test suite runs against a real token (sessions cut, a key deleted behind the vault's back).
/// Production HSMs are initialised with their vendor's tools.
public enum PKCS11Administration {
    /// The labels of the initialised tokens the module presents.
    public static func tokenLabels(module path: String) throws -> [String] {
        let module = try PKCS11Module.load(path)
        return try module.sharing { _ in try PKCS11Token.tokens(in: module).filter { $0.1.initialized }.map(\.1.label) }
    }

    /// Initialises the first free (uninitialised) token of the module with `label`, then sets its user PIN.
    /// Both PINs come from secure memory, never from an argument list.
    public static func initializeToken(module path: String, label: String, soPIN: SecureBytes, userPIN: SecureBytes)
        throws
    {
        guard !label.isEmpty, label.utf8.count <= 32 else {
            throw CustodyError(.invalidParameter, "a token label is 1 to 32 bytes")
        }
        let module = try PKCS11Module.load(path)
        // Initialising a token changes the module's slot list: nothing else may call the module meanwhile.
        try module.exclusively {
            guard let free = try PKCS11Token.tokens(in: module).first(where: { !$0.1.initialized })?.0 else {
                throw CustodyError(.tokenUnavailable, "PKCS#11 module \(path) has no free token to initialise")
            }
            var padded = [UInt8](repeating: 0x20, count: 32)
            padded.replaceSubrange(0..<label.utf8.count, with: Array(label.utf8))
            let initToken = try module.function(\.C_InitToken, "C_InitToken")
            try soPIN.withUnsafeBytes { pin in
                try PKCS11Error.check(initToken(free, mutablePointer(pin), CK_ULONG(pin.count), &padded), "C_InitToken",
                                      context: label)
            }
            // The slot id of a freshly initialised token may change (SoftHSM2 renumbers it): find it by label.
            guard let slot = try PKCS11Token.tokens(in: module).first(where: { $0.1.label == label && $0.1.initialized })?.0
            else { throw CustodyError(.tokenUnavailable, "token \(label) vanished after initialisation") }
            let open = try module.function(\.C_OpenSession, "C_OpenSession")
            let close = try module.function(\.C_CloseSession, "C_CloseSession")
            let login = try module.function(\.C_Login, "C_Login")
            let logout = try module.function(\.C_Logout, "C_Logout")
            let initPIN = try module.function(\.C_InitPIN, "C_InitPIN")
            var session = CK_SESSION_HANDLE(0)
            try PKCS11Error.check(open(slot, CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &session),
                                  "C_OpenSession")
            defer { _ = close(session) }
            try soPIN.withUnsafeBytes { pin in
                try PKCS11Error.check(login(session, CK_USER_TYPE(CKU_SO), mutablePointer(pin), CK_ULONG(pin.count)),
                                      "C_Login (security officer)")
            }
            defer { _ = logout(session) }
            try userPIN.withUnsafeBytes { pin in
                try PKCS11Error.check(initPIN(session, mutablePointer(pin), CK_ULONG(pin.count)), "C_InitPIN")
            }
        }
    }

    /// Closes every session this process has with the token (`C_CloseAllSessions`), as a token reset or a
    /// failover of a network HSM would. The custody must log in again by itself.
    public static func closeAllSessions(module path: String, tokenLabel: String) throws {
        let module = try PKCS11Module.load(path)
        let closeAll = try module.function(\.C_CloseAllSessions, "C_CloseAllSessions")
        try module.sharing { _ in
            guard let slot = try PKCS11Token.tokens(in: module).first(where: { $0.1.label == tokenLabel })?.0 else {
                throw CustodyError(.tokenUnavailable, "no token labelled \(tokenLabel)")
            }
            try PKCS11Error.check(closeAll(slot), "C_CloseAllSessions")
        }
    }

    /// Destroys the key object labelled `keyLabel` directly on the token, bypassing the vault (an operator's
    /// mistake or an attack). Returns false when there was no such object.
    public static func destroyKeyObject(module path: String, tokenLabel: String, pin: SecureBytes, keyLabel: String)
        throws -> Bool
    {
        let token = try PKCS11Token(module: try PKCS11Module.load(path), label: tokenLabel, pin: pin,
                                    logger: Logger(label: "pkcs11-admin") { _ in SwiftLogNoOpLogHandler() })
        return try token.withSession("destroy object") { session in
            let found = try token.findObjects(session: session,
                                              template: PKCS11Token.secretKeyTemplate(label: keyLabel))
            for handle in found { try token.destroyObject(handle, session: session) }
            return !found.isEmpty
        }
    }

    /// What the token says about the key object labelled `keyLabel`: the attributes that keep it inside the
    /// token, and whether its value can be read out (it never should).
    public struct KeyProtection: Sendable, Equatable {
        public let sensitive: Bool
        public let extractable: Bool
        public let onToken: Bool
        public let valueReadable: Bool
        public let keyBytes: Int

        public init(sensitive: Bool, extractable: Bool, onToken: Bool, valueReadable: Bool, keyBytes: Int) {
            self.sensitive = sensitive
            self.extractable = extractable
            self.onToken = onToken
            self.valueReadable = valueReadable
            self.keyBytes = keyBytes
        }
    }

    public static func keyProtection(module path: String, tokenLabel: String, pin: SecureBytes, keyLabel: String)
        throws -> KeyProtection
    {
        let token = try PKCS11Token(module: try PKCS11Module.load(path), label: tokenLabel, pin: pin,
                                    logger: Logger(label: "pkcs11-admin") { _ in SwiftLogNoOpLogHandler() })
        return try token.withSession("describe key") { session in
            let handle = try token.key(keyLabel, session: session)
            func flag(_ type: CK_ATTRIBUTE_TYPE) throws -> Bool {
                try token.attribute(type, of: handle, session: session)?.first == UInt8(CK_TRUE)
            }
            var readable = true
            do {
                readable = try token.attribute(CK_ATTRIBUTE_TYPE(CKA_VALUE), of: handle, session: session) != nil
            } catch let error as CustodyError where error.underlying == "pkcs11:CKR_ATTRIBUTE_SENSITIVE" {
                readable = false
            }
            let length = try token.attribute(CK_ATTRIBUTE_TYPE(CKA_VALUE_LEN), of: handle, session: session)
                .map { bytes in bytes.withUnsafeBytes { $0.loadUnaligned(as: CK_ULONG.self) } } ?? 0
            return KeyProtection(sensitive: try flag(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE)),
                                 extractable: try flag(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE)),
                                 onToken: try flag(CK_ATTRIBUTE_TYPE(CKA_TOKEN)), valueReadable: readable,
                                 keyBytes: Int(length))
        }
    }

    /// A known-answer test of the token's AES-GCM (`CKM_AES_GCM` through `C_Encrypt` and `C_Decrypt`): `key` is
    /// imported as a short-lived session object, used once each way, and destroyed. Returns ciphertext || tag, and
    /// the decryption of `ciphertextAndTag` (nil when the token refused it as inauthentic). Used to check a token
    /// against published vectors (Wycheproof) before trusting it with a force's keys.
    public static func knownAnswerGCM(
        module path: String, tokenLabel: String, pin: SecureBytes, key: [UInt8], iv: [UInt8], aad: [UInt8],
        plaintext: [UInt8], ciphertextAndTag: [UInt8]
    ) throws -> (sealed: [UInt8], opened: [UInt8]?) {
        let token = try PKCS11Token(module: try PKCS11Module.load(path), label: tokenLabel, pin: pin,
                                    logger: Logger(label: "pkcs11-admin") { _ in SwiftLogNoOpLogHandler() })
        return try token.withSession("known-answer test") { session in
            let handle = try token.importKey(key, template: PKCS11Token.aesKeyTemplate(label: nil, tokenObject: false),
                                             session: session)
            defer { try? token.destroyObject(handle, session: session) }
            let sealed = try token.encrypt(key: handle, iv: iv, aad: aad,
                                           plaintext: plaintext.withUnsafeBytes { SecureBytes(copying: $0) },
                                           session: session)
            var opened: [UInt8]?
            do {
                let plain = try token.decrypt(key: handle, iv: iv, aad: aad, ciphertext: ciphertextAndTag,
                                              session: session)
                opened = plain.withUnsafeBytes { Array($0) }
            } catch let error as CustodyError where error.code == .contextMismatch {
                opened = nil
            }
            return (sealed, opened)
        }
    }

    private static func mutablePointer(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutablePointer<UInt8> {
        UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: UInt8.self))
    }
}
