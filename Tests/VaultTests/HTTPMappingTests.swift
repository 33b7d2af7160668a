import KeyCustody
import Testing

@testable import Vault

@Suite("HTTP mapping")
struct HTTPMappingTests {
    @Test("Range headers: single ranges parse; everything else is refused")
    func ranges() {
        #expect(ByteRange.parse("bytes=0-99") == .closed(0, 99))
        #expect(ByteRange.parse("bytes=100-") == .from(100))
        #expect(ByteRange.parse("bytes=-500") == .suffix(500))
        for bad in ["bytes=5-1", "bytes=-", "bytes=a-b", "bytes=0-1,5-6", "items=0-1", "bytes=-0", "bytes= 0-1",
                    "bytes=99999999999999999999-", "", "bytes=0x10-"] {
            #expect(ByteRange.parse(bad) == nil, "\(bad)")
        }
        #expect(ByteRange.closed(0, 99).resolve(size: 50) == 0..<50)
        #expect(ByteRange.closed(50, 99).resolve(size: 50) == nil)
        #expect(ByteRange.from(10).resolve(size: 50) == 10..<50)
        #expect(ByteRange.suffix(500).resolve(size: 50) == 0..<50)
        #expect(ByteRange.suffix(5).resolve(size: 50) == 45..<50)
        #expect(ByteRange.suffix(5).resolve(size: 0) == nil)
    }

    @Test("errors map to statuses; refusals are 403 with the rule's code; internal errors stay internal")
    func statuses() {
        #expect(HTTPErrorDescription.from(VaultError(.notNamed, "x"))?.status == 403)
        #expect(HTTPErrorDescription.from(VaultError(.notNamed, "x"))?.code == "not_named")
        #expect(HTTPErrorDescription.from(VaultError(.archivedExtract, "x"))?.status == 403)
        #expect(HTTPErrorDescription.from(VaultError(.notFound, "x"))?.status == 404)
        #expect(HTTPErrorDescription.from(VaultError(.duplicateExtract, "x"))?.status == 409)
        #expect(HTTPErrorDescription.from(VaultError(.malformedHeader, "x"))?.status == 400)
        #expect(HTTPErrorDescription.from(VaultError(.catalogUnavailable, "x"))?.status == 503)
        #expect(HTTPErrorDescription.from(CustodyError(.invalidIdentifier, "x"))?.status == 400)
        #expect(HTTPErrorDescription.from(VaultError(.io, "disk")) == nil)
        #expect(HTTPErrorDescription.from(CustodyError(.wrongPassphrase, "x")) == nil)
        #expect(HTTPErrorDescription(status: 403, code: "not_named", message: "m").json.canonicalString
            == #"{"error":{"code":"not_named","message":"m"}}"#)
    }
}
