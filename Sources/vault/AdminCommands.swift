import ArgumentParser
import KeyCustody
import Logging
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// Platform operator commands that act on storage directly (vaultd stopped).
struct AdminCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Storage administration for platform operators (with vaultd stopped).",
        subcommands: [Migrate.self]
    )

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move an embedded vault onto PostgreSQL and S3 without re-uploading anything.",
            discussion: """
                Copies every catalog row from SQLite to PostgreSQL (the schema is created if needed) and, with \
                --blobs-from and --blobs-to, every blob from the files store to an S3 bucket. Each blob is checked \
                against the SHA-256 recorded at upload, then read back from S3 and compared. Run it again after an \
                interruption: rows and blobs already there are kept, the rest is copied. Stop vaultd first.
                The PostgreSQL password comes from PGPASSWORD; S3 credentials from --s3-credentials-file or \
                AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. Never put a secret in an argument.
                """)

        @Option(help: ArgumentHelp("The embedded catalog: sqlite:PATH.", valueName: "sqlite:path")) var from: String
        @Option(help: ArgumentHelp("The target: postgres://USER@HOST:PORT/DATABASE.", valueName: "url")) var to: String
        @Option(help: ArgumentHelp("The files blob store (DATA_DIR/blobs).", valueName: "dir")) var blobsFrom: String?
        @Option(help: ArgumentHelp("The target bucket: s3://BUCKET[/PREFIX].", valueName: "url")) var blobsTo: String?
        @Option(help: ArgumentHelp("The S3 endpoint, http(s)://HOST:PORT.", valueName: "url")) var s3Endpoint: String?
        @Option(help: "The S3 region.") var s3Region = "us-east-1"
        @Option(help: ArgumentHelp("TOML with access_key_id and secret_access_key.", valueName: "path"))
        var s3CredentialsFile: String?
        @Flag(help: "One JSON object on stdout.") var json = false

        func validate() throws {
            if to.contains("@"), let scheme = to.firstRange(of: "://"),
                to[scheme.upperBound...].prefix(while: { $0 != "@" }).contains(":")
            {
                throw ValidationError("--to must not carry a password: set PGPASSWORD instead")
            }
            guard (blobsFrom == nil) == (blobsTo == nil) else {
                throw ValidationError("--blobs-from and --blobs-to go together")
            }
            if blobsTo != nil, s3Endpoint == nil { throw ValidationError("--blobs-to needs --s3-endpoint") }
        }

        func run() async throws {
            guard case .sqlite(let path) = try CatalogLocation.parse(from) else {
                throw VaultError(.invalidParameter, "--from must be sqlite:PATH")
            }
            guard case .postgres(let url) = try CatalogLocation.parse(to) else {
                throw VaultError(.invalidParameter, "--to must be postgres://USER@HOST:PORT/DATABASE")
            }
            guard access(path, F_OK) == 0 else {
                throw VaultError(.notFound, "no catalog at \(path)")
            }
            let source = try SQLiteCatalog(path: path)
            let logger = Logger(label: "vault-migrate", factory: { _ in SwiftLogNoOpLogHandler() })
            let (target, runner) = try await PostgresCatalog.open(url: url, logger: logger)
            defer { runner.cancel() }
            let tables = try await CatalogMigration.copyCatalog(from: source, to: target) { report in
                if !json {
                    print("catalog \(report.table): \(report.source) rows, \(report.copied) copied now, "
                          + "\(report.target) in PostgreSQL")
                }
            }
            var blobs: BlobMigration.Report?
            if let blobsFrom, let blobsTo, let s3Endpoint {
                var settings = S3Settings(url: blobsTo, endpoint: s3Endpoint)
                settings.region = s3Region
                settings.credentialsFile = s3CredentialsFile
                let store = S3BlobStore(configuration: try settings.resolve())
                try await store.check()
                let expected = try await CatalogMigration.recordedDigests(source)
                blobs = try await BlobMigration.copy(from: try FileBlobStore(root: blobsFrom), to: store,
                                               expected: expected)
                { identity, present in
                    if !json { print("blob \(identity.force)/\(identity.dataset)/\(identity.extract): "
                                     + (present ? "already in S3, verified" : "copied, verified")) }
                }
            }
            if json {
                var document: [String: JSONValue] = [
                    "catalog": .array(tables.map {
                        .object(["table": .string($0.table), "source": .integer(Int64($0.source)),
                                 "copied": .integer(Int64($0.copied)), "target": .integer(Int64($0.target))])
                    }),
                ]
                if let blobs {
                    document["blobs"] = .object([
                        "copied": .integer(Int64(blobs.copied)), "present": .integer(Int64(blobs.present)),
                        "verified": .integer(Int64(blobs.verified)), "bytes": .integer(Int64(blobs.bytes)),
                    ])
                }
                print(JSONValue.object(document).canonicalString)
            } else {
                print("catalog: \(tables.reduce(0) { $0 + $1.source }) rows in \(tables.count) tables, all in "
                      + "PostgreSQL; audit chain heads match")
                if let blobs {
                    print("blobs: \(blobs.verified) verified by SHA-256 (\(blobs.copied) copied now, "
                          + "\(blobs.present) already there), \(blobs.bytes) bytes")
                }
            }
        }
    }
}
