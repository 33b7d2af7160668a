import AsyncHTTPClient
import KeyCustody
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// Custody backend `remote` (DESIGN 6.3): the force's keys stay at the force's own custody service, which the
/// platform calls over mutual TLS 1.3. vaultd keeps no key of the force: no keyring, passphrase, PIN or KEK, and an
/// extract key only in secure memory for the one request that asked for it. Idempotent calls (status, rewrap,
/// archive key, retire, destroy, use cases, witness) are retried on a lost connection; unwrap, generate and rotate
/// never are. Each call has a deadline: a custody service that stalls makes the call fail with `custody_unavailable`,
/// and so does one that is down, at once.
public final class RemoteCustody: KeyCustodian {
    public let force: ForceID
    public let location: CustodyConfiguration.RemoteLocation
    /// The custody service's key: the platform accepts use cases and cosignatures signed by it only.
    public let custodyKey: Ed25519.PublicKey
    private let tls: TLSConfiguration
    private let health = Mutex<String?>(nil)
    /// How long one call may take (a rewrap batch gets more).
    public let timeout: TimeAmount

    /// One HTTP client for every remote force (per-request TLS settings keep their connection pools apart). A
    /// refused connection fails at once instead of being retried until the deadline.
    static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(60))
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.decompression = .disabled
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration,
                          backgroundActivityLogger: Logger(label: "vault-remote-custody",
                                                           factory: { _ in SwiftLogNoOpLogHandler() }))
    }()

    public init(force: ForceID, location: CustodyConfiguration.RemoteLocation, timeout: TimeAmount = .seconds(10))
        throws
    {
        self.force = force
        self.location = location
        self.timeout = timeout
        func invalid(_ what: String, _ error: any Error) -> CustodyError {
            CustodyError(.invalidConfiguration, "force \(force): cannot read \(what)", underlying: "\(error)")
        }
        do {
            custodyKey = try Ed25519.PublicKey(pem: String(decoding: try DurableFile.read(location.custodyKey,
                                                                                          limit: 64 * 1024),
                                                           as: UTF8.self))
        } catch { throw invalid("custody_key \(location.custodyKey) (the custody service's PEM public key)", error) }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        do {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(location.caFile))
        } catch { throw invalid("ca \(location.caFile)", error) }
        do {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(location.clientCertificate).map { .certificate($0) }
        } catch { throw invalid("client_certificate \(location.clientCertificate)", error) }
        do {
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: location.clientKey, format: .pem))
        } catch { throw invalid("the client key file", error) }
        self.tls = tls
    }

    /// Opens a remote force's custody for `CustodyConfiguration.open` (no call is made until it is used).
    public static let opener: @Sendable (ForceID, CustodyConfiguration.RemoteLocation) throws -> any KeyCustodian = {
        try RemoteCustody(force: $0, location: $1)
    }

    /// Why the force's custody service cannot be used right now (the last call failed to reach it), or nil.
    public var unavailableReason: String? { health.withLock { $0 } }

    // MARK: Calls

    static func newRequestID() -> String { "vaultd-" + Hex.encode(SecureRandom.bytes(count: 8)) }

    /// One call: JSON in, JSON out; errors sorted into unavailable (retry later, 503), refused (the force's rule,
    /// 403) and protocol errors. Members named in `secretMembers` are parsed into secure memory.
    func call(_ method: HTTPMethod, _ path: String, body: JSONValue? = nil, secretBody: SecureBytes? = nil,
              idempotent: Bool, requestID: String, timeout: TimeAmount? = nil, secretMembers: Set<String> = [])
        async throws -> JSONValue
    {
        var attempt = 0
        while true {
            attempt += 1
            do {
                let value = try await callOnce(method, path, body: body, requestID: requestID,
                                               timeout: timeout ?? self.timeout, secretMembers: secretMembers)
                health.withLock { $0 = nil }
                return value
            } catch let error as CustodyError where error.code == .custodyUnavailable {
                health.withLock { $0 = error.message }
                guard idempotent, attempt < 3 else {
                    // How long the caller waited follows from it: at most `attempt` deadlines.
                    throw CustodyError(.custodyUnavailable, error.message + " (\(attempt) attempt"
                                       + (attempt == 1 ? ")" : "s)"), underlying: error.underlying)
                }
                try await Task.sleep(for: .milliseconds(100 * attempt))
            }
        }
    }

    private func callOnce(_ method: HTTPMethod, _ path: String, body: JSONValue?, requestID: String,
                          timeout: TimeAmount, secretMembers: Set<String>) async throws -> JSONValue
    {
        var request = HTTPClientRequest(url: location.url + "/v1/forces/\(force)" + path)
        request.method = method
        request.tlsConfiguration = tls
        request.headers.add(name: "X-Request-ID", value: requestID)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body.canonicalBytes()))
        }
        let unavailable = { (reason: String) in
            CustodyError(.custodyUnavailable, "the custody service of force \(self.force) at \(self.location.url) "
                            + "cannot be used: \(reason)")
        }
        let response: HTTPClientResponse
        var buffer: ByteBuffer
        do {
            response = try await Self.http.execute(request, deadline: .now() + timeout)
            buffer = try await response.body.collect(upTo: CustodyWire.maximumBody)
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout
            || error == .connectTimeout || error == .tlsHandshakeTimeout
        {
            throw unavailable("no answer within \(timeout.nanoseconds / 1_000_000_000) s")
        } catch let error as NIOSSLError {
            throw unavailable("TLS failed (\(error)): check ca, client_certificate and client_key")
        } catch {
            throw unavailable("\(error)")
        }
        defer { buffer.withUnsafeMutableReadableBytes { secureZero($0) } }
        let status = Int(response.status.code)
        let json = buffer.withUnsafeReadableBytes { try? JSONParser.parse($0, secretMembers: secretMembers) }
        if (200..<300).contains(status) {
            guard let json else {
                throw CustodyError(.custodyProtocolError, "the custody service of force \(force) answered \(status) "
                                    + "with a body that is not JSON")
            }
            return json
        }
        let code = json?["error"]?["code"]?.stringValue ?? "http_\(status)"
        let message = json?["error"]?["message"]?.stringValue ?? "HTTP \(status)"
        // What a key says about itself means the same as from a local keyring or token (a tampered wrapped key, a
        // destroyed key, a state conflict), and vaultd answers it the same way.
        if let local = Self.keyErrors[code] {
            throw CustodyError(local, "the custody service of force \(force): \(message)")
        }
        switch status {
        case 500...599 where status != 501:
            throw unavailable("\(message) (\(code))")
        case 401, 403, 409, 410:
            throw CustodyError(.custodyRefused, "the custody service of force \(force) refused: \(message)",
                               underlying: code + (json?["error"]?["size"]?.stringValue.map { ":size=\($0)" } ?? ""))
        default:
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) answered \(status): "
                                + "\(message) (\(code))")
        }
    }

    /// The custody service's codes that name a fact about a key, as the local backends' codes.
    static let keyErrors: [String: CustodyError.Code] = [
        "integrity_failure": .authenticationFailure, "unknown_key": .unknownKey, "key_destroyed": .keyDestroyed,
        "key_state_conflict": .keyStateConflict, "malformed_wrapped_key": .malformedWrappedKey,
        "context_mismatch": .contextMismatch,
    ]

    static func field(_ value: JSONValue, _ name: String, force: ForceID) throws -> JSONValue {
        guard let member = value[name] else {
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) answered without \(name)")
        }
        return member
    }

    // MARK: KeyCustodian

    public func status() async throws -> [KeyInfo] {
        let answer = try await call(.GET, "/keys", idempotent: true, requestID: Self.newRequestID())
        guard let keys = answer["keys"]?.arrayValue else {
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) listed no keys")
        }
        return try keys.map(CustodyWire.keyInfo)
    }

    public func activeMasterKey() async throws -> KEKID {
        guard let active = try await status().activeMaster else {
            throw CustodyError(.keyringInconsistent, "the custody service of force \(force) has no active master key")
        }
        return active
    }

    public func rotate() async throws -> KEKID {
        let answer = try await call(.POST, "/keys/rotate", body: .object([:]), idempotent: false,
                                    requestID: Self.newRequestID())
        return try CustodyWire.kek(answer["active"], "active")
    }

    public func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try await generateDataKey(for: context, justification: Justification(
            principal: "vaultd", purpose: .upload, requestID: Self.newRequestID()))
    }

    public func generateDataKey(for context: WrapContext, justification: Justification) async throws -> DataKey {
        let answer = try await call(.POST, "/keys/generate", body: .object([
            "context": CustodyWire.json(context), "justification": CustodyWire.json(justification),
        ]), idempotent: false, requestID: justification.requestID, secretMembers: ["key"])
        guard case .secret(let key)? = answer["key"], key.count == 32 else {
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) sent no 32-byte key")
        }
        let wrapped = try CustodyWire.wrappedKey(answer["wrapped"])
        guard wrapped.kek.force == force, wrapped.kek.isMaster else {
            throw CustodyError(.custodyProtocolError, "the custody service wrapped the new key under \(wrapped.kek)")
        }
        return DataKey(key: key, wrapped: wrapped)
    }

    public func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try justification.check(unwrapUnder: wrapped.kek)
        let answer = try await call(.POST, "/keys/unwrap", body: .object([
            "wrapped": wrapped.json, "context": CustodyWire.json(context),
            "justification": CustodyWire.json(justification),
        ]), idempotent: false, requestID: justification.requestID, secretMembers: ["key"])
        guard case .secret(let key)? = answer["key"], key.count == 32 else {
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) sent no 32-byte key")
        }
        return key
    }

    public func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        guard let result = try await rewrap([RewrapItem(wrapped: wrapped, context: context)], to: kek,
                                            justification: justification).first
        else { throw CustodyError(.custodyProtocolError, "the custody service answered an empty rewrap") }
        return try result.get()
    }

    public func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        guard !items.isEmpty else { return [] }
        var results: [Result<WrappedKey, CustodyError>] = []
        results.reserveCapacity(items.count)
        var start = 0
        while start < items.count {
            let batch = items[start..<min(start + CustodyWire.maximumBatch, items.count)]
            let answer = try await call(.POST, "/keys/rewrap", body: .object([
                "to": .string(kek.description), "justification": CustodyWire.json(justification),
                "items": .array(batch.map { .object(["wrapped": $0.wrapped.json, "context": CustodyWire.json($0.context)]) }),
            ]), idempotent: true, requestID: justification.requestID, timeout: .seconds(120))
            guard let answered = answer["results"]?.arrayValue, answered.count == batch.count else {
                throw CustodyError(.custodyProtocolError, "the custody service of force \(force) answered a rewrap "
                                    + "batch of \(batch.count) with another number of results")
            }
            for result in answered {
                if let wrapped = result["wrapped"] {
                    let key = try CustodyWire.wrappedKey(wrapped)
                    guard key.kek == kek else {
                        throw CustodyError(.custodyProtocolError, "the custody service rewrapped under \(key.kek), "
                                            + "not \(kek)")
                    }
                    results.append(.success(key))
                } else {
                    let code = result["error"]?["code"]?.stringValue ?? "custody_refused"
                    let message = result["error"]?["message"]?.stringValue ?? "refused"
                    // A code this vault does not know stays a refusal, with the service's own code kept.
                    results.append(.failure(CustodyError.Code(rawValue: code).map { CustodyError($0, message) }
                                            ?? CustodyError(.custodyRefused, message, underlying: code)))
                }
            }
            start += batch.count
        }
        return results
    }

    public func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        let answer = try await call(.POST, "/keys/archive", body: .object(["extract": .string(extract.rawValue)]),
                                    idempotent: true, requestID: Self.newRequestID())
        let kek = try CustodyWire.kek(answer["kek"], "kek")
        guard kek == .archive(force: force, extract: extract) else {
            throw CustodyError(.custodyProtocolError, "the custody service made archive key \(kek) for \(extract)")
        }
        return kek
    }

    public func retire(_ kek: KEKID) async throws {
        _ = try await call(.POST, "/keys/retire", body: .object(["kek": .string(kek.description)]), idempotent: true,
                           requestID: Self.newRequestID())
    }

    public func destroy(_ kek: KEKID) async throws { try await destroy([kek]) }

    public func destroy(_ keks: [KEKID]) async throws {
        guard !keks.isEmpty else { return }
        _ = try await call(.POST, "/keys/destroy", body: .object(["keks": .array(keks.map { .string($0.description) })]),
                           idempotent: true, requestID: Self.newRequestID(), timeout: .seconds(60))
    }

    /// The force's custody service keeps its tombstones: its keyring and its log are the force's to prune.
    public func forgetDestroyed(_ keks: [KEKID]) async throws {}

    // MARK: Use cases and witnessing

    /// The force's use cases as its custody service signed them, each verified with the custody key.
    public func signedUseCases() async throws -> [SignedUseCase] {
        let answer = try await call(.GET, "/use-cases", idempotent: true, requestID: Self.newRequestID())
        guard let list = answer["signed"]?.arrayValue else {
            throw CustodyError(.custodyProtocolError, "the custody service of force \(force) sent no signed use cases")
        }
        return try list.map { item in
            let signed = try SignedUseCase(json: item, verifyingWith: custodyKey)
            guard signed.useCase.force == force else {
                throw CustodyError(.custodyProtocolError, "a signed use case names force \(signed.useCase.force)")
            }
            return signed
        }
    }

    /// What the witness answered a submission.
    public enum WitnessAnswer: Sendable {
        case cosigned(Cosignature)
        /// The witness holds another size: submit again from it.
        case sizeMismatch(Int64)
        /// The witness refused the chain (and raised an alarm at the force).
        case refused(code: String, message: String)
    }

    public func witness(_ submission: WitnessSubmission) async throws -> WitnessAnswer {
        do {
            let answer = try await call(.POST, "/witness", body: submission.json, idempotent: true,
                                        requestID: Self.newRequestID(), timeout: .seconds(60))
            let cosignature = try Cosignature(json: answer)
            guard cosignature.isValid(key: custodyKey), cosignature.seq == submission.checkpoint.seq,
                cosignature.hash == submission.checkpoint.hash, cosignature.force == force
            else {
                throw CustodyError(.custodyProtocolError, "the witness's cosignature does not verify with the custody "
                                    + "key or names another checkpoint")
            }
            return .cosigned(cosignature)
        } catch let error as CustodyError where error.code == .custodyRefused {
            let underlying = error.underlying ?? ""
            if underlying.hasPrefix("size_mismatch:size="), let size = Int64(underlying.dropFirst(19)) {
                return .sizeMismatch(size)
            }
            return .refused(code: String(underlying.prefix { $0 != ":" }), message: error.message)
        } catch let error as VaultError where error.code == .malformedAudit {
            throw CustodyError(.custodyProtocolError, "the witness answered something that is not a cosignature")
        }
    }
}
