import Foundation
import KeyCustody
import Testing
import VaultTestSupport

/// Project Wycheproof known-answer tests: every vector of each file runs; `valid` must pass, `invalid` must fail.
/// Each test prints how many vectors ran.
@Suite("Wycheproof")
struct WycheproofTests {
    struct File<Group: Decodable>: Decodable {
        let algorithm: String
        let numberOfTests: Int
        let testGroups: [Group]
    }

    struct Tally {
        let name: String
        var valid = 0
        var invalid = 0
        var failures: [String] = []
        /// Vectors whose parameters the primitive refuses by design (checked to be refused, not mishandled).
        var notApplicable: [String] = []

        mutating func record(id: Int, result: String, passed: Bool) {
            if result == "valid" { valid += 1 } else { invalid += 1 }
            if !passed { failures.append("tcId \(id) (\(result))") }
        }

        func report(expected: Int) {
            let skipped = notApplicable.isEmpty ? "" : "; \(notApplicable.count) not applicable and refused: "
                + notApplicable.joined(separator: ", ")
            print("wycheproof \(name): \(valid + invalid) vectors ran (\(valid) valid accepted, \(invalid) invalid "
                + "rejected)\(skipped)\(failures.isEmpty ? "" : "; FAILED: \(failures.joined(separator: ", "))")")
            #expect(valid + invalid + notApplicable.count == expected, "\(name): not every vector ran")
            #expect(failures.isEmpty, "\(name): \(failures.joined(separator: ", "))")
        }
    }

    struct AEADGroup: Decodable {
        let tests: [AEADTest]
    }

    struct AEADTest: Decodable {
        let tcId: Int
        let key, iv, aad, msg, ct, tag: String
        let result: String
    }

