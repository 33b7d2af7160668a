import CPKCS11
import Foundation
import Logging
import Testing
import VaultTestSupport

@testable import KeyCustody

/// Someone with the token's PIN imports a key they know under a vault key's label, before the vault generates it
/// (an archive key at archival) or in place of one it generated (a master key): the vault must neither adopt nor
/// use such an object, since what it wrapped would stay readable to them after shredding.
@Suite("PKCS#11: key objects the vault did not generate are refused", .serialized)
struct PlantedKeyTests {
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
    let force = try! ForceID(force: "wmp")
    let module = TestCustody.module

    func pin() -> SecureBytes { TestCustody.secret(TestCustody.userPIN) }

    /// Imports `key` as a token object labelled `label`, flagged sensitive and not extractable (as the vault's own
    /// keys are), with the token's ordinary tools: `C_CreateObject` under the user PIN.
    func plant(_ label: String, key: [UInt8], token label_: String) throws {
        let token = try PKCS11Token(module: try PKCS11Module.load(module), label: label_, pin: pin(), logger: logger)
        try token.withSession("plant") { session in
            var template = PKCS11Token.aesKeyTemplate(label: label, tokenObject: true)
            template.add(CK_ATTRIBUTE_TYPE(CKA_PRIVATE), bool: true)
            template.add(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), bool: true)
            template.add(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), bool: false)
            _ = try token.importKey(key, template: template, session: session)
        }
    }

    func context(_ extract: ExtractID = .generate()) throws -> WrapContext {
        WrapContext(force: force, dataset: try DatasetID(dataset: "crime"), extract: extract)
    }

    func freshCustody() throws -> (String, PKCS11Custody) { try TestCustody.freshToken(force: force, prefix: "plant") }

    @Test("a key imported under the next archive key's label is refused at archival and never becomes the key")
    func plantedArchiveKey() async throws {
        let (token, custody) = try freshCustody()
        let extract = ExtractID.generate()
        let archive = KEKID.archive(force: force, extract: extract)
        try plant(archive.description, key: [UInt8](repeating: 7, count: 32), token: token)
        let refused = await #expect(throws: CustodyError.self) { _ = try await custody.createArchiveKey(for: extract) }
        #expect(refused?.code == .keyObjectUntrusted)
        #expect(refused?.message.contains(archive.description) == true)
        #expect(refused?.message.contains("CKA_LOCAL is not true") == true)
        #expect(try await custody.status().contains { $0.id == archive } == false)
        // The vault's own keys still work, and once the planted object is gone the archive key is made on the token.
        let key = try await custody.generateDataKey(for: try context(extract))
        #expect(try PKCS11Administration.destroyKeyObject(module: module, tokenLabel: token, pin: pin(),
                                                          keyLabel: archive.description))
        #expect(try await custody.createArchiveKey(for: extract) == archive)
        let underArchive = try await custody.rewrap(
            key.wrapped, context: try context(extract), to: archive,
            justification: Justification(principal: "vaultd", purpose: .rewrap, requestID: "k"))
        #expect(underArchive.kek == archive)
        let protection = try PKCS11Administration.keyProtection(module: module, tokenLabel: token, pin: pin(),
                                                                keyLabel: archive.description)
        #expect(protection.sensitive && !protection.extractable && !protection.valueReadable)
    }

    @Test("a master key object replaced by an imported one is refused for every use, by a custody opened afresh")
    func replacedMasterKey() async throws {
        let (token, custody) = try freshCustody()
        let master = KEKID.master(force: force, version: 1)
        let original = try context()
        let before = try await custody.generateDataKey(for: original)
        #expect(try PKCS11Administration.destroyKeyObject(module: module, tokenLabel: token, pin: pin(),
                                                          keyLabel: master.description))
        try plant(master.description, key: [UInt8](repeating: 9, count: 32), token: token)
        let reopened = try PKCS11Custody.open(module: module, tokenLabel: token, pin: pin(), force: force,
                                              mode: .readWrite, logger: logger)
        let wrap = await #expect(throws: CustodyError.self) { _ = try await reopened.generateDataKey(for: try context()) }
        #expect(wrap?.code == .keyObjectUntrusted)
        let read = Justification(principal: "analyst-1", useCase: "uc", purpose: .useCaseRead, requestID: "r")
        let unwrap = await #expect(throws: CustodyError.self) {
            _ = try await reopened.unwrap(before.wrapped, context: original, justification: read)
        }
        #expect(unwrap?.code == .keyObjectUntrusted)
    }
}
