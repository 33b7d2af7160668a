import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

@Suite("HTTP mapping", .backendIndependent)
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

@Suite("use case request bodies", .backendIndependent)
struct UseCaseBodyTests {
    let force = try! ForceID(force: "wmp")
    let id = try! ResourceID("serious-violence")

    @Test("a complete body parses, with its validity window")
    func valid() throws {
        let body = #"{"description":"SV","lawful_basis":"s.8","datasets":["crime"],"principals":["analyst-1"],"valid_until":"2027-01-31T00:00:00Z"}"#
        let useCase = try UseCase(requestBody: Array(body.utf8), force: force, id: id)
        #expect(useCase.datasets.map(\.rawValue) == ["crime"])
        #expect(useCase.validUntil.map { Timestamp.format(secondsSinceEpoch: Int($0)) } == "2027-01-31T00:00:00Z")
    }

    @Test("typos, bad times, bad ids and broken JSON are refused", arguments: [
        #"{"description":"SV","lawful_basis":"s.8","datasets":["crime"],"principals":["a"],"valid_untill":"2027-01-31T00:00:00Z"}"#,
        #"{"description":"SV","lawful_basis":"s.8","datasets":["crime"],"principals":["a"],"valid_from":"yesterday"}"#,
        #"{"description":"SV","lawful_basis":"s.8","datasets":["../x"],"principals":["a"]}"#,
        #"{"description":"SV","lawful_basis":"s.8","datasets":["crime"],"principals":["a b"]}"#,
        #"{"description":"SV","datasets":["crime"],"principals":["a"]}"#,
        "{",
    ])
    func invalid(body: String) {
        #expect(throws: VaultError(.invalidParameter, "")) {
            try UseCase(requestBody: Array(body.utf8), force: force, id: id)
        }
    }
}
