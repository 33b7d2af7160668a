import AsyncHTTPClient
import KeyCustody

/// vaultd's API paths, built in one place (the routes are in `Server/API`, described by `openapi.json`).
public enum APIPath {
    public static func force(_ force: ForceID) -> String { "/v1/forces/\(force)" }
    public static func keys(_ force: ForceID) -> String { self.force(force) + "/keys" }
    public static func useCases(_ force: ForceID) -> String { self.force(force) + "/use-cases" }
    public static func useCase(_ force: ForceID, _ id: ResourceID) -> String { useCases(force) + "/\(id)" }
    public static func extracts(_ force: ForceID, _ dataset: DatasetID) -> String {
        self.force(force) + "/datasets/\(dataset)/extracts"
    }
    public static func archives(_ force: ForceID) -> String { self.force(force) + "/archives" }
    public static func archive(_ force: ForceID, _ extract: ExtractID) -> String { archives(force) + "/\(extract)" }
    public static func retrievals(_ force: ForceID) -> String { self.force(force) + "/retrievals" }
    public static func certificates(_ force: ForceID) -> String { self.force(force) + "/certificates" }
    public static func datasets(_ force: ForceID) -> String { self.force(force) + "/datasets" }
    public static func dataset(_ force: ForceID, _ dataset: DatasetID) -> String { datasets(force) + "/\(dataset)" }
    public static let tokens = "/v1/tokens"
}

/// The API as typed calls: each reads the response document the route sends (`Documents.swift`).
extension VaultClient {
    /// The array `key` of a list response, each item read by `read`.
    public func list<T>(_ path: String, _ key: ListKey, _ read: (JSONValue) throws -> T) async throws -> [T] {
        try DocumentReader(try await get(path), "list of \(key.rawValue)").array(key.rawValue, read)
    }

    // MARK: Tokens

    public func tokens() async throws -> [TokenDocument] {
        try await list(APIPath.tokens, .tokens, TokenDocument.init(json:))
    }

    public func revokeToken(id: String) async throws -> TokenDocument {
        try TokenDocument(json: try await delete(APIPath.tokens + "/\(try BearerToken.id(id))"))
    }

    // MARK: Datasets

    public func datasets(force: ForceID) async throws -> [DatasetDocument] {
        try await list(APIPath.datasets(force), .datasets, DatasetDocument.init(json:))
    }

    public func putDataset(force: ForceID, dataset: DatasetID, retentionDays: Int, description: String) async throws
        -> DatasetDocument
    {
        try DatasetDocument(json: try await send(
            APIPath.dataset(force, dataset), method: .PUT,
            json: DatasetRequest(retentionDays: retentionDays, description: description).json))
    }

    // MARK: Keys

    public func keyStatus(force: ForceID) async throws -> KeyStatusDocument {
        try KeyStatusDocument(json: try await get(APIPath.keys(force)))
    }

    public func rotate(force: ForceID) async throws -> RotationDocument {
        try RotationDocument(json: try await send(APIPath.keys(force) + "/rotate"))
    }

    public func migrate(force: ForceID, to backend: String) async throws -> RotationDocument {
        try RotationDocument(json: try await send(APIPath.keys(force) + "/migrate",
                                                  json: MigrationRequest(to: backend).json))
    }

    public func destroyMasterKey(force: ForceID, version: Int) async throws -> KeyDestructionDocument {
        try KeyDestructionDocument(json: try await send(APIPath.keys(force) + "/\(version)/destroy"))
    }

    // MARK: Extracts and archives

    public func extracts(force: ForceID, dataset: DatasetID) async throws -> [ExtractDocument] {
        try await list(APIPath.extracts(force, dataset), .extracts, ExtractDocument.init(json:))
    }

    public func archives(force: ForceID) async throws -> [ExtractDocument] {
        try await list(APIPath.archives(force), .archives, ExtractDocument.init(json:))
    }

    public func placeHold(force: ForceID, extract: ExtractID, reason: String) async throws -> ExtractDocument {
        try ExtractDocument(json: try await send(APIPath.archive(force, extract) + "/hold",
                                                 json: ReasonRequest(reason: reason).json))
    }

