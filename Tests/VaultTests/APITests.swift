import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KeyCustody
import Logging
import NIOCore
import Testing
import VaultTestSupport

@testable import Vault

/// The API in process (HummingbirdTesting's router mode): the routes, their document, authentication and the
/// policy's answers, without a vaultd process or TLS (the end-to-end tests keep what needs those).
@Suite("HTTP API in process", .serialized)
struct APITests {
    let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    /// "METHOD /path/{param}" for every operation of the OpenAPI document.
    static func documented() throws -> Set<String> {
        let document = try JSONParser.parse(VaultAPI.openAPIDocument)
        guard document["openapi"]?.stringValue == "3.1.0", case .object(let paths)? = document["paths"] else {
            throw VaultError(.invalidParameter, "not an OpenAPI 3.1 document with paths")
        }
        var operations = Set<String>()
        for (path, item) in paths {
            guard case .object(let methods) = item else { continue }
            for method in methods.keys { operations.insert("\(method.uppercased()) \(path)") }
        }
        return operations
    }

    func router(_ vault: EngineFixture, principals: [Principal], metrics: String = "vault_up 1\n")
        -> Router<VaultRequestContext>
    {
        VaultAPI.makeRouter(principals: Dictionary(uniqueKeysWithValues: principals.map { ($0.id, $0) }),
                            engine: vault.engine, metrics: { Array(metrics.utf8) }, logger: logger)
    }

