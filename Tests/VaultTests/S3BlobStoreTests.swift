import Foundation
import KeyCustody
import NIOCore
import Testing
import VaultTestSupport

@testable import Vault

/// The S3 blob store against a real SeaweedFS (`make test` starts it; these run in the PostgreSQL + S3 pass), and
/// SigV4 against AWS's published example.
struct S3BlobStoreTests {
    static let awsExampleSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

    @Test("SigV4 reproduces AWS's published example signature (GET /test.txt with a Range header)")
    func awsExampleSignature() {
        var secret = Array(Self.awsExampleSecret.utf8)
        let signer = S3Signer(credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE",
                                                         secretAccessKey: SecureBytes(consuming: &secret)),
                              region: "us-east-1")
        let headers = signer.sign(method: "GET", path: "/test.txt", query: [],
                                  headers: [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9")],
                                  payloadHash: S3Signer.emptyPayloadHash, date: 1_369_353_600)
        let authorization = headers.first { $0.0 == "authorization" }?.1
        #expect(authorization == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                    + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                    + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(headers.first { $0.0 == "x-amz-date" }?.1 == "20130524T000000Z")
        // The secret never shows in a description.
        #expect(!"\(signer.credentials)".contains("EXAMPLEKEY"))
    }

    @Test("s3:// URLs and endpoints are checked with precise errors")
    func configurationErrors() throws {
        #expect(try S3Configuration.parse(url: "s3://vault-blobs/prod") == ("vault-blobs", "prod/"))
        #expect(try S3Configuration.parse(url: "s3://vault-blobs") == ("vault-blobs", ""))
        for bad in ["http://x/y", "s3://", "s3://UPPER", "s3://a", "s3://b/../x", "s3://-bucket"] {
            #expect(throws: VaultError.self, "\(bad)") { try S3Configuration.parse(url: bad) }
        }
    }

    func store(_ settings: S3Settings? = nil) async throws -> S3BlobStore {
        var resolved = settings
        if resolved == nil { resolved = try await TestStorage.newS3Settings() }
        let settings = resolved!
        return S3BlobStore(configuration: try settings.resolve(), windowSize: 1 << 20)
    }

    /// Whether opening the blob fails with `code`.
    func openFails(_ store: S3BlobStore, _ id: ExtractIdentity, _ code: VaultError.Code? = nil) async -> Bool {
        do {
            _ = try await store.open(id)
            return false
        } catch let error as VaultError {
            return code.map { error.code == $0 } ?? true
        } catch {
            return false
        }
    }

    /// An upload on a fresh store with `count` bytes written and no commit.
    func partUploaded(_ count: Int, seed: UInt64) async throws -> (S3BlobStore, ExtractIdentity, any BlobUpload) {
        let store = try await store()
        let id = try identity()
        let upload = try await store.create(id)
        try await upload.write(ByteBuffer(bytes: testBytes(count: count, seed: seed)))
        return (store, id, upload)
    }

    func identity() throws -> ExtractIdentity {
        ExtractIdentity(force: try ForceID(force: "wmp"), dataset: try DatasetID(dataset: "crime"), extract: .generate())
    }

