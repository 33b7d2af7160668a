import Foundation
import KeyCustody
import Logging
import Testing
import VaultTestSupport

@testable import Vault

let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

func secret(_ text: String) -> SecureBytes {
    var bytes = Array(text.utf8)
    return SecureBytes(consuming: &bytes)
}

let exportJustification = Justification(principal: "custodian-1", purpose: .export, requestID: "t")

/// A directory with custody for `wmp` (and `gmp`) on the backend under test, and a sealed sample.
struct SealedFixture {
    let directory: TemporaryDirectory
    let wmp: any KeyCustodian
    let gmp: any KeyCustodian
    let plaintext: [UInt8]

    init(size: Int = 50_000) async throws {
        directory = try TemporaryDirectory()
        wmp = try TestCustody.create(force: try ForceID(force: "wmp"), directory: directory,
                                     passphrase: "wmp passphrase 123")
        gmp = try TestCustody.create(force: try ForceID(force: "gmp"), directory: directory,
                                     passphrase: "gmp passphrase 123")
        plaintext = testBytes(count: size)
        _ = try directory.write("extract.csv", plaintext)
        _ = try await SealedFile.seal(inputPath: directory.file("extract.csv"), outputPath: directory.file("x.vault"),
                                      dataset: try DatasetID(dataset: "crime"), custody: wmp)
    }

    func unseal(_ name: String = "x.vault", custody: (any KeyCustodian)? = nil) async throws {
        _ = try await SealedFile.unseal(inputPath: directory.file(name), outputPath: directory.file("out.csv"),
                                        custody: custody ?? wmp, justification: exportJustification)
    }

    /// The sealed file split into its header line and ciphertext.
    func parts(_ name: String = "x.vault") throws -> (header: [UInt8], body: [UInt8]) {
        let bytes = try directory.read(name)
        let newline = bytes.firstIndex(of: 0x0A)!
        return (Array(bytes[..<newline]), Array(bytes[(newline + 1)...]))
    }
}

