import KeyCustody
import TOMLKit

/// vaultd's configuration file (TOML).
///
/// ```toml
/// listen = "127.0.0.1:8443"
/// data_dir = "vault-data"            # catalog.sqlite, blobs/
/// custody = "Keys.example"           # the custody file
/// audit_checkpoint_seconds = 60      # how often each force's audit chain head is signed
/// shred_interval_seconds = 3600      # how often expired, unheld archives are shredded (0: only on request)
/// retrieval_grant_hours = 24         # how long a dual-control archive retrieval grant lasts
/// rewrap_batch_size = 2000           # wrapped keys per rewrap transaction after a rotation
/// catalog = "postgres://vault@db1:5432/vault"   # optional: PostgreSQL instead of SQLite (password: PGPASSWORD)
/// instance = "vaultd-a"              # optional: this instance's name in job leases (default host:pid)
/// job_lease_seconds = 30             # a background job's lease; a dead instance's jobs move after it
/// use_case_sync_seconds = 10         # how often remote forces' signed use cases are fetched (and on a miss)
///
/// [blobs]                            # optional: an S3 bucket instead of files in data_dir
/// url = "s3://vault-blobs/prod"
/// endpoint = "https://s3.internal:9000"
/// region = "us-east-1"
/// credentials_file = "s3.credentials"  # access_key_id, secret_access_key; else AWS_* environment variables
/// part_size_mib = 16
/// upload_concurrency = 4
///
/// [rotation]                         # optional: rotate a force's master key automatically every N days
/// wmp = 90
///
/// [tls]
/// certificate = "vault-data/tls/server.pem"
/// private_key = "vault-data/tls/server.key"
/// client_ca = "vault-data/tls/ca.pem"   # client certificates (mTLS); subject CN = principal id
/// client_crl = "vault-data/tls/ca.crl"  # optional: the client CA's revocation list, read again when it changes
///
/// [audit_key]                        # optional: the audit key on a PKCS#11 token instead of a file in data_dir
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token = "vault-audit"
/// pin_env = "VAULT_AUDIT_PIN"        # or pin_file
/// label = "vault-audit"              # the key pair's label (default)
///
/// [[principals]]
/// id = "analyst-1"
/// analyst = ["wmp"]                  # a role = the forces it applies to
/// ```
public struct ServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var dataDirectory: String
    public var custodyFile: String
    public var certificate: String
    public var privateKey: String
    public var clientCA: String?
    /// The client CA's certificate revocation list (PEM or DER), when configured.
    public var clientCRL: String?
    public var principals: [String: Principal]
    /// Seconds between signed checkpoints of each force's audit chain (an export always ends with a fresh one).
    public var auditCheckpointSeconds = 60
    /// 0 turns the shredding scheduler off (`vault shred --expired` still works).
    public var shredIntervalSeconds = 3600
    public var retrievalGrantHours = 24
    public var rewrapBatchSize = 2000
    /// Automatic master key rotation periods, by force.
    public var rotationDays: [ForceID: Int] = [:]

    /// The audit key on a token (`[audit_key]`); nil for the key file in the data directory.
    public var auditKey: AuditKeyLocation?

    /// PostgreSQL when configured; else SQLite in the data directory.
    public var postgresURL: String?
    public var s3: S3Settings?
    /// This instance's name in job leases; nil for host:pid.
    public var instance: String?
    public var jobLeaseSeconds = 30
    /// How often the signed use cases of remote forces are fetched from their custody services.
    public var useCaseSyncSeconds = 10

    public var catalogPath: String { "\(dataDirectory)/catalog.sqlite" }
    public var blobDirectory: String { "\(dataDirectory)/blobs" }
    public var catalog: CatalogLocation { postgresURL.map { .postgres(url: $0) } ?? .sqlite(path: catalogPath) }
    public var blobs: BlobLocation { s3.map { .s3($0) } ?? .files(root: blobDirectory) }

    public static func load(path: String) throws -> ServerConfiguration {
        let bytes: [UInt8]
        do { bytes = try DurableFile.read(path, limit: 1 << 20) } catch let error as CustodyError {
            throw CustodyError(.invalidConfiguration, "cannot read configuration: \(error.message)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CustodyError(.invalidConfiguration, "\(path) is not UTF-8 text")
        }
        return try parse(text, source: path, baseDirectory: DurableFile.parentDirectory(of: path))
    }

    public static func parse(_ text: String, source: String, baseDirectory: String) throws -> ServerConfiguration {
        let invalid = { (reason: String) in CustodyError(.invalidConfiguration, "\(source): \(reason)") }
        let table = try TOMLDocument.parse(text, invalid: invalid)
        let known: Set<String> = ["listen", "data_dir", "custody", "tls", "principals", "audit_checkpoint_seconds",
                                  "shred_interval_seconds", "retrieval_grant_hours", "rewrap_batch_size",
                                  "rotation", "catalog", "blobs", "instance", "job_lease_seconds",
                                  "use_case_sync_seconds", "audit_key"]
        if let unknown = table.keys.sorted().first(where: { !known.contains($0) }) {
            throw invalid("unknown key \"\(unknown)\"")
        }
        func path(_ value: String) -> String {
            value.hasPrefix("/") ? value : (baseDirectory == "." ? value : "\(baseDirectory)/\(value)")
        }
        guard let listen = table["listen"]?.string else { throw invalid("listen (host:port) is missing") }
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw invalid("listen must be host:port, not \"\(listen)\"") }
        let host = String(listen[..<colon])
        guard let dataDirectory = table["data_dir"]?.string else { throw invalid("data_dir is missing") }
        guard let custody = table["custody"]?.string else { throw invalid("custody (the custody file) is missing") }
        guard let tls = table["tls"]?.table else { throw invalid("[tls] is missing: vaultd serves HTTPS only") }
        for key in tls.keys where !["certificate", "private_key", "client_ca", "client_crl"].contains(key) {
            throw invalid("tls: unknown key \"\(key)\"")
        }
        guard let certificate = tls["certificate"]?.string, let privateKey = tls["private_key"]?.string else {
            throw invalid("tls.certificate and tls.private_key are required")
        }
        if tls["client_crl"] != nil, tls["client_ca"] == nil {
            throw invalid("tls.client_crl needs tls.client_ca (the CA that signs the list)")
        }
        if let crl = tls["client_crl"], crl.string == nil { throw invalid("tls.client_crl must be a file path") }
        let principals = try Principal.parseList(table["principals"], invalid: invalid)
        var configuration = ServerConfiguration(
            host: host, port: port, dataDirectory: path(dataDirectory), custodyFile: path(custody),
            certificate: path(certificate), privateKey: path(privateKey), clientCA: tls["client_ca"]?.string.map(path),
            principals: principals)
        configuration.clientCRL = tls["client_crl"]?.string.map(path)
        if let value = table["audit_key"] {
            guard let entry = value.table else { throw invalid("audit_key must be a table") }
            let known: Set<String> = ["module", "token", "pin_env", "pin_file", "label"]
            if let unknown = entry.keys.sorted().first(where: { !known.contains($0) }) {
                throw invalid("audit_key: unknown key \"\(unknown)\" (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let module = entry["module"]?.string, !module.isEmpty else {
                throw invalid("audit_key: module (the PKCS#11 library's path) is missing")
            }
            guard let token = entry["token"]?.string, !token.isEmpty else {
                throw invalid("audit_key: token (the token's label) is missing")
            }
            guard let pin = try SecretSource.configured(
                env: entry["pin_env"]?.string, file: entry["pin_file"]?.string, name: "pin", what: "token PIN",
                where: "audit_key", resolve: path, invalid: invalid)
            else { throw invalid("audit_key: say where the token PIN comes from (pin_env or pin_file)") }
            let label = entry["label"]?.string ?? AuditKeyLocation.defaultLabel
            guard Principal.isValidID(label) else { throw invalid("audit_key: label must be a plain id") }
            configuration.auditKey = AuditKeyLocation(module: module, token: token, pin: pin, label: label)
        }
        /// An optional integer setting within `range`; `what` describes the range in the error.
        func integer(_ key: String, _ range: ClosedRange<Int>, _ what: String? = nil) throws -> Int? {
            guard let value = table[key] else { return nil }
            guard let number = value.int, range.contains(number) else {
                throw invalid("\(key) must be an integer from \(what ?? "\(range.lowerBound)") to \(range.upperBound)")
            }
            return number
        }
        if let seconds = try integer("audit_checkpoint_seconds", 1...86_400) {
            configuration.auditCheckpointSeconds = seconds
        }
        if let seconds = try integer("shred_interval_seconds", 0...604_800, "0 (off)") {
            configuration.shredIntervalSeconds = seconds
        }
        if let hours = try integer("retrieval_grant_hours", 1...168) { configuration.retrievalGrantHours = hours }
        if let size = try integer("rewrap_batch_size", 1...100_000) { configuration.rewrapBatchSize = size }
        if let seconds = try integer("job_lease_seconds", 2...3600) { configuration.jobLeaseSeconds = seconds }
        if let seconds = try integer("use_case_sync_seconds", 1...86_400) { configuration.useCaseSyncSeconds = seconds }
        if let value = table["catalog"] {
            guard let url = value.string else { throw invalid("catalog must be a postgres:// URL") }
            guard case .postgres = try? CatalogLocation.parse(url) else {
                throw invalid("catalog must be a postgres://USER@HOST:PORT/DATABASE URL (leave it out for SQLite)")
            }
            guard PostgresURL.redact(url) == url else {
                throw invalid("catalog must not carry a password: give it to vaultd in PGPASSWORD")
            }
            configuration.postgresURL = url
        }
        if let value = table["blobs"] {
            guard let blobs = value.table else { throw invalid("[blobs] must be a table") }
            configuration.s3 = try S3Settings.parse(blobs, path: path, invalid: invalid)
        }
        if let value = table["instance"] {
            guard let name = value.string, Principal.isValidID(name) else {
                throw invalid("instance must be 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-'")
            }
            configuration.instance = name
        }
        if let value = table["rotation"] {
            guard let rotation = value.table else { throw invalid("[rotation] must be a table of force = days") }
            for key in rotation.keys.sorted() {
                let force: ForceID
                do { force = try ForceID(force: key) } catch let error as CustodyError {
                    throw invalid("[rotation] \(key): \(error.message)")
                }
                guard let days = rotation[key]?.int, (1...3650).contains(days) else {
                    throw invalid("[rotation] \(key) must be a number of days from 1 to 3650")
                }
                configuration.rotationDays[force] = days
            }
        }
        return configuration
    }
}

