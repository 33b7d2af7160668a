import AsyncHTTPClient
import KeyCustody
import NIOCore
import NIOHTTP1
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

/// An error answered by vaultd: its HTTP status and the JSON error's code and message.
public struct RemoteError: Error, CustomStringConvertible, Sendable {
    public let status: Int
    public let code: String
    public let message: String
    public var description: String { "\(message) (HTTP \(status), \(code))" }
}

/// The server did not answer at all: refused, reset or timed out before a response. Names the URL tried.
public struct ServerUnreachable: Error, CustomStringConvertible, Sendable {
    public let server: String
    public let cause: String
    public var description: String { "cannot reach \(server): \(cause)" }
}

/// Where the CLI finds vaultd and how it signs in. Tokens come from `VAULT_TOKEN` or a token file, never from an
/// argument.
public struct ClientConfiguration: Sendable {
    public var server: String
    public var caFile: String?
    public var token: SecureBytes?
    public var certificate: String?
    public var privateKey: String?

    public init(server: String, caFile: String?, token: SecureBytes?, certificate: String?, privateKey: String?) {
        self.server = server
        self.caFile = caFile
        self.token = token
        self.certificate = certificate
        self.privateKey = privateKey
    }

    /// The file `vault login` writes: `$VAULT_CLI_CONFIG`, else `$HOME/.config/vault/cli.json`.
    public static var defaultPath: String {
        if let explicit = getenv("VAULT_CLI_CONFIG") { return String(cString: explicit) }
        let home = getenv("HOME").map { String(cString: $0) } ?? "."
        return "\(home)/.config/vault/cli.json"
    }

    /// Options win over the environment, which wins over the login file.
    /// `prefix` names the environment variables (`VAULT_ADDR`, `VAULT_CACERT`, ... or, for a force's custody
    /// service, `VAULT_CUSTODY_ADDR`, `VAULT_CUSTODY_CACERT`, ...); only vaultd's settings come from `vault login`.
    public static func resolve(
        server: String?, caFile: String?, tokenFile: String?, certificate: String?, privateKey: String?,
        prefix: String = "VAULT"
    ) throws -> ClientConfiguration {
        func env(_ name: String) -> String? {
            guard let value = getenv(prefix + name).map({ String(cString: $0) }), !value.isEmpty else { return nil }
            return value
        }
        var saved: [String: String] = [:]
        if prefix == "VAULT", let bytes = try? DurableFile.read(defaultPath, limit: 64 * 1024),
            let json = try? JSONParser.parse(bytes), case .object(let members) = json
        {
            for (key, value) in members { if let text = value.stringValue { saved[key] = text } }
        }
        guard let server = server ?? env("_ADDR") ?? saved["server"] else {
            throw CustodyError(.invalidConfiguration, prefix == "VAULT"
                               ? "no server: run `vault login --server URL --ca-file PATH`, or set VAULT_ADDR"
                               : "no custody service: pass --custody URL or set \(prefix)_ADDR")
        }
        guard server.hasPrefix("https://") else {
            throw CustodyError(.invalidConfiguration, "the server URL must start with https:// (HTTPS only)")
        }
        var token: SecureBytes?
        defer { SecretSource.scrubEnvironment(prefix + "_TOKEN") }
        // A token in the environment wins over the one `vault login` saved, like every other setting.
        let explicitFile = tokenFile ?? env("_TOKEN_FILE")
        if let tokenFile = explicitFile ?? (env("_TOKEN") == nil ? saved["token_file"] : nil) {
            do { token = try DurableFile.readSecret(tokenFile) } catch let error as CustodyError {
                throw CustodyError(.invalidConfiguration, "cannot read the token file \(tokenFile): \(error.message)",
                                   underlying: error.underlying)
            }
            guard token?.count ?? 0 > 0 else {
                throw CustodyError(.invalidConfiguration, "the token file \(tokenFile) is empty")
            }
        } else if env("_TOKEN") != nil {
            token = try SecretSource.environment(prefix + "_TOKEN").read()
        }
        return ClientConfiguration(
            server: server.hasSuffix("/") ? String(server.dropLast()) : server,
            caFile: caFile ?? env("_CACERT") ?? saved["ca_file"], token: token,
            certificate: certificate ?? env("_CLIENT_CERT") ?? saved["client_cert"],
            privateKey: privateKey ?? env("_CLIENT_KEY") ?? saved["client_key"])
    }
}

/// The CLI's connection to vaultd.
public final class VaultClient: Sendable {
    let http: HTTPClient
    public let configuration: ClientConfiguration
    private let authorization: String?