    @Test("/metrics shows an ops principal its own forces' series and the platform's, never another force's")
    func metricsPerForce() async throws {
        let vault = try await EngineFixture()
        let opsWMP = Principal(id: "ops-wmp", grants: [.ops: [vault.force]])
        let token = try await BearerToken.issue(for: opsWMP, description: "test", catalog: vault.catalog)
        let bearer = token.withUnsafeBytes { "Bearer " + String(decoding: $0, as: UTF8.self) }
        let exposition = """
            # TYPE vault_bytes_decrypted_total counter
            vault_bytes_decrypted_total{force="wmp"} 100
            vault_bytes_decrypted_total{force="gmp"} 200
            # TYPE vault_reads_refused_total counter
            vault_reads_refused_total{reason="not_named",force="gmp"} 3
            vault_reads_refused_total{force="wmp",reason="not_named"} 1
            # TYPE vault_http_requests_total counter
            vault_http_requests_total{method="GET",route="/healthz",status="200"} 7

            """
        let app = Application(router: router(vault, principals: [opsWMP], metrics: exposition))
        try await app.test(.router) { client in
            try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: bearer]) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body) == """
                    # TYPE vault_bytes_decrypted_total counter
                    vault_bytes_decrypted_total{force="wmp"} 100
                    # TYPE vault_reads_refused_total counter
                    vault_reads_refused_total{force="wmp",reason="not_named"} 1
                    # TYPE vault_http_requests_total counter
                    vault_http_requests_total{method="GET",route="/healthz",status="200"} 7

                    """)
            }
        }
    }

    @Test("every route served is in the OpenAPI document, and every operation in the document is served",
          arguments: TestBackend.all)
    func documentMatchesRoutes(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        // The console's HTML pages (/ui/...) are for browsers, not part of the API the document describes.
        let served = Set(router(vault, principals: []).routes.compactMap { route -> String? in
            let path = "\(route.path)"
            let absolute = path.hasPrefix("/") ? path : "/" + path
            return absolute.hasPrefix("/ui") ? nil : "\(route.method.rawValue) \(absolute)"
        })
        let documented = try Self.documented()
        #expect(served.subtracting(documented).sorted() == [], "served but not described")
        #expect(documented.subtracting(served).sorted() == [], "described but not served")
        #expect(served.count >= 30)
        // Each operation has its own id, which generated clients name their methods after.
        let document = try JSONParser.parse(VaultAPI.openAPIDocument)
        var ids: [String] = []
        if case .object(let paths)? = document["paths"] {
            for item in paths.values {
                guard case .object(let methods) = item else { continue }
                ids += methods.values.compactMap { $0["operationId"]?.stringValue }
            }
        }
        #expect(ids.count == documented.count && Set(ids).count == ids.count)
    } }

    @Test("in process: the document is served; no credentials or a bad token is a JSON 401; a token meets the policy",
          arguments: TestBackend.all)
    func authentication(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        let token = try await BearerToken.issue(for: vault.analyst, description: "test", catalog: vault.catalog)
        let bearer = token.withUnsafeBytes { "Bearer " + String(decoding: $0, as: UTF8.self) }
        let app = Application(router: router(vault, principals: [vault.analyst, vault.custodian]))
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/openapi.json", method: .get) { response in
                #expect(response.status == .ok)
                #expect(Array(buffer: response.body) == VaultAPI.openAPIDocument)
            }
            try await client.execute(uri: "/v1/forces/wmp/use-cases", method: .get) { response in
                #expect(response.status == .unauthorized)
                #expect(String(buffer: response.body).contains(#""code":"unauthenticated""#))
            }
            try await client.execute(uri: "/v1/forces/wmp/use-cases", method: .get,
                                     headers: [.authorization: "Bearer vt_not-a-token"]) { response in
                #expect(response.status == .unauthorized)
                #expect(String(buffer: response.body).contains(#""code":"invalid_token""#))
            }
            // The analyst's token: its own force's use cases, but neither a rotation nor another force.
            try await client.execute(uri: "/v1/forces/wmp/use-cases", method: .get,
                                     headers: [.authorization: bearer]) { response in
                #expect(response.status == .ok)
                #expect(String(buffer: response.body).contains("serious-violence"))
            }
            try await client.execute(uri: "/v1/forces/wmp/keys/rotate", method: .post,
                                     headers: [.authorization: bearer]) { response in
                #expect(response.status == .forbidden)
                #expect(String(buffer: response.body).contains(#""code":"role_required""#))
            }
            try await client.execute(uri: "/v1/forces/gmp/use-cases", method: .get,
                                     headers: [.authorization: bearer]) { response in
                #expect(response.status == .forbidden)
                #expect(String(buffer: response.body).contains(#""code":"other_force""#))
            }
            try await client.execute(uri: "/metrics", method: .get, headers: [.authorization: bearer]) { response in
                #expect(response.status == .forbidden)
                #expect(String(buffer: response.body).contains("metrics are for principals with the ops role"))
            }
            try await client.execute(uri: "/v1/forces/wmp/extracts/not-an-id", method: .get,
                                     headers: [.authorization: bearer]) { response in
                #expect(response.status == .badRequest)
            }
            // No such route, and no such method on a route: the same JSON error as every other refusal.
            for (uri, method) in [("/v1/no-such-thing", HTTPRequest.Method.get), ("/v1/openapi.json", .delete)] {
                try await client.execute(uri: uri, method: method) { response in
                    #expect(response.status == .notFound)
                    #expect(response.headers[.contentType] == "application/json")
                    #expect(String(buffer: response.body).contains(#""code":"not_found""#))
                    #expect(String(buffer: response.body).contains("no route \(method) \(uri)"))
                }
            }
        }
    } }

    /// The body of a 2xx answer of `operation`, checked against the schema the OpenAPI document gives it, to decode
    /// with `read` and to encode back to the same JSON.
    static func roundTrip<T: Sendable>(
        _ client: some TestClientProtocol, _ operation: String, _ method: HTTPRequest.Method, _ uri: String,
        _ token: String, body: String? = nil, _ read: @escaping @Sendable (JSONValue) throws -> T,
        _ encode: @escaping @Sendable (T) -> JSONValue
    ) async throws -> T {
        let schema = try responseSchema(operation)
        return try await client.execute(uri: uri, method: method, headers: [.authorization: token],
                                        body: body.map { ByteBuffer(string: $0) }) { response in
            #expect((200..<300).contains(response.status.code), "\(uri): \(String(buffer: response.body))")
            let sent = try JSONParser.parse(Array(buffer: response.body))
            #expect(try Self.violations(of: schema, by: sent, at: operation) == [])
            let document = try read(sent)
            #expect(encode(document) == sent, "\(uri)")
            return document
        }
    }

    /// The JSON schema of `operation`'s 2xx answer in the OpenAPI document.
    static func responseSchema(_ operation: String) throws -> JSONValue {
        let document = try JSONParser.parse(VaultAPI.openAPIDocument)
        for item in document["paths"]?.objectValue?.values ?? [:].values {
            for candidate in item.objectValue?.values ?? [:].values where candidate["operationId"] == .string(operation) {
                for (code, answer) in candidate["responses"]?.objectValue ?? [:] where code.hasPrefix("2") {
                    if let schema = answer["content"]?["application/json"]?["schema"] { return schema }
                }
            }
        }
        throw VaultError(.notFound, "the document gives \(operation) no JSON answer")
    }

    /// Where `value` breaks `schema` (the subset of JSON Schema the document uses: $ref, type, required,
    /// properties, additionalProperties false, items, enum).
    static func violations(of schema: JSONValue, by value: JSONValue, at path: String) throws -> [String] {
        if let reference = schema["$ref"]?.stringValue {
            let name = String(reference.dropFirst("#/components/schemas/".count))
            let document = try JSONParser.parse(VaultAPI.openAPIDocument)
            guard let target = document["components"]?["schemas"]?[name] else { return ["\(path): no schema \(name)"] }
            return try violations(of: target, by: value, at: path)
        }
        var found: [String] = []
        if let allowed = schema["enum"]?.arrayValue, !allowed.contains(value) { found.append("\(path): not in enum") }
        switch (schema["type"]?.stringValue, value) {
        case (nil, _), ("string", .string), ("integer", .integer), ("boolean", .bool): break
        case ("object", .object(let members)):
            for key in schema["required"]?.arrayValue?.compactMap(\.stringValue) ?? [] where members[key] == nil {
                found.append("\(path).\(key): missing")
            }
            let properties = schema["properties"]?.objectValue ?? [:]
            for (key, member) in members {
                if let property = properties[key] {
                    found += try violations(of: property, by: member, at: "\(path).\(key)")
                } else if schema["additionalProperties"] == .bool(false) {
                    found.append("\(path).\(key): not described")
                }
            }
        case ("array", .array(let items)):
            if let itemSchema = schema["items"] {
                for (index, item) in items.enumerated() {
                    found += try violations(of: itemSchema, by: item, at: "\(path)[\(index)]")
                }
            }
        default: found.append("\(path): not of type \(schema["type"]?.stringValue ?? "?")")
        }
        return found
    }

    /// Reads `{"key": [...]}`.
    static func list<T>(_ key: String, _ read: @escaping @Sendable (JSONValue) throws -> T)
        -> @Sendable (JSONValue) throws -> [T]
    {
        { try DocumentReader($0, key).array(key, read) }
    }

    @Test("the routes answer with the documents the OpenAPI document describes and the client reads, and back",
          arguments: TestBackend.all)
    func responsesAreTheDocuments(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(Array("week 1".utf8))
        vault.clock.advance(60)
        let current = try await vault.upload(Array("week 2".utf8))
        func bearer(_ principal: Principal) async throws -> String {
            let token = try await BearerToken.issue(for: principal, description: "test", catalog: vault.catalog)
            return token.withUnsafeBytes { "Bearer " + String(decoding: $0, as: UTF8.self) }
        }
        let custodian = try await bearer(vault.custodian)
        let analyst = try await bearer(vault.analyst)
        let ops = try await bearer(vault.ops)
        let app = Application(router: router(vault, principals: [vault.custodian, vault.analyst, vault.ops]))
        try await app.test(.router) { client in
            let extracts = try await Self.roundTrip(client, "listExtracts", .get, "/v1/forces/wmp/datasets/crime/extracts", custodian,
                                               Self.list("extracts", ExtractDocument.init(json:))) {
                .object(["extracts": .array($0.map(\.json))])
            }
            #expect(extracts.map(\.extract) == [current.identity.extract.rawValue])
            let archives = try await Self.roundTrip(client, "listArchives", .get, "/v1/forces/wmp/archives", custodian,
                                               Self.list("archives", ExtractDocument.init(json:))) {
                .object(["archives": .array($0.map(\.json))])
            }
            let archive = try #require(archives.first)
            #expect(archive.state == "archived" && archive.expiresAt != nil)
            let held = try await Self.roundTrip(client, "placeHold", .post, "/v1/forces/wmp/archives/\(archive.extract)/hold", custodian,
                                           body: #"{"reason":"inquiry 7"}"#, ExtractDocument.init(json:), \.json)
            #expect(held.hold?.reason == "inquiry 7" && held.hold?.placedBy == vault.custodian.id)
            let useCase = try await Self.roundTrip(
                client, "putUseCase", .put, "/v1/forces/wmp/use-cases/gangs", custodian,
                body: #"{"description":"gang violence","lawful_basis":"DPA 2018 s.35","datasets":["crime"],"principals":["analyst-1"]}"#,
                UseCaseDocument.init(json:), \.json)
            #expect(useCase.datasets == ["crime"] && !useCase.revoked)
            let retrieval = try await Self.roundTrip(
                client, "requestRetrieval", .post, "/v1/forces/wmp/archives/\(archive.extract)/retrievals", analyst,
                body: #"{"use_case":"serious-violence","reason":"review"}"#, RetrievalDocument.init(json:), \.json)
            #expect(retrieval.state == "pending" && retrieval.approvals.isEmpty)
            let dataset = try await Self.roundTrip(
                client, "putDataset", .put, "/v1/forces/wmp/datasets/crime", custodian,
                body: #"{"retention_days":90,"description":"recorded crime"}"#, DatasetDocument.init(json:), \.json)
            #expect(dataset.retentionDays == 90 && dataset.updatedAt != nil)
            let datasets = try await Self.roundTrip(client, "listDatasets", .get, "/v1/forces/wmp/datasets", analyst,
                                                    Self.list("datasets", DatasetDocument.init(json:))) {
                .object(["datasets": .array($0.map(\.json))])
            }
            #expect(datasets == [dataset])
            let tokens = try await Self.roundTrip(client, "listTokens", .get, "/v1/tokens", custodian,
                                                  Self.list("tokens", TokenDocument.init(json:))) {
                .object(["tokens": .array($0.map(\.json))])
            }
            // The custodian of wmp manages the tokens of every principal with a role in wmp: its own, the analyst's
            // and ops' (ops of wmp and gmp).
            #expect(Set(tokens.map(\.principal)) == [vault.custodian.id, vault.analyst.id, vault.ops.id])
            let analystToken = try #require(tokens.first { $0.principal == vault.analyst.id })
            let revoked = try await Self.roundTrip(client, "revokeToken", .delete, "/v1/tokens/\(analystToken.id)",
                                                   custodian, TokenDocument.init(json:), \.json)
            #expect(revoked.state == "revoked" && revoked.revokedAt != nil)
            let rotation = try await Self.roundTrip(client, "rotateMasterKey", .post, "/v1/forces/wmp/keys/rotate", custodian,
                                               RotationDocument.init(json:), \.json)
            #expect(rotation.state == "running" && rotation.from != nil)
            let status = try await Self.roundTrip(client, "keyStatus", .get, "/v1/forces/wmp/keys", custodian,
                                             KeyStatusDocument.init(json:), \.json)
            #expect(status.active == rotation.to && status.masterKeys.count == 2)
            let report = try await Self.roundTrip(client, "shredExpired", .post, "/v1/shred?expired=true&dry_run=true&force=wmp", ops,
                                             ShredReportDocument.init(json:), \.json)
            #expect(report.dryRun && report.candidates == [] && report.shredded == nil)
        }
    } }

    @Test("a document missing a member or holding the wrong type fails with malformed_response naming the member",
          arguments: TestBackend.all)
    func malformedDocuments(_ backend: TestBackend) async throws { try await backend.run {
        var members = try #require(RotationDocument(
            RotationRecord(force: try ForceID(force: "wmp"), to: .master(force: try ForceID(force: "wmp"), version: 2),
                           from: nil, requestedBy: "c", startedAt: 0)).json.objectValue)
        members["processed"] = .string("many")
        let wrongType = #expect(throws: VaultError.self) { try RotationDocument(json: .object(members)) }
        #expect(wrongType?.code == .malformedResponse)
        #expect(wrongType?.message == "the server's rotation has no valid processed")
        let notObject = #expect(throws: VaultError.self) { try KeyStatusDocument(json: .array([])) }
        #expect(notObject?.message == "the server's key status is not a JSON object")
    } }

    @Test("a use-case body the CLI makes is read back unchanged by the route; unknown members and bad times are refused",
          arguments: TestBackend.all)
    func useCaseRequest(_ backend: TestBackend) async throws { try await backend.run {
        let request = UseCaseRequest(description: "gang violence", lawfulBasis: "DPA 2018 s.35",
                                     datasets: [try DatasetID(dataset: "crime")], principals: ["analyst-1"],
                                     validFrom: 1_780_000_000, validUntil: nil)
        #expect(try UseCaseRequest(json: request.json) == request)
        let useCase = try UseCase(requestBody: request.json.canonicalBytes(), force: try ForceID(force: "wmp"),
                                  id: try ResourceID("gangs", kind: "use case id"))
        #expect(useCase.validFrom == 1_780_000_000 && useCase.principals == ["analyst-1"])
        var members = try #require(request.json.objectValue)
        members["colour"] = .string("blue")
        let unknown = #expect(throws: VaultError.self) { try UseCaseRequest(json: .object(members)) }
        #expect(unknown?.message.hasPrefix(#"invalid use case: unknown field "colour""#) == true)
        members["colour"] = nil
        members["valid_until"] = .string("tomorrow")
        let badTime = #expect(throws: VaultError.self) { try UseCaseRequest(json: .object(members)) }
        #expect(badTime?.message == "invalid use case: valid_until must be an RFC 3339 UTC time like 2026-01-31T00:00:00Z")
    } }

    @Test("the OpenAPI document is valid OpenAPI 3.1 for an independent validator (openapi-spec-validator)")
    func documentValidates() async throws {
        let python = ProcessInfo.processInfo.environment["VAULT_PYTHON"] ?? "/usr/bin/python3"
        let document = TestVectors.packageRoot.appendingPathComponent("Sources/Vault/Server/API/openapi.json").path
        let result = try Binaries.run(python, ["-m", "openapi_spec_validator", document])
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.contains("OK"))
    }
}