    @Test("AES-GCM: aes_gcm_test.json")
    func aesGCM() throws {
        guard let file = try TestVectors.load(File<AEADGroup>.self, "wycheproof/aes_gcm_test.json") else { return }
        var tally = Tally(name: "aes_gcm_test.json")
        for test in file.testGroups.flatMap(\.tests) {
            var key = hexBytes(test.key)
            let secret = SecureBytes(consuming: &key)
            let iv = hexBytes(test.iv), aad = hexBytes(test.aad), msg = hexBytes(test.msg)
            let ct = hexBytes(test.ct), tag = hexBytes(test.tag)
            var passed: Bool
            if iv.count > AESGCMContext.maximumNonceByteCount {
                // Beyond OpenSSL's 1024-bit IV limit: the primitive must refuse, never compute something else.
                let refused = #expect(throws: CustodyError.self) {
                    try msg.withUnsafeBytes { try AESGCM.seal(key: secret, nonce: iv, plaintext: $0, aad: aad) }
                }
                #expect(refused?.code == .invalidParameter)
                #expect((try? AESGCM.open(key: secret, nonce: iv, ciphertext: ct, tag: tag, aad: aad)) == nil)
                tally.notApplicable.append("tcId \(test.tcId) (\(iv.count * 8)-bit IV)")
                continue
            }
            if test.result == "valid" {
                // Both directions must reproduce the vector.
                let sealed = try? msg.withUnsafeBytes { try AESGCM.seal(key: secret, nonce: iv, plaintext: $0, aad: aad) }
                let opened = try? AESGCM.open(key: secret, nonce: iv, ciphertext: ct, tag: tag, aad: aad)
                passed = sealed?.ciphertext == ct && sealed?.tag == tag
                    && opened.map { $0.withUnsafeBytes { Array($0) } } == msg
            } else {
                passed = (try? AESGCM.open(key: secret, nonce: iv, ciphertext: ct, tag: tag, aad: aad)) == nil
            }
            tally.record(id: test.tcId, result: test.result, passed: passed)
        }
        tally.report(expected: file.numberOfTests)
    }

    @Test("XChaCha20-Poly1305: xchacha20_poly1305_test.json")
    func xchacha() throws {
        guard let file = try TestVectors.load(File<AEADGroup>.self, "wycheproof/xchacha20_poly1305_test.json")
        else { return }
        var tally = Tally(name: "xchacha20_poly1305_test.json")
        for test in file.testGroups.flatMap(\.tests) {
            var key = hexBytes(test.key)
            let secret = SecureBytes(consuming: &key)
            let iv = hexBytes(test.iv), aad = hexBytes(test.aad), msg = hexBytes(test.msg)
            let sealed = hexBytes(test.ct) + hexBytes(test.tag)
            let passed: Bool
            if test.result == "valid" {
                let encrypted = try? msg.withUnsafeBytes {
                    try XChaCha20Poly1305.seal(key: secret, nonce: iv, plaintext: $0, aad: aad)
                }
                let opened = try? XChaCha20Poly1305.open(key: secret, nonce: iv, sealed: sealed, aad: aad)
                passed = encrypted == sealed && opened.map { $0.withUnsafeBytes { Array($0) } } == msg
            } else {
                passed = (try? XChaCha20Poly1305.open(key: secret, nonce: iv, sealed: sealed, aad: aad)) == nil
            }
            tally.record(id: test.tcId, result: test.result, passed: passed)
        }
        tally.report(expected: file.numberOfTests)
    }

    struct HKDFGroup: Decodable {
        let tests: [HKDFTest]
    }

    struct HKDFTest: Decodable {
        let tcId: Int
        let ikm, salt, info: String
        let size: Int
        let okm: String
        let result: String
    }

    @Test("HKDF-SHA-512: hkdf_sha512_test.json, full and expand-only")
    func hkdf() throws {
        guard let file = try TestVectors.load(File<HKDFGroup>.self, "wycheproof/hkdf_sha512_test.json") else { return }
        var tally = Tally(name: "hkdf_sha512_test.json")
        for test in file.testGroups.flatMap(\.tests) {
            var ikm = hexBytes(test.ikm)
            let secret = SecureBytes(consuming: &ikm)
            let salt = hexBytes(test.salt), info = hexBytes(test.info)
            let full = try? HKDF.deriveKey(.sha512, inputKeyMaterial: secret, salt: salt, info: info,
                                           outputByteCount: test.size)
            // Expand-only (what Cobblestone uses): PRK = HMAC(salt or zeros, IKM), then HKDF-Expand.
            let prkBytes = secret.withUnsafeBytes { ikmBytes in
                (salt.isEmpty ? [UInt8](repeating: 0, count: 64) : salt).withUnsafeBytes {
                    HMAC.authenticationCode(.sha512, key: $0, message: ikmBytes)
                }
            }
            var prkCopy = prkBytes
            let prk = SecureBytes(consuming: &prkCopy)
            let expanded = try? HKDF.expand(.sha512, pseudoRandomKey: prk, info: info, outputByteCount: test.size)
            let okm = hexBytes(test.okm)
            let passed: Bool
            if test.result == "valid" {
                passed = full.map { $0.withUnsafeBytes { Array($0) } } == okm
                    && expanded.map { $0.withUnsafeBytes { Array($0) } } == okm
            } else {
                passed = full == nil && expanded == nil
            }
            tally.record(id: test.tcId, result: test.result, passed: passed)
        }
        tally.report(expected: file.numberOfTests)
    }

    struct MACGroup: Decodable {
        let tagSize: Int
        let tests: [MACTest]
    }

    struct MACTest: Decodable {
        let tcId: Int
        let key, msg, tag: String
        let result: String
    }

    @Test("HMAC-SHA-256: hmac_sha256_test.json")
    func hmac() throws {
        guard let file = try TestVectors.load(File<MACGroup>.self, "wycheproof/hmac_sha256_test.json") else { return }
        var tally = Tally(name: "hmac_sha256_test.json")
        for group in file.testGroups {
            for test in group.tests {
                let key = hexBytes(test.key), msg = hexBytes(test.msg), tag = hexBytes(test.tag)
                let valid = key.withUnsafeBytes { k in
                    msg.withUnsafeBytes { m in
                        HMAC.isValid(tag, .sha256, key: k, message: m,
                                     truncatedTo: group.tagSize == 256 ? nil : group.tagSize / 8)
                    }
                }
                tally.record(id: test.tcId, result: test.result, passed: valid == (test.result == "valid"))
            }
        }
        tally.report(expected: file.numberOfTests)
    }

    struct EdDSAGroup: Decodable {
        struct Key: Decodable { let pk: String }
        let publicKey: Key
        let tests: [EdDSATest]
    }

    struct EdDSATest: Decodable {
        let tcId: Int
        let msg, sig: String
        let result: String
    }

    @Test("Ed25519: ed25519_test.json")
    func ed25519() throws {
        guard let file = try TestVectors.load(File<EdDSAGroup>.self, "wycheproof/ed25519_test.json") else { return }
        var tally = Tally(name: "ed25519_test.json")
        for group in file.testGroups {
            let key = try Ed25519.PublicKey(rawRepresentation: hexBytes(group.publicKey.pk))
            for test in group.tests {
                let valid = key.isValidSignature(hexBytes(test.sig), for: hexBytes(test.msg))
                tally.record(id: test.tcId, result: test.result, passed: valid == (test.result == "valid"))
            }
        }
        tally.report(expected: file.numberOfTests)
    }
}