    public init(configuration: ClientConfiguration) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caFile = configuration.caFile {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        }
        if let certificate = configuration.certificate, let key = configuration.privateKey {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        }
        http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup,
                          configuration: .init(tlsConfiguration: tls))
        self.configuration = configuration
        authorization = configuration.token.map { token in
            "Bearer " + token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        }
    }

    public func shutdown() async throws { try await http.shutdown() }

    /// Runs `body` with a client for `configuration`, shut down afterwards whatever happens.
    public static func with<T>(_ configuration: ClientConfiguration, _ body: (VaultClient) async throws -> T)
        async throws -> T
    {
        let client = try VaultClient(configuration: configuration)
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    func request(_ path: String, method: HTTPMethod) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: configuration.server + path)
        request.method = method
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        return request
    }

    /// Turns a non-2xx answer into a `RemoteError`.
    static func check(_ response: HTTPClientResponse) async throws {
        guard !(200..<300).contains(Int(response.status.code)) else { return }
        let body = (try? await response.body.collect(upTo: 64 * 1024)).map { Array(buffer: $0) } ?? []
        let error = (try? JSONParser.parse(body))?["error"]
        throw RemoteError(status: Int(response.status.code), code: error?["code"]?.stringValue ?? "http_error",
                          message: error?["message"]?.stringValue ?? "vaultd answered \(response.status)")
    }

    /// Sends `request`. A server that gives no answer is `ServerUnreachable`; TLS failures stay what they are.
    func send(_ request: HTTPClientRequest, timeout: TimeAmount) async throws -> HTTPClientResponse {
        do {
            return try await http.execute(request, timeout: timeout)
        } catch let error as NIOSSLError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw ServerUnreachable(server: configuration.server, cause: "\(error)")
        }
    }

    func json(_ request: HTTPClientRequest) async throws -> JSONValue {
        let response = try await send(request, timeout: .seconds(120))
        try await Self.check(response)
        let body = try await response.body.collect(upTo: 64 << 20)
        return try JSONParser.parse(Array(buffer: body))
    }

    public func get(_ path: String) async throws -> JSONValue { try await json(request(path, method: .GET)) }

    public func put(_ path: String, json body: JSONValue) async throws -> JSONValue {
        var request = request(path, method: .PUT)
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body.canonicalBytes()))
        return try await json(request)
    }

    public func delete(_ path: String) async throws -> JSONValue { try await json(request(path, method: .DELETE)) }

    /// POST (or another method) with an optional JSON body.
    public func send(_ path: String, method: HTTPMethod = .POST, json body: JSONValue? = nil) async throws -> JSONValue {
        var request = request(path, method: method)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body.canonicalBytes()))
        }
        return try await json(request)
    }

    /// Streams a file to `PUT .../extracts`; a file that starts with a sealed-file header is sent as sealed.
    public func upload(
        force: ForceID, dataset: DatasetID, path: String, progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
    ) async throws -> ExtractDocument {
        let input = try InputFile(path: path)
        guard input.isRegularFile else { throw VaultError(.invalidParameter, "\(path) is not a regular file") }
        var start = [UInt8](repeating: 0, count: min(Int(input.size), 22))
        try start.withUnsafeMutableBytes { try input.read(at: 0, into: $0) }
        let sealed = start == Array("{\"ciphertext_sha256\":\"".utf8)
        var request = request(APIPath.extracts(force, dataset), method: .PUT)
        request.headers.add(name: "Content-Type",
                            value: sealed ? "application/vnd.vault.sealed" : "application/octet-stream")
        request.body = .stream(FileChunks(path: path, total: input.size, progress: progress),
                               length: .known(Int64(input.size)))
        let response = try await send(request, timeout: .hours(24))
        try await Self.check(response)
        return try ExtractDocument(json: try JSONParser.parse(Array(buffer: try await response.body.collect(upTo: 1 << 20))))
    }

    /// Reads the current extract (or one extract by id) under a use case into `outputPath`. The file appears only
    /// after the whole body arrived; a cut or failed stream leaves nothing.
    /// With `signedRequest`, the reader's own signed read request travels with it (a remote force's custody service
    /// requires one).
    public func read(
        force: ForceID, dataset: DatasetID?, extract: ExtractID?, useCase: String, outputPath: String,
        overwrite: Bool, signedRequest: SignedReadRequest? = nil, progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
    ) async throws -> (bytes: UInt64, extract: String) {
        let query = "use_case=" + (useCase.addingPercentEncodingForQuery())
        let path: String
        if let extract {
            path = "/v1/forces/\(force)/extracts/\(extract)?\(query)"
        } else if let dataset {
            path = "/v1/forces/\(force)/datasets/\(dataset)/current?\(query)"
        } else {
            throw VaultError(.invalidParameter, "name a dataset or an extract")
        }
        return try await download(path, extract: extract, outputPath: outputPath, overwrite: overwrite,
                                  signedRequest: signedRequest, progress: progress)
    }

    /// Reads an archive under a granted retrieval (dual control) into `outputPath`, like `read`.
    public func readArchive(
        force: ForceID, extract: ExtractID, useCase: String, outputPath: String, overwrite: Bool,
        signedRequest: SignedReadRequest? = nil, progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
    ) async throws -> (bytes: UInt64, extract: String) {
        try await download("/v1/forces/\(force)/archives/\(extract)?use_case="
                               + useCase.addingPercentEncodingForQuery(),
                           extract: extract, outputPath: outputPath, overwrite: overwrite, signedRequest: signedRequest,
                           progress: progress)
    }

    func download(
        _ path: String, extract: ExtractID?, outputPath: String, overwrite: Bool, signedRequest: SignedReadRequest?,
        progress: (@Sendable (UInt64, UInt64) -> Void)?
    ) async throws -> (bytes: UInt64, extract: String) {
        let output = try AtomicOutputFile(path: outputPath, replacing: overwrite)
        var request = request(path, method: .GET)
        if let signedRequest { request.headers.add(name: "X-Vault-Read-Request", value: signedRequest.headerValue) }
        let response = try await send(request, timeout: .hours(24))
        try await Self.check(response)
        let expected = response.headers.first(name: "Content-Length").flatMap { UInt64($0) }
        var received: UInt64 = 0
        for try await chunk in response.body {
            try chunk.withUnsafeReadableBytes { try output.write($0) }
            received += UInt64(chunk.readableBytes)
            progress?(received, expected ?? 0)
        }
        if let expected, expected != received {
            throw VaultError(.truncated, "the read was cut off after \(received) of \(expected) bytes; nothing written")
        }
        let served = response.headers.first(name: "X-Vault-Extract") ?? ""
        if let extract, served != extract.rawValue {
            throw VaultError(.integrityFailure, "asked for extract \(extract), vaultd served \(served); nothing written")
        }
        try output.commit()
        return (received, served)
    }
}

