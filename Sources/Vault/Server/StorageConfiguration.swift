import KeyCustody
import Logging
import TOMLKit

#if canImport(Glibc)
import Glibc
#endif

/// Where the catalog lives: SQLite in the data directory (the embedded default) or a PostgreSQL database.
public enum CatalogLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    /// A `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE` URL (the password better comes from `PGPASSWORD`).
    case postgres(url: String)

    /// `sqlite:PATH` or `postgres://...`, as `vault admin migrate` takes them.
    public static func parse(_ text: String) throws -> CatalogLocation {
        if text.hasPrefix("sqlite:") {
            let path = String(text.dropFirst("sqlite:".count))
            guard !path.isEmpty else { throw VaultError(.invalidParameter, "sqlite: needs a path (sqlite:PATH)") }
            return .sqlite(path: path)
        }
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") { return .postgres(url: text) }
        throw VaultError(.invalidParameter, "a catalog is sqlite:PATH or postgres://USER@HOST:PORT/DATABASE, not "
                            + "\"\(PostgresURL.redact(text))\"")
    }

    /// The location without any password.
    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite:\(path)"
        case .postgres(let url): PostgresURL.redact(url)
        }
    }
}

/// Where extract ciphertexts live: files in the data directory (the embedded default) or an S3 bucket.
public enum BlobLocation: Sendable, CustomStringConvertible {
    case files(root: String)
    case s3(S3Settings)

    public var description: String {
        switch self {
        case .files(let root): root
        case .s3(let settings): "\(settings.url) at \(settings.endpoint)"
        }
    }
}

/// `[blobs]` for S3, before credentials are read.
public struct S3Settings: Sendable, Equatable {
    public var url: String
    public var endpoint: String
    public var region = "us-east-1"
    /// A TOML file with `access_key_id` and `secret_access_key`; without it, `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` from the environment.
    public var credentialsFile: String?
    public var partSize = S3Configuration.defaultPartSize
    public var concurrency = 4

    public init(url: String, endpoint: String) {
        self.url = url
        self.endpoint = endpoint
    }

    /// Environment variables that hold secrets, scrubbed once read.
    public static let secretVariables = ["AWS_SECRET_ACCESS_KEY"]

