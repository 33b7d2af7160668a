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

    func router(_ vault: EngineFixture, principals: [Principal]) -> Router<VaultRequestContext> {
        VaultAPI.makeRouter(principals: Dictionary(uniqueKeysWithValues: principals.map { ($0.id, $0) }),
                            engine: vault.engine, metrics: { Array("vault_up 1\n".utf8) }, logger: logger)
    }

    @Test("every route served is in the OpenAPI document, and every operation in the document is served")
    func documentMatchesRoutes() async throws {
        let vault = try await EngineFixture()
        let served = Set(router(vault, principals: []).routes.map { route -> String in
            let path = "\(route.path)"
            return "\(route.method.rawValue) \(path.hasPrefix("/") ? path : "/" + path)"
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
    }

    @Test("in process: the document is served; no credentials or a bad token is a JSON 401; a token meets the policy")
    func authentication() async throws {
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
        }
    }
}
