import KeyCustody
import TOMLKit

/// The force's custody service configuration (`vaultd custody serve --config custody.toml`), TOML:
///
/// ```toml
/// listen = "0.0.0.0:9443"
/// data_dir = "custody-data"              # custody.sqlite (its log, use cases, keys, nonces, approvals, witness)
/// force = "wyp"                          # the force whose keys it holds
/// custody = "wyp-keys.toml"              # a custody file (Keys.example format) with that force's keyring or token
/// stop_unwraps_on_alarm = true           # a witness alarm stops unwraps until a custodian clears it
/// sealed_upload_window_hours = 48        # how recent a sealed file must be for the platform to verify it
/// log_sync = "every-second"              # or "every-request": when the service's log reaches the disk
///
/// [tls]
/// certificate = "tls/custody.pem"        # the service's HTTPS certificate and key (TLS 1.3)
/// private_key = "tls/custody.key"
/// platform_ca = "tls/platform-ca.pem"    # the CA of the platform's vaultd client certificates
///
/// [[principals]]                         # the force's own people; they sign in with bearer tokens
/// id = "custodian-wyp"                   # (vaultd custody token create)
/// custodian = ["wyp"]
/// ```
public struct CustodyServiceConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var dataDirectory: String
    public var force: ForceID
    public var custodyFile: String
    public var certificate: String
    public var privateKey: String
    public var platformCA: String
    /// Custodians and auditors of the force (roles for `force` only).
    public var principals: [String: Principal]
    public var stopUnwrapsOnAlarm = true
    public var sealedUploadWindowHours = 48
    /// Whether every request's log record is synced to disk before the answer (`every-request`), or the log is synced
    /// every second (`every-second`, the default: a killed process loses nothing; a power cut, at most the last
    /// second of records). A sync costs a disk flush (about 2 ms on the test machine), more than the whole unwrap
    /// budget of DESIGN section 10.
    public var syncEveryRequest = false

    public var catalogPath: String { "\(dataDirectory)/custody.sqlite" }

    public static func load(path: String) throws -> CustodyServiceConfiguration {
        let bytes: [UInt8]
        do { bytes = try DurableFile.read(path, limit: 1 << 20) } catch let error as CustodyError {
            throw CustodyError(.invalidConfiguration, "cannot read configuration: \(error.message)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CustodyError(.invalidConfiguration, "\(path) is not UTF-8 text")
        }
        return try parse(text, source: path, baseDirectory: DurableFile.parentDirectory(of: path))
    }

    public static func parse(_ text: String, source: String, baseDirectory: String) throws
        -> CustodyServiceConfiguration
    {
        let invalid = { (reason: String) in CustodyError(.invalidConfiguration, "\(source): \(reason)") }
        let table = try TOMLDocument.parse(text, invalid: invalid)
        let known: Set<String> = ["listen", "data_dir", "force", "custody", "tls", "principals",
                                  "stop_unwraps_on_alarm", "sealed_upload_window_hours", "log_sync"]
        if let unknown = table.keys.sorted().first(where: { !known.contains($0) }) {
            throw invalid("unknown key \"\(unknown)\" (known: \(known.sorted().joined(separator: ", ")))")
        }
        func path(_ value: String) -> String { CustodyConfiguration.resolve(value, against: baseDirectory) }
        guard let listen = table["listen"]?.string else { throw invalid("listen (host:port) is missing") }
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]),
            (1...65535).contains(port)
        else { throw invalid("listen must be host:port, not \"\(listen)\"") }
        guard let dataDirectory = table["data_dir"]?.string, !dataDirectory.isEmpty else {
            throw invalid("data_dir is missing")
        }
        guard let forceName = table["force"]?.string else { throw invalid("force (the force's id) is missing") }
        let force: ForceID
        do { force = try ForceID(force: forceName) } catch let error as CustodyError { throw invalid(error.message) }
        guard let custody = table["custody"]?.string, !custody.isEmpty else {
            throw invalid("custody (the custody file with the force's keyring or token) is missing")
        }
        guard let tls = table["tls"]?.table else { throw invalid("[tls] is missing: the service serves HTTPS only") }
        for key in tls.keys where !["certificate", "private_key", "platform_ca"].contains(key) {
            throw invalid("tls: unknown key \"\(key)\" (known: certificate, platform_ca, private_key)")
        }
        guard let certificate = tls["certificate"]?.string, let privateKey = tls["private_key"]?.string else {
            throw invalid("tls.certificate and tls.private_key are required")
        }
        guard let platformCA = tls["platform_ca"]?.string else {
            throw invalid("tls.platform_ca (the CA of the platform's vaultd client certificates) is required")
        }
        let principals = try Principal.parseList(table["principals"], invalid: invalid)
        for principal in principals.values {
            let roles = Set(principal.grants.keys)
            guard roles.isSubset(of: [.custodian, .auditor]) else {
                throw invalid("principal \(principal.id): a custody service knows custodians and auditors only")
            }
            if let other = principal.grants.values.flatMap({ $0 }).first(where: { $0 != force }) {
                throw invalid("principal \(principal.id) names force \(other); this service holds \(force) only")
            }
        }
        var configuration = CustodyServiceConfiguration(
            host: String(listen[..<colon]), port: port, dataDirectory: path(dataDirectory), force: force,
            custodyFile: path(custody), certificate: path(certificate), privateKey: path(privateKey),
            platformCA: path(platformCA), principals: principals)
        if let value = table["stop_unwraps_on_alarm"] {
            guard let flag = value.bool else { throw invalid("stop_unwraps_on_alarm must be true or false") }
            configuration.stopUnwrapsOnAlarm = flag
        }
        if let value = table["sealed_upload_window_hours"] {
            guard let hours = value.int, (1...720).contains(hours) else {
                throw invalid("sealed_upload_window_hours must be an integer from 1 to 720")
            }
            configuration.sealedUploadWindowHours = hours
        }
        if let value = table["log_sync"] {
            switch value.string {
            case "every-request": configuration.syncEveryRequest = true
            case "every-second": configuration.syncEveryRequest = false
            default: throw invalid("log_sync must be \"every-second\" or \"every-request\"")
            }
        }
        return configuration
    }
}