    /// Reads the credentials (file or environment) and checks everything.
    public func resolve() throws -> S3Configuration {
        let credentials: S3Credentials
        if let credentialsFile {
            credentials = try Self.readCredentials(file: credentialsFile)
        } else {
            guard let value = getenv("AWS_ACCESS_KEY_ID"), case let id = String(cString: value), !id.isEmpty else {
                throw VaultError(.invalidParameter, "S3 credentials are missing: set credentials_file in [blobs], "
                                    + "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in vaultd's environment")
            }
            let secret: SecureBytes
            do { secret = try SecretSource.environment("AWS_SECRET_ACCESS_KEY").read() } catch {
                throw VaultError(.invalidParameter, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
            }
            credentials = S3Credentials(accessKeyID: id, secretAccessKey: secret)
        }
        return try S3Configuration(url: url, endpoint: endpoint, region: region, credentials: credentials,
                                   partSize: partSize, concurrency: concurrency)
    }

    static func readCredentials(file: String) throws -> S3Credentials {
        let bytes: [UInt8]
        do { bytes = try DurableFile.read(file, limit: 64 << 10) } catch let error as CustodyError {
            throw VaultError(.invalidParameter, "cannot read the S3 credentials file: \(error.message)", cause: error)
        }
        guard let text = String(validating: bytes, as: UTF8.self),
            let table = try? TOMLDocument.parse(text, invalid: { CustodyError(.invalidConfiguration, $0) })
        else {
            throw VaultError(.invalidParameter, "the S3 credentials file \(file) is not TOML")
        }
        for key in table.keys where !["access_key_id", "secret_access_key"].contains(key) {
            throw VaultError(.invalidParameter, "the S3 credentials file \(file) has an unknown key \"\(key)\"")
        }
        guard let id = table["access_key_id"]?.string, !id.isEmpty,
            let secret = table["secret_access_key"]?.string, !secret.isEmpty
        else {
            throw VaultError(.invalidParameter, "the S3 credentials file \(file) needs access_key_id and "
                                + "secret_access_key")
        }
        var secretBytes = Array(secret.utf8)
        return S3Credentials(accessKeyID: id, secretAccessKey: SecureBytes(consuming: &secretBytes))
    }

    /// Parses `[blobs]`.
    static func parse(_ table: TOMLTable, path: (String) -> String, invalid: (String) -> CustodyError) throws
        -> S3Settings
    {
        let known = ["url", "endpoint", "region", "credentials_file", "part_size_mib", "upload_concurrency"]
        if let unknown = table.keys.sorted().first(where: { !known.contains($0) }) {
            throw invalid("[blobs]: unknown key \"\(unknown)\" (keys: \(known.joined(separator: ", ")))")
        }
        guard let url = table["url"]?.string else { throw invalid("[blobs] url (s3://BUCKET[/PREFIX]) is missing") }
        guard let endpoint = table["endpoint"]?.string else {
            throw invalid("[blobs] endpoint (http://HOST:PORT of the S3 service) is missing")
        }
        var settings = S3Settings(url: url, endpoint: endpoint)
        if let region = table["region"] {
            guard let value = region.string else { throw invalid("[blobs] region must be a string") }
            settings.region = value
        }
        if let file = table["credentials_file"] {
            guard let value = file.string else { throw invalid("[blobs] credentials_file must be a path") }
            settings.credentialsFile = path(value)
        }
        if let size = table["part_size_mib"] {
            // Bounded so an upload's memory stays small: part × (upload_concurrency + 1).
            guard let value = size.int, (5...64).contains(value) else {
                throw invalid("[blobs] part_size_mib must be an integer from 5 to 64")
            }
            settings.partSize = value << 20
        }
        if let concurrency = table["upload_concurrency"] {
            guard let value = concurrency.int, (1...64).contains(value) else {
                throw invalid("[blobs] upload_concurrency must be an integer from 1 to 64")
            }
            settings.concurrency = value
        }
        do { _ = try S3Configuration.parse(url: url) } catch let error as VaultError { throw invalid(error.message) }
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
            throw invalid("[blobs] endpoint must start with http:// or https://")
        }
        return settings
    }
}

/// Opening the catalog and the blob store a configuration names.
public enum Storage {
    /// Opens (and migrates) the catalog. For PostgreSQL the connection pool runs in `runner` until it is cancelled.
    public static func openCatalog(_ location: CatalogLocation, logger: Logger) async throws
        -> (catalog: any Catalog, runner: Task<Void, Never>?)
    {
        switch location {
        case .sqlite(let path):
            try FileBlobStore.makeDirectory(DurableFile.parentDirectory(of: path))
            return (try SQLiteCatalog(path: path), nil)
        case .postgres(let url):
            let (catalog, runner) = try await PostgresCatalog.open(url: url, logger: logger)
            return (catalog, runner)
        }
    }

    /// Opens the blob store; an S3 bucket is checked (it exists, the credentials may use it).
    public static func openBlobs(_ location: BlobLocation) async throws -> any BlobStore {
        switch location {
        case .files(let root):
            return try FileBlobStore(root: root)
        case .s3(let settings):
            let store = S3BlobStore(configuration: try settings.resolve())
            try await store.check()
            return store
        }
    }
}

/// Redaction of a PostgreSQL URL's password for messages and logs.
public enum PostgresURL {
    public static func redact(_ url: String) -> String {
        guard let scheme = url.firstRange(of: "://") else { return url }
        let rest = url[scheme.upperBound...]
        guard let at = rest.lastIndex(of: "@") else { return url }
        let userInfo = rest[..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return url }
        return String(url[..<colon]) + ":***" + String(rest[at...])
    }
}