@Suite("Sealed extract files (DESIGN 5.4)")
struct SealedFileTests {
    @Test("seal then unseal round-trips; the header is canonical and names everything a reader needs",
          arguments: TestBackend.all)
    func roundTrip(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        try await fixture.unseal()
        #expect(try fixture.directory.read("out.csv") == fixture.plaintext)

        let (headerBytes, body) = try fixture.parts()
        let json = try JSONParser.parse(headerBytes)
        #expect(json.canonicalBytes() == headerBytes, "header is not canonical JSON")
        let header = try SealedFileHeader(line: headerBytes)
        #expect(header.identity.force.rawValue == "wmp")
        #expect(header.identity.dataset.rawValue == "crime")
        #expect(header.plaintextSize == 50_000)
        #expect(header.ciphertextSHA256 == Digest.hash(.sha256, body))
        #expect(UInt64(body.count) == header.ciphertextSize)
        #expect(json["format"]?.stringValue == "vault-sealed-v1")
        #expect(json["context"]?.stringValue == Base64.encode(Array(
            "vault.extract.v1\u{0}wmp\u{0}crime\u{0}\(header.identity.extract)".utf8)))
        #expect(json["wrapped_key"]?["alg"]?.stringValue == "A256GCM")
        #expect(json["wrapped_key"]?["kek"]?.stringValue == "fmk:wmp:1")
        // Only the expected files exist: no temporaries left behind.
        let keyrings = TestCustody.isPKCS11 ? [] : ["gmp.keyring", "gmp.keyring.lock", "wmp.keyring", "wmp.keyring.lock"]
        #expect(try fixture.directory.entries() == (["extract.csv", "out.csv", "x.vault"] + keyrings).sorted())
    } }

    @Test("empty and exactly-one-chunk extracts seal and unseal", arguments: TestBackend.all, [0, 16_384])
    func edgeSizes(_ backend: TestBackend, _ size: Int) async throws { try await backend.run {
        let fixture = try await SealedFixture(size: size)
        try await fixture.unseal()
        #expect(try fixture.directory.read("out.csv") == fixture.plaintext)
    } }

    /// Every failure must leave no output file and no temporary file.
    func expectFailure(_ fixture: SealedFixture, _ name: String, code: String, custody: (any KeyCustodian)? = nil,
                       sourceLocation: SourceLocation = #_sourceLocation) async throws {
        var caught: (any Error)?
        do { try await fixture.unseal(name, custody: custody) } catch { caught = error }
        let actual = (caught as? VaultError)?.code.rawValue ?? (caught as? CustodyError)?.code.rawValue
        #expect(actual == code, "\(String(describing: caught))", sourceLocation: sourceLocation)
        #expect(!fixture.directory.exists("out.csv"), sourceLocation: sourceLocation)
        #expect(try fixture.directory.entries().filter { $0.hasPrefix(".") }.isEmpty, sourceLocation: sourceLocation)
    }

    @Test("tampered, truncated and extended files fail and create no output", arguments: TestBackend.all)
    func damage(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        let (header, body) = try fixture.parts()
        var flipped = body
        flipped[20_000] ^= 0x80
        _ = try fixture.directory.write("flipped.vault", header + [0x0A] + flipped)
        try await expectFailure(fixture, "flipped.vault", code: "integrity_failure")

        _ = try fixture.directory.write("truncated.vault", header + [0x0A] + Array(body.prefix(body.count - 100)))
        try await expectFailure(fixture, "truncated.vault", code: "truncated")

        _ = try fixture.directory.write("extended.vault", header + [0x0A] + body + [0])
        try await expectFailure(fixture, "extended.vault", code: "truncated")

        _ = try fixture.directory.write("headeronly.vault", Array(header.prefix(40)))
        try await expectFailure(fixture, "headeronly.vault", code: "malformed_header")

        _ = try fixture.directory.write("empty.vault", [])
        try await expectFailure(fixture, "empty.vault", code: "malformed_header")

        _ = try fixture.directory.write("garbage.vault", Array("not a sealed file\n".utf8) + body)
        try await expectFailure(fixture, "garbage.vault", code: "malformed_header")
    } }

    @Test("an edited header is caught: dataset, context, hash, size and wrapped key", arguments: TestBackend.all)
    func headerEdits(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        let (headerBytes, body) = try fixture.parts()
        let header = String(decoding: headerBytes, as: UTF8.self)
        func edited(_ name: String, _ transform: (String) -> String) throws {
            _ = try fixture.directory.write(name, Array(transform(header).utf8) + [0x0A] + body)
        }
        // The dataset renamed: the context no longer matches the ids.
        try edited("dataset.vault") { $0.replacingOccurrences(of: "\"dataset\":\"crime\"", with: "\"dataset\":\"other\"") }
        try await expectFailure(fixture, "dataset.vault", code: "malformed_header")
        // Dataset and context both rewritten consistently: the wrapped key no longer authenticates.
        let parsed = try SealedFileHeader(line: headerBytes)
        let newContext = Base64.encode(Array("vault.extract.v1\u{0}wmp\u{0}other\u{0}\(parsed.identity.extract)".utf8))
        try edited("rebound.vault") {
            $0.replacingOccurrences(of: "\"dataset\":\"crime\"", with: "\"dataset\":\"other\"")
                .replacingOccurrences(of: Base64.encode(parsed.identity.payloadContext), with: newContext)
        }
        try await expectFailure(fixture, "rebound.vault", code: "context_mismatch")
        // A wrong ciphertext hash: every chunk decrypts, the hash check refuses at the end.
        try edited("hash.vault") {
            $0.replacingOccurrences(of: Hex.encode(parsed.ciphertextSHA256), with: String(repeating: "ab", count: 32))
        }
        try await expectFailure(fixture, "hash.vault", code: "integrity_failure")
        try edited("size.vault") { $0.replacingOccurrences(of: "\"plaintext_size\":50000", with: "\"plaintext_size\":49999") }
        try await expectFailure(fixture, "size.vault", code: "truncated")
        // The header must be canonical JSON with only the known members (DESIGN 5.4).
        try edited("spaced.vault") { $0.replacingOccurrences(of: "\"format\":", with: "\"format\": ") }
        try await expectFailure(fixture, "spaced.vault", code: "malformed_header")
        try edited("extra.vault") { $0.replacingOccurrences(of: "\"wrapped_key\"", with: "\"x\":1,\"wrapped_key\"") }
        try await expectFailure(fixture, "extra.vault", code: "malformed_header")
        try edited("format.vault") { $0.replacingOccurrences(of: "vault-sealed-v1", with: "vault-sealed-v2") }
        try await expectFailure(fixture, "format.vault", code: "malformed_header")
        try edited("kek.vault") { $0.replacingOccurrences(of: "fmk:wmp:1", with: "fmk:gmp:1") }
        try await expectFailure(fixture, "kek.vault", code: "malformed_header")
        try edited("unknownkek.vault") { $0.replacingOccurrences(of: "fmk:wmp:1", with: "fmk:wmp:7") }
        try await expectFailure(fixture, "unknownkek.vault", code: "unknown_key")
    } }

    @Test("another extract's wrapped key swapped into the header does not authenticate", arguments: TestBackend.all)
    func swappedWrappedKey(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        _ = try await SealedFile.seal(inputPath: fixture.directory.file("extract.csv"),
                                      outputPath: fixture.directory.file("y.vault"),
                                      dataset: try DatasetID(dataset: "crime"), custody: fixture.wmp)
        let (xHeader, xBody) = try fixture.parts("x.vault")
        let (yHeader, _) = try fixture.parts("y.vault")
        let x = try SealedFileHeader(line: xHeader)
        let y = try SealedFileHeader(line: yHeader)
        let swapped = SealedFileHeader(identity: x.identity, plaintextSize: x.plaintextSize,
                                       ciphertextSHA256: x.ciphertextSHA256, wrappedKey: y.wrappedKey)
        _ = try fixture.directory.write("swapped.vault", swapped.line + xBody)
        try await expectFailure(fixture, "swapped.vault", code: "context_mismatch")
    } }

    @Test("a keyring of another force is refused by name", arguments: TestBackend.all)
    func wrongForce(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        try await expectFailure(fixture, "x.vault", code: "wrong_force", custody: fixture.gmp)
    } }

    @Test("an existing output is not overwritten unless asked", arguments: TestBackend.all)
    func noClobber(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        _ = try fixture.directory.write("out.csv", Array("keep me".utf8))
        await #expect(throws: VaultError(.alreadyExists, "")) { try await fixture.unseal() }
        #expect(try fixture.directory.read("out.csv") == Array("keep me".utf8))
        _ = try await SealedFile.unseal(inputPath: fixture.directory.file("x.vault"),
                                        outputPath: fixture.directory.file("out.csv"), custody: fixture.wmp,
                                        justification: exportJustification, overwrite: true)
        #expect(try fixture.directory.read("out.csv") == fixture.plaintext)
    } }

    @Test("after rotation a file sealed under the old master key still opens; new files use the new key",
          arguments: TestBackend.all)
    func afterRotation(_ backend: TestBackend) async throws { try await backend.run {
        let fixture = try await SealedFixture()
        let v2 = try await fixture.wmp.rotate()
        try await fixture.unseal()
        _ = try await SealedFile.seal(inputPath: fixture.directory.file("extract.csv"),
                                      outputPath: fixture.directory.file("z.vault"),
                                      dataset: try DatasetID(dataset: "crime"), custody: fixture.wmp)
        #expect(try SealedFileHeader(line: try fixture.parts("z.vault").header).wrappedKey.kek == v2)
    } }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        components(separatedBy: target).joined(separator: replacement)
    }
}

@Suite("Atomic output files")
struct AtomicOutputTests {
    @Test("nothing is visible in the directory until commit; released without commit, nothing remains",
          arguments: TestBackend.all)
    func invisibleUntilCommit(_ backend: TestBackend) async throws { try await backend.run {
        let directory = try TemporaryDirectory()
        do {
            let output = try AtomicOutputFile(path: directory.file("out.bin"), replacing: false)
            try output.write(testBytes(count: 3 << 20))
            try output.flush()
            let entries = try directory.entries()
            #expect(entries.isEmpty, "a partial output is visible: \(entries)")
        }
        #expect(try directory.entries().isEmpty)
        let output = try AtomicOutputFile(path: directory.file("out.bin"), replacing: false)
        try output.write(Array("done".utf8))
        try output.commit()
        #expect(try directory.entries() == ["out.bin"])
        #expect(try directory.read("out.bin") == Array("done".utf8))
        let again = try AtomicOutputFile(path: directory.file("out.bin"), replacing: true)
        try again.write(Array("replaced".utf8))
        try again.commit()
        #expect(try directory.entries() == ["out.bin"])
        #expect(try directory.read("out.bin") == Array("replaced".utf8))
    } }
}
