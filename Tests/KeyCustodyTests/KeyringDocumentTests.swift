@_spi(Fuzzing) import KeyCustody
import Testing
import VaultTestSupport

/// The keyring document is written straight from the key table (a keyring of 10,000 archive keys is rewritten at
/// every shredding batch); what it writes must stay exactly the canonical JSON of DESIGN 5.3.
@Suite("Keyring document writer")
struct KeyringDocumentTests {
    @Test("the direct writer's document and sealed key list are the canonical JSON of what they hold")
    func canonicalBytes() throws {
        let force = try ForceID(force: "wmp")
        let created = "2026-12-07T10:00:00Z"
        var table = KeyTable.first(force: force, created: created)
        var keys: [KEKID: SecureBytes] = [.master(force: force, version: 1): SecureBytes.random(count: 32)]
        let next = table.nextMaster()
        try table.rotate(to: next, created: created)
        keys[next] = SecureBytes.random(count: 32)
        var archives: [KEKID] = []
        for _ in 0..<50 {
            let id = KEKID.archive(force: force, extract: .generate())
            _ = try table.addArchiveKey(id, created: created)
            keys[id] = SecureBytes.random(count: 32)
            archives.append(id)
        }
        // Destroyed keys keep an entry without key bytes.
        for id in try table.destroy(Array(archives.prefix(10))) { keys[id] = nil }
        let sealingKey = SecureBytes.random(count: 32)
        let document = try KeyringDocument.seal(table: table, keys: keys, salt: SecureRandom.bytes(count: 16),
                                                parameters: .interactive, sealingKey: sealingKey)
        let bytes = document.bytes
        #expect(bytes.last == 0x0A)
        let outer = try JSONParser.parse(Array(bytes.dropLast()))
        #expect(outer.canonicalBytes() == Array(bytes.dropLast()))

        let sealedText = try #require(outer["sealed"]?.stringValue)
        let sealed = try #require(Base64.decode(sealedText))
        let plaintext = try XChaCha20Poly1305.open(
            key: sealingKey, nonce: Array(sealed.prefix(XChaCha20Poly1305.nonceByteCount)),
            sealed: Array(sealed.dropFirst(XChaCha20Poly1305.nonceByteCount)),
            aad: Array("vault-keyring-v1:wmp".utf8))
        let inner = try plaintext.withUnsafeBytes { try JSONParser.parse($0, secretMembers: ["key"]) }
        #expect(inner.canonicalSecureBytes() == plaintext)
        #expect(inner["keys"]?.arrayValue?.count == 52)
        #expect(inner["keys"]?.arrayValue?.filter { $0["key"] == nil }.count == 10)

        // And it opens to the same table and keys.
        let reopened = try KeyringDocument(bytes: bytes, path: "test").open(sealingKey: sealingKey, path: "test")
        #expect(reopened.table == table)
        #expect(reopened.keys == keys)
    }
}
