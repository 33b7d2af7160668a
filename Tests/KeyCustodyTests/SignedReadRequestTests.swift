import Foundation
import KeyCustody
import Testing
import VaultTestSupport

/// The signed read request (DESIGN 5.6) and the principal's key file.
@Suite("signed read requests")
struct SignedReadRequestTests {
    let force = try! ForceID(force: "wmp")
    let dataset = try! DatasetID(dataset: "crime-records")

    @Test("the canonical 5.6 line, signed by the principal; it survives the header round trip and nothing else")
    func roundTrip() throws {
        let key = Ed25519.PrivateKey()
        let nonce = [UInt8](repeating: 7, count: 16)
        let request = ReadRequest(force: force, dataset: dataset, principal: "analyst-wmp", purpose: .useCaseRead,
                                  useCase: "serious-violence", issued: 1_796_205_600, lifetime: 300, nonce: nonce)
        let signed = SignedReadRequest(signing: request, with: key)
        #expect(String(decoding: signed.line, as: UTF8.self) == """
            {"dataset":"crime-records","expires":"2026-12-02T10:05:00Z","extract":"current","force":"wmp",\
            "format":"vault-read-request-v1","issued":"2026-12-02T10:00:00Z","nonce":"BwcHBwcHBwcHBwcHBwcHBw==",\
            "principal":"analyst-wmp","purpose":"use-case-read","use_case":"serious-violence"}
            """)
        #expect(signed.isSigned(by: key.publicKey))
        #expect(!signed.isSigned(by: Ed25519.PrivateKey().publicKey))
        let back = try SignedReadRequest(headerValue: signed.headerValue)
        #expect(back == signed && back.request == request && back.isSigned(by: key.publicKey))
        // The signature is over these exact bytes (Ed25519 is deterministic, RFC 8032).
        #expect(signed.signature == key.signature(for: signed.line))
    }

    @Test("a changed field breaks the signature; malformed or unknown shapes are refused with their reason")
    func refusals() throws {
        let key = Ed25519.PrivateKey()
        let signed = SignedReadRequest(signing: ReadRequest(
            force: force, dataset: dataset, principal: "analyst-wmp", purpose: .useCaseRead, useCase: "sv",
            issued: 1_796_205_600), with: key)
        var envelope = signed.envelope.objectValue!
        var request = envelope["request"]!.objectValue!
        request["dataset"] = .string("intelligence")
        envelope["request"] = .object(request)
        let retargeted = try SignedReadRequest(envelope: .object(envelope))
        #expect(!retargeted.isSigned(by: key.publicKey), "a re-targeted request no longer verifies")
        func reason(_ text: String) -> String? {
            do { _ = try SignedReadRequest(bytes: Array(text.utf8)); return nil } catch let error as CustodyError {
                return error.message
            } catch { return "\(error)" }
        }
        let line = String(decoding: signed.line, as: UTF8.self)
        let signature = Base64.encode(signed.signature)
        #expect(reason("not json")?.contains("not JSON") == true)
        #expect(reason("{\"request\":\(line)}")?.contains("signature") == true)
        #expect(reason("{\"request\":\(line),\"signature\":\"\(signature)\",\"x\":1}")?.contains("unknown field") == true)
        #expect(reason("{\"request\":\(line.replacingOccurrences(of: "\"use_case\"", with: "\"usecase\"")),"
                       + "\"signature\":\"\(signature)\"}")?.contains("unknown field") == true)
        #expect(reason("{\"request\":\(line.replacingOccurrences(of: "use-case-read", with: "peek")),"
                       + "\"signature\":\"\(signature)\"}")?.contains("purpose") == true)
        #expect(reason("{\"request\":\(line),\"signature\":\"AAAA\"}")?.contains("64 bytes") == true)
        #expect(reason(String(repeating: " ", count: 5000))?.contains("larger") == true)
        #expect(throws: CustodyError.self) { try SignedReadRequest(headerValue: "%%%") }
    }

    @Test("the principal key file: 0600, round trip, refused when others can read it")
    func keyFile() throws {
        let directory = try TemporaryDirectory("principal-key")
        let key = PrincipalSigningKey(principal: "analyst-wmp")
        let path = directory.file("analyst.key")
        try key.document.withUnsafeBytes { try DurableFile.write($0, to: path, permissions: 0o600) }
        let loaded = try PrincipalSigningKey.load(path: path)
        #expect(loaded.principal == "analyst-wmp" && loaded.key.publicKey == key.key.publicKey)
        chmod(path, 0o644)
        #expect(throws: CustodyError.self) { try PrincipalSigningKey.load(path: path) }
        #expect(throws: CustodyError.self) {
            var bytes = Array("{\"format\":\"vault-principal-key-v1\",\"principal\":\"x\",\"private_key\":\"AAAA\"}".utf8)
            _ = try PrincipalSigningKey(document: SecureBytes(consuming: &bytes))
        }
    }
}