    public func releaseHold(force: ForceID, extract: ExtractID, reason: String) async throws -> ExtractDocument {
        try ExtractDocument(json: try await send(APIPath.archive(force, extract) + "/hold", method: .DELETE,
                                                 json: ReasonRequest(reason: reason).json))
    }

    // MARK: Retrievals

    public func requestRetrieval(force: ForceID, extract: ExtractID, useCase: String, reason: String) async throws
        -> RetrievalDocument
    {
        try RetrievalDocument(json: try await send(
            APIPath.archive(force, extract) + "/retrievals",
            json: RetrievalRequest(useCase: useCase, reason: reason).json))
    }

    public func approveRetrieval(force: ForceID, id: ResourceID) async throws -> RetrievalDocument {
        try RetrievalDocument(json: try await send(APIPath.retrievals(force) + "/\(id)/approve"))
    }

    public func retrievals(force: ForceID) async throws -> [RetrievalDocument] {
        try await list(APIPath.retrievals(force), .retrievals, RetrievalDocument.init(json:))
    }

    // MARK: Shredding and certificates

    public func shredExpired(force: ForceID?, dryRun: Bool) async throws -> ShredReportDocument {
        var path = "/v1/shred?expired=true&dry_run=\(dryRun)"
        if let force { path += "&force=\(force)" }
        return try ShredReportDocument(json: try await send(path))
    }

    public func shredArchive(force: ForceID, extract: ExtractID, reason: String) async throws
        -> DestructionCertificate
    {
        try DestructionCertificate(json: try await send(APIPath.archive(force, extract) + "/shred",
                                                        json: ReasonRequest(reason: reason).json))
    }

    public func certificates(force: ForceID, extract: ExtractID?) async throws -> [DestructionCertificate] {
        try await list(APIPath.certificates(force) + (extract.map { "?extract=\($0)" } ?? ""), .certificates,
                       DestructionCertificate.init(json:))
    }

    public func certificate(force: ForceID, id: ExtractID) async throws -> DestructionCertificate {
        try DestructionCertificate(json: try await get(APIPath.certificates(force) + "/\(id)"))
    }

    // MARK: Use cases

    public func putUseCase(force: ForceID, id: ResourceID, body: UseCaseRequest) async throws -> UseCaseDocument {
        try UseCaseDocument(json: try await put(APIPath.useCase(force, id), json: body.json))
    }

    public func revokeUseCase(force: ForceID, id: ResourceID) async throws -> UseCaseDocument {
        try UseCaseDocument(json: try await delete(APIPath.useCase(force, id)))
    }

    public func useCases(force: ForceID) async throws -> [UseCaseDocument] {
        try await list(APIPath.useCases(force), .useCases, UseCaseDocument.init(json:))
    }

    // MARK: A force's custody service (the same client, pointed at it)

    public func registerSigningKey(force: ForceID, principal: ResourceID, publicKeyPEM: String) async throws {
        _ = try await put(APIPath.force(force) + "/principals/\(principal)",
                          json: .object(["public_key": .string(publicKeyPEM)]))
    }

    public func registeredKeys(force: ForceID) async throws -> [PrincipalKeyDocument] {
        try await list(APIPath.force(force) + "/principals", .principals, PrincipalKeyDocument.init(json:))
    }

    public func approveAtCustody(force: ForceID, extract: ExtractID, analyst: String, useCase: String) async throws
        -> ApprovalCountDocument
    {
        let body = JSONValue.object(["extract": .string(extract.rawValue), "analyst": .string(analyst),
                                     "use_case": .string(useCase)])
        return try ApprovalCountDocument(json: try await send(APIPath.force(force) + "/approvals", json: body))
    }

    public func witnessAlarms(force: ForceID) async throws -> [WitnessAlarmDocument] {
        try await list(APIPath.force(force) + "/alarms", .alarms, WitnessAlarmDocument.init(json:))
    }

    public func clearAlarms(force: ForceID, reason: String) async throws -> ClearedAlarmsDocument {
        try ClearedAlarmsDocument(json: try await send(APIPath.force(force) + "/alarms/clear",
                                                       json: ReasonRequest(reason: reason).json))
    }
}