extension VaultClient {
    /// Streams a GET's body to `sink`, after checking the status.
    func stream(_ path: String, to sink: (ByteBuffer) async throws -> Void) async throws {
        let response = try await send(request(path, method: .GET), timeout: .hours(24))
        try await Self.check(response)
        for try await chunk in response.body { try await sink(chunk) }
    }

    /// Exports a force's audit chain (NDJSON with its signed checkpoints) into `outputPath`, or to standard output
    /// when it is nil. A file appears only once the whole export arrived. Returns the number of bytes.
    public func exportAudit(force: ForceID, since: String?, outputPath: String?, overwrite: Bool) async throws -> UInt64 {
        var path = "/v1/forces/\(force)/audit"
        if let since { path += "?since=" + since.addingPercentEncodingForQuery() }
        let output = try outputPath.map { try AtomicOutputFile(path: $0, replacing: overwrite) }
        var received: UInt64 = 0
        try await stream(path) { chunk in
            if let output {
                try chunk.withUnsafeReadableBytes { try output.write($0) }
            } else {
                try chunk.withUnsafeReadableBytes { try DurableFile.writeAll(fd: 1, $0, path: "standard output") }
            }
            received += UInt64(chunk.readableBytes)
        }
        try output?.commit()
        return received
    }

    /// Searches a force's audit chain; returns the matching record lines.
    public func searchAudit(force: ForceID, parameters: [(String, String)]) async throws -> [[UInt8]] {
        let query = parameters.map { "\($0.0)=\($0.1.addingPercentEncodingForQuery())" }.joined(separator: "&")
        var body: [UInt8] = []
        try await stream("/v1/forces/\(force)/audit/search" + (query.isEmpty ? "" : "?" + query)) { chunk in
            body += chunk.readableBytesView
            guard body.count <= 256 << 20 else { throw VaultError(.invalidParameter, "the search answer is too large") }
        }
        return body.split(separator: 0x0A).map(Array.init)
    }

    /// The vault's audit public key (PEM).
    public func auditPublicKey() async throws -> String {
        var body: [UInt8] = []
        try await stream("/v1/audit/public-key") { body += $0.readableBytesView }
        return String(decoding: body, as: UTF8.self)
    }