    @Test("a 23 MiB blob goes up in 5 MiB parts and reads back byte for byte through ranged GETs; no parts remain",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing))
    func multipartRoundTrip() async throws {
        let store = try await store()
        let id = try identity()
        let content = testBytes(count: 23 << 20 + 12_345, seed: 9)
        let upload = try await store.create(id)
        var offset = 0
        var step = 777
        while offset < content.count {
            let end = min(content.count, offset + step)
            try await upload.write(ByteBuffer(bytes: content[offset..<end]))
            offset = end
            step = step * 3 + 1
        }
        // Invisible until committed.
        #expect(await openFails(store, id))
        try await upload.commit()
        let object = try await store.open(id)
        #expect(object.size == UInt64(content.count))
        let whole = Array(try await object.read(at: 0, count: content.count).readableBytesView)
        #expect(whole == content)
        // Random ranges, some across window boundaries.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20 {
            let start = Int.random(in: 0..<(content.count - 1), using: &generator)
            let count = Int.random(in: 1...min(3 << 20, content.count - start), using: &generator)
            let part = Array(try await object.read(at: UInt64(start), count: count).readableBytesView)
            #expect(part[...] == content[start..<(start + count)])
        }
        #expect(try await store.removeIncompleteUploads(before: currentUnixTime() + 3600) == 0)
        try await store.delete(id)
        #expect(await openFails(store, id, .notFound))
        try await store.delete(id)  // deleting twice is fine
    }

    @Test("an upload given up without a commit leaves neither an object nor parts behind",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing))
    func abandonedUpload() async throws {
        let (store, id, upload) = try await partUploaded(12 << 20, seed: 3)
        await upload.abort()
        #expect(await openFails(store, id, .notFound))
        #expect(try await store.removeIncompleteUploads(before: currentUnixTime() + 3600) == 0)
        #expect(try await store.listKeys().isEmpty)
    }

    @Test("incomplete uploads a dead process left are aborted by the sweep; other applications' uploads are not",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing))
    func incompleteUploadsSwept() async throws {
        // An upload in flight (two parts sent) whose process stops: nothing aborts it but the sweep.
        let (store, id, upload) = try await partUploaded(11 << 20, seed: 5)
        // Another application's upload under the same prefix, not named like a vault blob.
        let foreign = try await store.client.send(.POST, key: store.client.key("notes/readme.txt"), query: [("uploads", "")],
                                            expect: [200], operation: "start a foreign upload")
        let foreignID = try #require(foreign.body.flatMap { XMLText.first("UploadId", in: String(buffer: $0)) })
        #expect(try await store.removeIncompleteUploads(before: currentUnixTime() + 60) == 1)
        await #expect(throws: VaultError.self) { try await upload.commit() }
        #expect(await openFails(store, id, .notFound))
        #expect(try await store.removeIncompleteUploads(before: currentUnixTime() + 60) == 0)
        _ = try await store.client.send(.DELETE, key: store.client.key("notes/readme.txt"), query: [("uploadId", foreignID)],
                                  expect: [200, 204, 404], operation: "abort the foreign upload")
    }

    @Test("wrong secret, unknown key and missing bucket give precise errors that carry no secret",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing))
    func refusals() async throws {
        var settings = try await TestStorage.newS3Settings()
        let good = try settings.resolve()
        let wrongSecret = "definitely-not-the-secret-0123456789"
        var bytes = Array(wrongSecret.utf8)
        var configuration = good
        configuration.credentials = S3Credentials(accessKeyID: good.credentials.accessKeyID,
                                                  secretAccessKey: SecureBytes(consuming: &bytes))
        configuration.maxAttempts = 1
        do {
            try await S3BlobStore(configuration: configuration).check()
            Issue.record("a wrong secret was accepted")
        } catch let error as VaultError {
            #expect(error.code == .blobStoreDenied)
            #expect(error.message.contains("SignatureDoesNotMatch") || error.message.contains("HTTP 403"),
                    "\(error.message)")
            #expect(!"\(error) \(error.underlying ?? "")".contains(wrongSecret))
        }
        var unknown = Array("whatever-secret".utf8)
        configuration.credentials = S3Credentials(accessKeyID: "NOSUCHKEY0000",
                                                  secretAccessKey: SecureBytes(consuming: &unknown))
        do {
            try await S3BlobStore(configuration: configuration).create(try identity()).commit()
            Issue.record("an unknown access key was accepted")
        } catch let error as VaultError {
            #expect(error.code == .blobStoreDenied, "\(error)")
            #expect(error.message.contains("InvalidAccessKeyId") || error.message.contains("AccessDenied"),
                    "\(error.message)")
        }
        settings.url = "s3://no-such-bucket-\(Hex.encode(SecureRandom.bytes(count: 4)))"
        do {
            try await S3BlobStore(configuration: try settings.resolve()).check()
            Issue.record("a missing bucket was accepted")
        } catch let error as VaultError {
            #expect(error.code == .blobStoreUnavailable, "\(error)")
            #expect(error.message.contains("NoSuchBucket") && error.message.contains("does not exist"),
                    "\(error.message)")
        }
    }

    @Test("PostgreSQL URLs: TLS with verification off loopback unless disabled; sslrootcert; bad options named")
    func postgresURLs() throws {
        #expect(try !PostgresCatalog.ConnectionURL("postgres://vault@127.0.0.1:5432/vault").tls)
        #expect(try PostgresCatalog.ConnectionURL("postgres://vault@db1.internal/vault").tls)
        #expect(try !PostgresCatalog.ConnectionURL("postgres://vault@db1.internal/vault?sslmode=disable").tls)
        let pinned = try PostgresCatalog.ConnectionURL(
            "postgres://vault@localhost/vault?sslmode=verify-full&sslrootcert=/etc/vault/pg-ca.pem")
        #expect(pinned.tls && pinned.rootCertificate == "/etc/vault/pg-ca.pem")
        for bad in ["postgres://vault@db1/vault?sslmode=prefer", "postgres://vault@db1/vault?gssencmode=disable",
                    "postgres://vault@db1", "mysql://vault@db1/vault"] {
            #expect(throws: CustodyError.self, "\(bad)") { try PostgresCatalog.ConnectionURL(bad) }
        }
        #expect(PostgresURL.redact("postgres://vault:hunter2@db1/vault") == "postgres://vault:***@db1/vault")
    }

    @Test("an unreachable endpoint is retried, then reported as unavailable")
    func unreachable() async throws {
        var secret = Array("secret-for-a-closed-port".utf8)
        let configuration = try S3Configuration(
            url: "s3://vault-test", endpoint: "http://127.0.0.1:\(try freeLoopbackPort())",
            credentials: S3Credentials(accessKeyID: "x", secretAccessKey: SecureBytes(consuming: &secret)),
            maxAttempts: 3, backoffMilliseconds: 5)
        await #expect(throws: VaultError(.blobStoreUnavailable, "")) {
            try await S3BlobStore(configuration: configuration).check()
        }
    }
}
