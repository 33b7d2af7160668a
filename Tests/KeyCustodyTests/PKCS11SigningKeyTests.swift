import CPKCS11
import Logging
import Testing
import VaultTestSupport

@testable import KeyCustody

/// The audit key on a token: an Ed25519 key pair generated on SoftHSM2, signing with CKM_EDDSA (issue 17, item 10).
@Suite("an Ed25519 signing key on a PKCS#11 token", .enabled(if: TestBackend.softHSMPresent))
struct PKCS11SigningKeyTests {
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    @Test("generated on the token, found again by label, its signatures verify as RFC 8032 Ed25519; an imported key under the label is refused")
    func signs() throws {
        let token = try TestCustody.newToken("audit")
        let pin = { TestCustody.secret(TestCustody.userPIN) }
        #expect(try !PKCS11SigningKey.exists(module: TestCustody.module, tokenLabel: token, pin: pin(),
                                             label: "vault-audit", logger: logger))
        // Not there, and not to be created: refused, nothing made.
        let missing = #expect(throws: CustodyError.self) {
            try PKCS11SigningKey.open(module: TestCustody.module, tokenLabel: token, pin: pin(), label: "vault-audit",
                                      create: false, logger: logger)
        }
        #expect(missing?.code == .keyObjectMissing)
        let key = try PKCS11SigningKey.open(module: TestCustody.module, tokenLabel: token, pin: pin(),
                                            label: "vault-audit", create: true, logger: logger)
        let message = Array("checkpoint wmp 7".utf8)
        let signature = try key.sign(message)
        let publicKey = try Ed25519.PublicKey(rawRepresentation: key.publicKey)
        #expect(publicKey.isValidSignature(signature, for: message))
        #expect(!publicKey.isValidSignature(signature, for: Array("checkpoint wmp 8".utf8)))
        // Opened again (a restart): the same key.
        let again = try PKCS11SigningKey.open(module: TestCustody.module, tokenLabel: token, pin: pin(),
                                              label: "vault-audit", create: true, logger: logger)
        #expect(again.publicKey == key.publicKey)
        #expect(try PKCS11SigningKey.exists(module: TestCustody.module, tokenLabel: token, pin: pin(),
                                            label: "vault-audit", logger: logger))

        // Someone with the PIN imports a key pair they know under another label the vault would use: refused.
        let seed = [UInt8](repeating: 9, count: 32)
        var seedCopy = seed
        let known = try Ed25519.PrivateKey(seed: SecureBytes(consuming: &seedCopy))
        let session = try PKCS11Token(module: try PKCS11Module.load(TestCustody.module), label: token, pin: pin(),
                                      logger: logger)
        try session.withSession("plant") { handle in
            for (objectClass, value) in [(CKO_PRIVATE_KEY, seed), (CKO_PUBLIC_KEY, [0x04, 0x20] + known.publicKey.rawRepresentation)] {
                var template = AttributeTemplate()
                template.add(CK_ATTRIBUTE_TYPE(CKA_CLASS), ulong: CK_ULONG(objectClass))
                template.add(CK_ATTRIBUTE_TYPE(CKA_KEY_TYPE), ulong: CK_ULONG(CKK_EC_EDWARDS))
                template.add(CK_ATTRIBUTE_TYPE(CKA_TOKEN), bool: true)
                template.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array("planted-audit".utf8))
                template.add(CK_ATTRIBUTE_TYPE(CKA_EC_PARAMS), bytes: PKCS11SigningKey.ed25519Parameters)
                if objectClass == CKO_PRIVATE_KEY {
                    template.add(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), bool: true)
                    template.add(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), bool: false)
                    template.add(CK_ATTRIBUTE_TYPE(CKA_SIGN), bool: true)
                    _ = try session.importKey(value, template: template, session: handle)
                } else {
                    template.add(CK_ATTRIBUTE_TYPE(CKA_EC_POINT), bytes: value)
                    let create = try session.module.function(\.C_CreateObject, "C_CreateObject")
                    var object = CK_OBJECT_HANDLE(0)
                    try template.withAttributes { attributes, count in
                        try PKCS11Error.check(create(handle, attributes, count, &object), "C_CreateObject")
                    }
                }
            }
        }
        let planted = #expect(throws: CustodyError.self) {
            try PKCS11SigningKey.open(module: TestCustody.module, tokenLabel: token, pin: pin(),
                                      label: "planted-audit", create: true, logger: logger)
        }
        #expect(planted?.code == .keyObjectUntrusted)
    }
}