    /// Exports the current extract of a dataset as a sealed file (DESIGN 5.4) into `outputPath`. The header is
    /// checked, and the ciphertext's length and SHA-256 against it, as the bytes arrive; the file appears only if all
    /// of it is right. No key is involved: `vault decrypt` with the force's keyring opens it.
    public func exportExtract(
        force: ForceID, dataset: DatasetID, extract: ExtractID?, outputPath: String, overwrite: Bool,
        progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
    ) async throws -> SealedFileHeader {
        var path = "/v1/forces/\(force)/datasets/\(dataset)/export"
        if let extract { path += "?extract=\(extract)" }
        let output = try AtomicOutputFile(path: outputPath, replacing: overwrite)
        var headerLine: [UInt8] = []
        var header: SealedFileHeader?
        let digest = Digest(.sha256)
        var ciphertext: UInt64 = 0
        var received: UInt64 = 0
        let response = try await send(request(path, method: .GET), timeout: .hours(24))
        try await Self.check(response)
        let expected = response.headers.first(name: "Content-Length").flatMap { UInt64($0) } ?? 0
        for try await chunk in response.body {
            try chunk.withUnsafeReadableBytes { bytes in
                try output.write(bytes)
                var rest = bytes
                if header == nil {
                    if let newline = rest.firstIndex(of: 0x0A) {
                        headerLine += rest[rest.startIndex..<newline]
                        header = try SealedFileHeader(line: headerLine)
                        rest = UnsafeRawBufferPointer(rebasing: rest[(newline + 1)...])
                    } else {
                        headerLine += rest
                        guard headerLine.count <= SealedFileHeader.maximumLineLength else {
                            throw VaultError(.malformedHeader, "the export does not start with a sealed file header")
                        }
                        return
                    }
                }
                digest.update(rest)
                ciphertext += UInt64(rest.count)
            }
            received += UInt64(chunk.readableBytes)
            progress?(received, expected)
        }
        guard let header else { throw VaultError(.truncated, "the export ended inside its header; nothing written") }
        guard header.identity.force == force, header.identity.dataset == dataset else {
            throw VaultError(.integrityFailure, "vaultd sent an extract of \(header.identity.force)/"
                                + "\(header.identity.dataset); nothing written")
        }
        if let extract, header.identity.extract != extract {
            throw VaultError(.integrityFailure, "asked for extract \(extract), got \(header.identity.extract); nothing written")
        }
        guard ciphertext == header.ciphertextSize else {
            throw VaultError(.truncated, "the export was cut off: \(ciphertext) of \(header.ciphertextSize) "
                                + "ciphertext bytes; nothing written")
        }
        guard constantTimeEquals(digest.finalize(), header.ciphertextSHA256) else {
            throw VaultError(.integrityFailure, "the exported ciphertext does not match its header's SHA-256; nothing written")
        }
        try output.commit()
        return header
    }
}

/// A file as a stream of ByteBuffers for an upload body, read 1 MiB at a time.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    let total: UInt64
    let progress: (@Sendable (UInt64, UInt64) -> Void)?

    struct AsyncIterator: AsyncIteratorProtocol {
        let path: String
        let total: UInt64
        let progress: (@Sendable (UInt64, UInt64) -> Void)?
        var file: InputFile?
        var sent: UInt64 = 0

        mutating func next() async throws -> ByteBuffer? {
            if file == nil { file = try InputFile(path: path) }
            var buffer = ByteBufferAllocator().buffer(capacity: 1 << 20)
            let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 << 20) { pointer in
                try file!.read(into: UnsafeMutableRawBufferPointer(rebasing: pointer.prefix(1 << 20)))
            }
            guard count > 0 else { return nil }
            sent += UInt64(count)
            progress?(sent, total)
            return buffer
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(path: path, total: total, progress: progress) }
}

extension String {
    /// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
    func addingPercentEncodingForQuery() -> String {
        var result = ""
        for byte in utf8 {
            let c = Character(Unicode.Scalar(byte))
            if byte < 0x80, c.isLetter || c.isNumber || "-._~".contains(c) {
                result.append(c)
            } else {
                result += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return result
    }

    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

extension ExitStatus {
    /// Exit codes for answers from vaultd, by HTTP status.
    public static func forRemote(_ error: RemoteError) -> Int32 {
        switch error.status {
        case 401: return 10
        case 403: return 9
        case 404: return 11
        case 409: return 8
        case 410: return ExitStatus.gone.rawValue
        case 400, 416: return 6
        case 503: return ExitStatus.unavailable.rawValue
        default: return 1
        }
    }
}
