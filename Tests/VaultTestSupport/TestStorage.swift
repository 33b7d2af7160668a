import Synchronization
import Foundation
import KeyCustody
import Logging
import Vault

/// The storage of the running test (`TestBackend.current`): `embedded` (SQLite + files) or `postgres-s3` (a
/// PostgreSQL database and an S3 bucket prefix per fixture, on the servers `make test` starts:
/// `VAULT_TEST_POSTGRES_URL`, `PGPASSWORD`, `VAULT_TEST_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
public enum TestStorage {
    public static let bucket = "vault-test"

    public static var isScaleOut: Bool { TestBackend.current.storage == .postgresS3 }

    public static var isEmbedded: Bool { !isScaleOut }

    static func required(_ name: String) throws -> String {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
            throw TestVectors.VectorError(message: "PostgreSQL + S3 tests need \(name) (make test sets it)")
        }
        return value
    }

    /// The PostgreSQL server's URL (user vault, database vault).
    public static func postgresURL() throws -> String { try required("VAULT_TEST_POSTGRES_URL") }

    /// A new, empty database on the test server (PostgreSQL's own `createdb`); its URL.
    public static func newPostgresDatabase() throws -> String {
        let url = try postgresURL()
        let name = "vt_" + Hex.encode(SecureRandom.bytes(count: 6))
        let createdb = try required("VAULT_TEST_PG_BIN") + "/createdb"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: createdb)
        process.arguments = ["--maintenance-db=\(url)", name]
        process.environment = ["PGPASSWORD": try required("PGPASSWORD"), "PATH": "/usr/bin:/bin"]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestVectors.VectorError(message: "createdb \(name) failed with status \(process.terminationStatus)")
        }
        guard let slash = url.lastIndex(of: "/") else { return url }
        return String(url[...slash]) + name
    }

    /// S3 settings for a fresh prefix of the test bucket (created on first use).
    public static func newS3Settings() async throws -> S3Settings {
        let prefix = "t-" + Hex.encode(SecureRandom.bytes(count: 6))
        var settings = S3Settings(url: "s3://\(bucket)/\(prefix)", endpoint: try required("VAULT_TEST_S3_ENDPOINT"))
        settings.partSize = S3Configuration.minimumPartSize
        try await ensureBucket(settings)
        return settings
    }

    static let bucketCreated = Mutex(false)

    /// Creates the test bucket on first use (creating it twice, from two tests at once, is harmless).
    static func ensureBucket(_ settings: S3Settings) async throws {
        guard !bucketCreated.withLock({ $0 }) else { return }
        try await S3BlobStore(configuration: try settings.resolve()).createBucket()
        bucketCreated.withLock { $0 = true }
    }

    /// The catalog and blobs of a new engine fixture in `directory`.
    public static func open(in directory: TemporaryDirectory, logger: Logger) async throws
        -> (catalog: any Catalog, blobs: any BlobStore, catalogLocation: CatalogLocation, blobLocation: BlobLocation,
            runner: Task<Void, Never>?)
    {
        let catalogLocation: CatalogLocation
        let blobLocation: BlobLocation
        if isScaleOut {
            catalogLocation = .postgres(url: try newPostgresDatabase())
            blobLocation = .s3(try await newS3Settings())
        } else {
            catalogLocation = .sqlite(path: directory.file("catalog.sqlite"))
            blobLocation = .files(root: directory.file("blobs"))
        }
        let (catalog, runner) = try await Storage.openCatalog(catalogLocation, logger: logger)
        let blobs = try await Storage.openBlobs(blobLocation)
        return (catalog, blobs, catalogLocation, blobLocation, runner)
    }

    /// Lines for vaultd.toml: a top-level `catalog = ...` and a `[blobs]` table (for the end of the file); empty
    /// on the embedded default.
    public static func vaultdSettings() async throws
        -> (topLevel: String, table: String, catalog: CatalogLocation?, blobs: BlobLocation?)
    {
        guard isScaleOut else { return ("", "", nil, nil) }
        let url = try newPostgresDatabase()
        let s3 = try await newS3Settings()
        return ("catalog = \"\(url)\"", """
            [blobs]
            url = "\(s3.url)"
            endpoint = "\(s3.endpoint)"
            part_size_mib = 5
            """, .postgres(url: url), .s3(s3))
    }

    /// The variables a vaultd or vault process needs to reach the test servers.
    public static var environment: [String: String] {
        guard isScaleOut else { return [:] }
        var values: [String: String] = [:]
        for name in ["PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            values[name] = ProcessInfo.processInfo.environment[name]
        }
        return values
    }

    /// The stored bytes of a blob, or nil when it does not exist.
    public static func blobBytes(_ blobs: any BlobStore, _ identity: ExtractIdentity) async throws -> [UInt8]? {
        let source: any CiphertextSource
        do { source = try await blobs.open(identity) } catch let error as VaultError
            where error.code == .notFound || error.code == .io
        {
            return nil
        }
        return Array(try await source.read(at: 0, count: Int(source.size)).readableBytesView)
    }
}