extension Principal {
    /// The `[[principals]]` array of a configuration file: an id and, per role, the forces it applies to.
    static func parseList(_ value: (any TOMLValueConvertible)?, invalid: (String) -> CustodyError) throws
        -> [String: Principal]
    {
        var principals: [String: Principal] = [:]
        guard let value else { return principals }
        guard let list = value.array else { throw invalid("principals must be an array of tables ([[principals]])") }
        for (index, item) in list.enumerated() {
            guard let entry = item.table, let id = entry["id"]?.string else {
                throw invalid("principals[\(index)] needs an id")
            }
            guard Principal.isValidID(id) else {
                throw invalid("principal id \"\(id)\" must be 1-128 characters of a-z, A-Z, 0-9, '.', '_', '-'")
            }
            var grants: [Role: Set<ForceID>] = [:]
            for key in entry.keys where key != "id" {
                guard let role = Role(rawValue: key) else {
                    throw invalid("principals[\(index)] (\(id)): unknown role \"\(key)\" "
                        + "(roles: \(Role.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                guard let forces = entry[key]?.array else {
                    throw invalid("principals[\(index)] (\(id)): \(key) must be a list of force ids")
                }
                var set = Set<ForceID>()
                for force in forces {
                    guard let name = force.string else { throw invalid("\(id).\(key): force ids are strings") }
                    do { set.insert(try ForceID(force: name)) } catch let error as CustodyError {
                        throw invalid("\(id).\(key): \(error.message)")
                    }
                }
                grants[role] = set
            }
            guard principals.updateValue(Principal(id: id, grants: grants), forKey: id) == nil else {
                throw invalid("principal \(id) is listed twice")
            }
        }
        return principals
    }

    /// Principal ids appear in audit records and certificate CNs: a conservative character set.
    public static func isValidID(_ id: String) -> Bool {
        let utf8 = Array(id.utf8)
        guard (1...128).contains(utf8.count) else { return false }
        return utf8.allSatisfy {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: ".")
                || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
        }
    }
}

/// Where the audit key lives when it is on a PKCS#11 token (`[audit_key]`).
public struct AuditKeyLocation: Sendable, Equatable {
    public static let defaultLabel = "vault-audit"
    public var module: String
    public var token: String
    public var pin: SecretSource
    public var label: String
}
