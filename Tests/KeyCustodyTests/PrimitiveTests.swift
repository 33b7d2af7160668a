import KeyCustody
import Testing
import VaultTestSupport

@Suite("Primitives")
struct PrimitiveTests {
    @Test("SecureBytes never shows its bytes and compares by content")
    func secureBytes() {
        let a = SecureBytes.random(count: 32)
        let b = a.withUnsafeBytes { SecureBytes(copying: $0) }
        #expect(a == b)
        #expect(a != SecureBytes.random(count: 32))
        #expect(a != SecureBytes.random(count: 31))
        #expect("\(a)" == "SecureBytes(32 bytes, redacted)")
        #expect(String(reflecting: a) == "SecureBytes(32 bytes, redacted)")
        let hex = Hex.encode(a.withUnsafeBytes { Array($0) })
        #expect(!"\(a)".contains(hex.prefix(8)))
    }

    @Test("SHA-256 and SHA-512 known answers, one-shot and streamed")
    func digests() {
        let abc = Array("abc".utf8)
        #expect(Hex.encode(Digest.hash(.sha256, abc))
            == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Hex.encode(Digest.hash(.sha512, abc)).hasPrefix("ddaf35a193617abacc417349ae204131"))
        let streamed = Digest(.sha256)
        streamed.update(Array("a".utf8))
        streamed.update(Array("bc".utf8))
        #expect(streamed.finalize() == Digest.hash(.sha256, abc))
    }

    @Test("Argon2id matches an independent implementation (Python cryptography 48)")
    func argon2id() throws {
        var passphrase = Array("correct horse battery staple".utf8)
        let secret = SecureBytes(consuming: &passphrase)
        let key = try Argon2id.deriveKey(passphrase: secret, salt: Array(0..<16), parameters: .interactive)
        #expect(Hex.encode(key.withUnsafeBytes { Array($0) })
            == "c05ce4c4dd7e0e45ee6011cc59d068ade47df1b01fc0cf9cd4678bdf68a5b7b0")
        var other = Array("vault-keyring-passphrase".utf8)
        let key2 = try Argon2id.deriveKey(passphrase: SecureBytes(consuming: &other), salt: [UInt8](repeating: 0, count: 16),
                                          parameters: .init(opslimit: 3, memlimit: 8_388_608))
        #expect(Hex.encode(key2.withUnsafeBytes { Array($0) })
            == "3f18bf6a7af4cbb40e14a9f055e532b1c0af008385b0be076fc65e16993ae873")
        #expect(throws: CustodyError(.invalidParameter, "")) {
            try Argon2id.deriveKey(passphrase: secret, salt: [1, 2, 3], parameters: .interactive)
        }
        #expect(throws: CustodyError(.invalidParameter, "")) {
            try Argon2id.deriveKey(passphrase: secret, salt: Array(0..<16),
                                   parameters: .init(opslimit: 3, memlimit: 1 << 40))
        }
    }

    @Test("Ed25519 signs and verifies; altered messages and signatures fail")
    func ed25519() throws {
        let key = Ed25519.PrivateKey()
        let message = Array("checkpoint".utf8)
        var signature = key.signature(for: message)
        #expect(key.publicKey.isValidSignature(signature, for: message))
        #expect(!key.publicKey.isValidSignature(signature, for: Array("checkpoinT".utf8)))
        signature[0] ^= 1
        #expect(!key.publicKey.isValidSignature(signature, for: message))
        let again = try Ed25519.PrivateKey(seed: key.seed)
        #expect(again.publicKey == key.publicKey)
    }

    @Test("base64 is strict: padding required, no stray bits, no whitespace")
    func base64() {
        #expect(Base64.encode(Array("hello".utf8)) == "aGVsbG8=")
        #expect(Base64.decode("aGVsbG8=") == Array("hello".utf8))
        #expect(Base64.decode("") == [])
        #expect(Base64.decode("aGVsbG8") == nil)
        #expect(Base64.decode("aGVsbG9=") == nil)
        #expect(Base64.decode("aGVs bG8=") == nil)
        #expect(Base64.decode("aGVsbG8=\n") == nil)
        #expect(Base64.decode("aGVsbG8_") == nil)
    }

    @Test("canonical JSON: sorted keys, no whitespace, minimal escapes")
    func canonicalJSON() throws {
        let value = JSONValue.object([
            "b": .integer(-12), "a": .string("x\"y\\z\n\u{1}é/"), "c": .array([.bool(true), .null]),
            "A": .object([:]),
        ])
        #expect(value.canonicalString == #"{"A":{},"a":"x\"y\\z\n\u0001é/","b":-12,"c":[true,null]}"#)
        #expect(try JSONParser.parse(value.canonicalString) == value)
        let reparsed = try JSONParser.parse(" { \"b\" : -12 , \"a\":\"x\\\"y\\\\z\\n\\u0001\\u00e9\\/\", \"c\":[ true, null ], \"A\":{} } ")
        #expect(reparsed.canonicalString == value.canonicalString)
    }

    @Test("the JSON parser refuses what the formats never contain", arguments: [
        #"{"a":1,"a":2}"#, #"{"a":1} x"#, #"{"a":1.5}"#, #"{"a":1e3}"#, #"{"a":"\ud800"}"#, "{\"a\":\"\u{1}\"}",
        #"{"a":01}"#, #"{"a":}"#, #"{"a":1"#, #"["#, "", #"{"a":99999999999999999999}"#,
    ])
    func strictParser(text: String) {
        #expect(throws: CustodyError.self) { try JSONParser.parse(text) }
    }

    @Test("secret members decode straight into SecureBytes and write back as base64")
    func secretMembers() throws {
        let text = #"{"id":"k","key":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#
        let value = try JSONParser.parse(Array(text.utf8), secretMembers: ["key"])
        guard case .secret(let key)? = value["key"] else {
            Issue.record("key was not parsed as a secret")
            return
        }
        #expect(key.withUnsafeBytes { Array($0) } == Array(0..<32))
        let written = value.canonicalSecureBytes()
        #expect(written.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == text)
        #expect(throws: CustodyError.self) { try JSONParser.parse(Array(#"{"key":"not base64!"}"#.utf8), secretMembers: ["key"]) }
    }

    @Test("ids follow DESIGN section 5 and refuse traversal, case, length and non-ASCII", arguments: [
        "..", "/", "", "a", "A1", "-ab", "wmp/../x", "wmp\u{0}", "wmé", String(repeating: "a", count: 64), "a b",
    ])
    func invalidResourceIDs(text: String) {
        #expect(throws: CustodyError(.invalidIdentifier, "")) { try ResourceID(force: text) }
    }

    @Test("valid ids, ULIDs and KEK ids round-trip")
    func identifiers() throws {
        for text in ["wmp", "a1", "crime-records", String(repeating: "a", count: 63)] {
            #expect(try ResourceID(force: text).rawValue == text)
        }
        let extract = ExtractID.generate()
        #expect(extract.rawValue.count == 26)
        #expect(try ExtractID(extract.rawValue) == extract)
        #expect(ExtractID.generate(millisecondsSinceEpoch: 0).rawValue.hasPrefix("0000000000"))
        #expect(throws: CustodyError.self) { try ExtractID("01jd0000000000000000000000") }
        #expect(throws: CustodyError.self) { try ExtractID("81JD0000000000000000000000") }
        #expect(try KEKID("fmk:wmp:3") == .master(force: try ForceID(force: "wmp"), version: 3))
        #expect(try KEKID("ak:wmp:\(extract)").description == "ak:wmp:\(extract)")
        for bad in ["fmk:wmp:0", "fmk:wmp:03", "fmk:wmp", "xk:wmp:1", "fmk:WMP:1", "ak:wmp:1", "fmk:wmp:1:2"] {
            #expect(throws: CustodyError.self) { try KEKID(bad) }
        }
    }
}
