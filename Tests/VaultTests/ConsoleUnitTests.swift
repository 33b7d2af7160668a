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

@Suite("Console: forms, sessions, activity, pages")
struct ConsoleUnitTests {
    let logger = Logger(label: "console-tests")

    @Test("form bodies: plus is a space, percent escapes are bytes, fields repeat, malformed bodies are refused")
    func forms() throws {
        let form = try ConsoleForm(urlEncoded: Array("a=1&b=x+y%21&d=crime&d=custody&e=&f&%C3%A9=%E2%9C%93".utf8))
        #expect(form["a"] == "1" && form["b"] == "x y!" && form["e"] == "" && form["f"] == "")
        #expect(form.lists["d"] == ["crime", "custody"] && form["é"] == "✓")
        #expect(try form.require("a") == "1")
        #expect(throws: VaultError.self) { try form.require("e", label: "the lawful basis") }
        for bad in ["a=%", "a=%4", "a=%zz", "a=%FF", "%C3=1"] {
            #expect(throws: APIError.self, "\(bad)") { try ConsoleForm(urlEncoded: Array(bad.utf8)) }
        }
        // What the console escapes parses back to the same text.
        let text = "a b&c=d/é?%"
        let again = try ConsoleForm(urlEncoded: Array(("x=" + Console.queryEscape(text)).utf8))
        #expect(again["x"] == text)
    }

    @Test("a session ends after 15 idle minutes, after an hour whatever, at sign-out; the store is bounded")
    func sessionLifetimes() throws {
        let clock = TestClock()
        let sessions = ConsoleSessions(now: { clock.now })
        let idle = try sessions.open(principal: "custodian-wmp", credential: .certificate)
        let busy = try sessions.open(principal: "custodian-wmp", credential: .certificate)
        let closed = try sessions.open(principal: "dpo-wmp", credential: .certificate)
        #expect(idle != busy && idle.hasPrefix("vs_") && idle.utf8.count == 67)
        #expect(sessions.session(idle)?.csrf != sessions.session(busy)?.csrf)
        sessions.close(closed)
        #expect(sessions.session(closed) == nil)
        for _ in 0..<5 {
            clock.advance(10 * 60)
            #expect(sessions.session(busy) != nil)
        }
        #expect(sessions.session(idle) == nil, "15 minutes without a request did not end the session")
        clock.advance(10 * 60)
        #expect(sessions.session(busy) == nil, "a session outlived its hour")
        #expect(sessions.session("vs_" + String(repeating: "0", count: 64)) == nil)
        #expect(sessions.session("not a cookie") == nil)

        // Full: a sign-in is refused until sessions end; ended ones are swept to make room.
        for _ in 0..<ConsoleSessions.capacity { _ = try sessions.open(principal: "ops-1", credential: .certificate) }
        #expect(throws: APIError.self) { try sessions.open(principal: "ops-1", credential: .certificate) }
        clock.advance(ConsoleSessions.idleLimit)
        #expect(throws: Never.self) { try sessions.open(principal: "ops-1", credential: .certificate) }
        #expect(sessions.count == 1)
    }

    @Test("activity per day: uploads, reads and refusals by reason, for ops and auditors only", arguments: TestBackend.all)
    func activity(_ backend: TestBackend) async throws { try await backend.run {
        let vault = try await EngineFixture()
        _ = try await vault.upload(testBytes(count: 5000, seed: 1))
        _ = try await vault.upload(testBytes(count: 5000, seed: 2))
        _ = try await vault.read()
        await #expect(throws: VaultError.self) { _ = try await vault.read(useCase: "no-such-case") }
        await #expect(throws: VaultError.self) { _ = try await vault.read(useCase: nil) }
        let activity = try await vault.engine.activity(principal: vault.ops, force: vault.force, days: 14,
                                                       requestID: "t")
        let today = vault.clock.now / 86_400
        #expect(activity.allowed.contains(AuditActivity.Count(day: today, name: "upload", count: 2)))
        #expect(activity.allowed.contains(AuditActivity.Count(day: today, name: "read", count: 1)))
        #expect(activity.refusals.reduce(0) { $0 + $1.count } == 2, "\(activity.refusals)")
        #expect(activity.refusals.allSatisfy { $0.day == today && $0.name != "unknown" }, "\(activity.refusals)")
        #expect(try await vault.engine.activity(principal: vault.auditor, force: vault.force, days: 1,
                                                requestID: "t").allowed.count == 2)
        // The same counts through the API, for an operator's own tools.
        let token = try await BearerToken.issue(for: vault.ops, description: "test", catalog: vault.catalog)
        let bearer = token.withUnsafeBytes { "Bearer " + String(decoding: $0, as: UTF8.self) }
        let router = VaultAPI.makeRouter(principals: [vault.ops.id: vault.ops], engine: vault.engine,
                                         metrics: { [] }, logger: logger)
        try await Application(router: router).test(.router) { client in
            try await client.execute(uri: "/v1/forces/wmp/activity?days=7", method: .get,
                                     headers: [.authorization: bearer]) { response in
                #expect(response.status == .ok)
                let json = try JSONParser.parse(Array(buffer: response.body))
                let uploads = json["allowed"]?.arrayValue?.first { $0["name"]?.stringValue == "upload" }
                #expect(uploads?["count"]?.integerValue == 2 && json["days"]?.integerValue == 7)
                #expect(json["from"]?.stringValue == Timestamp.format(secondsSinceEpoch: Int((today - 6) * 86_400))
                    .prefix(10).description)
            }
            for bad in ["0", "367", "x", "99999"] {
                try await client.execute(uri: "/v1/forces/wmp/activity?days=\(bad)", method: .get,
                                         headers: [.authorization: bearer]) { #expect($0.status == .badRequest) }
            }
        }
        // Tomorrow's 1-day window holds nothing of today's.
        vault.clock.advance(86_400)
        let tomorrow = try await vault.engine.activity(principal: vault.ops, force: vault.force, days: 1,
                                                       requestID: "t")
        #expect(tomorrow.allowed.isEmpty && tomorrow.refusals.isEmpty && tomorrow.since == (today + 1) * 86_400)
        await #expect(throws: VaultError.self) {
            _ = try await vault.engine.activity(principal: vault.analyst, force: vault.force, days: 14, requestID: "t")
        }
        await #expect(throws: VaultError.self) {
            _ = try await vault.engine.activity(principal: vault.ops, force: vault.force, days: 0, requestID: "t")
        }
        let charts = ConsoleCharts.activity(activity, days: 14, today: today)
        #expect(charts.map { $0["total"] as? Int64 } == [2, 1, 2, 0])
    }}

    @Test("charts escape what they draw and draw one bar per day")
    func charts() {
        let svg = ConsoleCharts.bars(title: "Refusals <b>", series: ["<script>": [10: 3], "not_named": [11: 1]],
                                     days: 10...12)
        #expect(!svg.contains("<script>") && svg.contains("&lt;script&gt;") && svg.contains("Refusals &lt;b&gt;"))
        #expect(svg.components(separatedBy: "<rect").count - 1 == 2 + 2, "two bars and two legend keys")
        #expect(!svg.contains("style="))
    }

    @Test("pages escape what people typed; the sign-in exchanges a token for a cookie and never shows it")
    func pagesEscapeAndSignIn() async throws {
        let vault = try await EngineFixture()
        try await vault.engine.putUseCase(principal: vault.custodian, UseCase(
            force: vault.force, id: try ResourceID("xss"), description: "<script>alert(1)</script>",
            lawfulBasis: "\"><img src=x>", datasets: [vault.dataset], principals: [vault.analyst.id]),
            requestID: "setup")
        let token = try await BearerToken.issue(for: vault.custodian, description: "test", catalog: vault.catalog)
        let text = token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        let router = VaultAPI.makeRouter(principals: [vault.custodian.id: vault.custodian], engine: vault.engine,
                                         metrics: { [] }, logger: logger)
        try await Application(router: router).test(.router) { client in
            var nonce = ""
            try await client.execute(uri: "/ui/sign-in", method: .get) { response in
                #expect(response.status == .ok)
                let cookie = response.headers[.setCookie] ?? ""
                nonce = String(cookie.dropFirst("__Host-vault_signin=".count).prefix(64))
            }
            var session = ""
            try await client.execute(
                uri: "/ui/sign-in", method: .post,
                headers: [.contentType: "application/x-www-form-urlencoded",
                          .cookie: "__Host-vault_signin=\(nonce)"],
                body: ByteBuffer(string: "signin_csrf=\(nonce)&token=\(text)")
            ) { response in
                #expect(response.status == .seeOther)
                let cookies = response.headers[values: .setCookie]
                session = cookies.first { $0.hasPrefix("__Host-vault_session=") }.map {
                    String($0.dropFirst("__Host-vault_session=".count).prefix(67))
                } ?? ""
                #expect(!cookies.joined().contains(text))
            }
            #expect(session.hasPrefix("vs_"))
            try await client.execute(uri: "/ui/forces/wmp/use-cases", method: .get,
                                     headers: [.cookie: "__Host-vault_session=\(session)"]) { response in
                let page = String(buffer: response.body)
                #expect(response.status == .ok)
                #expect(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>alert"))
                #expect(page.contains("&quot;&gt;&lt;img src=x&gt;") && !page.contains("<img src=x>"))
                #expect(!page.contains(text))
                #expect(response.headers[HTTPField.Name("X-Frame-Options")!] == "DENY")
            }
            // Every template renders (a template that does not parse would stop the console at its first page).
            for path in ["/ui/", "/ui/forces/wmp", "/ui/forces/wmp/retrievals", "/ui/forces/wmp/use-cases/new",
                         "/ui/forces/wmp/use-cases/xss/edit", "/ui/forces/wmp/keys", "/ui/forces/wmp/certificates"] {
                try await client.execute(uri: path, method: .get,
                                         headers: [.cookie: "__Host-vault_session=\(session)"]) { response in
                    let page = String(buffer: response.body)
                    #expect(response.status == .ok, "\(path): \(page.prefix(300))")
                    #expect(!page.contains("{{") && page.contains("</html>"), "\(path)")
                }
            }
            try await client.execute(uri: "/ui/forces/wmp/audit", method: .get,
                                     headers: [.cookie: "__Host-vault_session=\(session)"]) { response in
                #expect(response.status == .forbidden)
                #expect(String(buffer: response.body).contains("custodian-wmp needs one of auditor for force wmp"))
            }
        }
    }
}
