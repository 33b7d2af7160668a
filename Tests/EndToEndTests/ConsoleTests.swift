import Foundation
import KeyCustody
import Testing
import VaultTestSupport

/// A console session of one principal, signed in with its token through the sign-in form, driven with curl.
struct ConsoleSession {
    let vault: RunningVault
    let jar: String

    func get(_ path: String) throws -> RunningVault.Reply {
        try vault.curl(["-b", jar, "https://127.0.0.1:\(vault.port)\(path)"])
    }
}

extension RunningVault {
    func consoleSession(as principal: String) throws -> ConsoleSession {
        let jar = directory.file("console-\(principal).cookies")
        let page = try curl(["-c", jar, "https://127.0.0.1:\(port)/ui/sign-in"])
        let nonce = try #require(ConsoleTests.field("signin_csrf", in: page.text))
        let signedIn = try curl(["-b", jar, "-c", jar, "--data-urlencode", "signin_csrf=\(nonce)", "--data-urlencode",
                                 "token=\(tokens[principal]!)", "https://127.0.0.1:\(port)/ui/sign-in"])
        #expect(signedIn.status == 303, "\(signedIn.text)")
        return ConsoleSession(vault: self, jar: jar)
    }
}

/// The console at /ui/ against a real vaultd: its HTTP contract with curl (headers, cookies, sign-in by token and by
/// certificate, CSRF), and the whole of a custodian's, a DPO's and an operator's job in headless Chromium.
@Suite("The browser console", .serialized)
struct ConsoleTests {
    /// wmp/crime with four weekly uploads: three archives, one of them held and one shredded early (a certificate),
    /// a use case, an analyst's read and a pending retrieval of the middle archive. Returns (retrieval, archive, held).
    static func history(_ vault: RunningVault) throws -> (retrieval: String, archive: String, held: String) {
        var extracts: [String] = []
        for week in 1...4 {
            let file = try vault.directory.write("week\(week).csv", testBytes(count: 20_000 + week, seed: UInt64(week)))
            let uploaded = try vault.upload("wmp", "crime", file: file, as: "ingest-wmp")
            #expect(uploaded.status == 201, "\(uploaded.text)")
            extracts.append(try #require(uploaded.json["extract"] as? String))
        }
        #expect(try vault.putUseCase("wmp", "crime-review", datasets: ["crime"], principals: ["analyst-1"],
                                     as: "custodian-wmp").status == 200)
        let base = vault.base + "/wmp"
        #expect(try vault.curl(["\(base)/datasets/crime/current?use_case=crime-review"],
                               as: "analyst-1").status == 200)
        let json = ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary"]
        let requested = try vault.curl(json + ["{\"use_case\":\"crime-review\",\"reason\":\"Op Lantern\"}",
                                               "\(base)/archives/\(extracts[1])/retrievals"], as: "analyst-1")
        #expect(requested.status == 201, "\(requested.text)")
        #expect(try vault.curl(json + ["{\"reason\":\"Case 7/2026\"}", "\(base)/archives/\(extracts[2])/hold"],
                               as: "custodian-wmp").status == 200)
        let shredded = try vault.curl(json + ["{\"reason\":\"entered in error\"}",
                                              "\(base)/archives/\(extracts[0])/shred"], as: "custodian-wmp")
        #expect(shredded.status == 200, "\(shredded.text)")
        return (try #require(requested.json["id"] as? String), extracts[1], extracts[2])
    }

    @Test("console pages carry the security headers; sign-in by token and by certificate, sign-out, CSRF and Origin")
    func httpContract() async throws {
        let vault = try await RunningVault(embedded: true)
        let ui = "https://127.0.0.1:\(vault.port)/ui"
        let jar = vault.directory.file("cookies.txt")

        // Without a session every page sends the browser to the sign-in page, which sets the sign-in nonce.
        let bare = try vault.curl(["\(ui)/forces/wmp/keys"])
        #expect(bare.status == 303 && bare.headers.lowercased().contains("location: /ui/sign-in"), "\(bare.headers)")
        let signIn = try vault.curl(["-c", jar, "\(ui)/sign-in"])
        #expect(signIn.status == 200)
        for header in ["content-security-policy: default-src 'none'; script-src 'self'", "x-frame-options: DENY",
                       "x-content-type-options: nosniff", "cache-control: no-store", "referrer-policy: same-origin"] {
            #expect(signIn.headers.lowercased().contains(header.lowercased()), "missing \(header)")
        }
        #expect(!signIn.text.contains("<script>") && !signIn.text.contains("style="), "inline script or style")
        let nonce = try #require(Self.field("signin_csrf", in: signIn.text))

        // A token typed wrong: the page again, with the reason; nothing signed in.
        let wrong = try vault.curl(["-b", jar, "-c", jar, "-H", "Origin: https://127.0.0.1:\(vault.port)",
                                    "--data-urlencode", "signin_csrf=\(nonce)", "--data-urlencode", "token=vt_nope",
                                    "\(ui)/sign-in"])
        #expect(wrong.status == 401 && wrong.text.contains("that token is not valid"), "\(wrong.status)")
        // Another site's form is refused before the token is looked at.
        let foreign = try vault.curl(["-b", jar, "-H", "Origin: https://evil.example", "--data-urlencode",
                                      "signin_csrf=\(nonce)", "--data-urlencode",
                                      "token=\(vault.tokens["custodian-wmp"]!)", "\(ui)/sign-in"])
        #expect(foreign.status == 403 && foreign.text.contains("cross_site_request"), "\(foreign.status)")

        let fresh = try vault.curl(["-b", jar, "-c", jar, "\(ui)/sign-in"])
        let nonce2 = try #require(Self.field("signin_csrf", in: fresh.text))
        let signedIn = try vault.curl(["-b", jar, "-c", jar, "--data-urlencode", "signin_csrf=\(nonce2)",
                                       "--data-urlencode", "token=\(vault.tokens["custodian-wmp"]!)", "\(ui)/sign-in"])
        #expect(signedIn.status == 303, "\(signedIn.text)")
        let cookie = signedIn.headers.split(whereSeparator: \.isNewline).first { $0.lowercased().hasPrefix("set-cookie: __host-vault_session=") }
        let flags = String(try #require(cookie, "\(signedIn.headers)"))
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
            #expect(flags.contains(flag), "\(flags)")
        }
        #expect(!flags.contains(vault.tokens["custodian-wmp"]!))
        let keys = try vault.curl(["-b", jar, "\(ui)/forces/wmp/keys"])
        #expect(keys.status == 200 && keys.text.contains("Master keys"), "\(keys.status)")
        let csrf = try #require(Self.field("csrf", in: keys.text))
        // A form with the session's token but from another origin, and one without the token: both refused.
        let crossSite = try vault.curl(["-b", jar, "-H", "Origin: https://evil.example", "-d", "csrf=\(csrf)&confirm=yes",
                                        "\(ui)/forces/wmp/keys/rotate"])
        #expect(crossSite.status == 403 && crossSite.text.contains("cross_site_request"))
        let noToken = try vault.curl(["-b", jar, "-d", "confirm=yes", "\(ui)/forces/wmp/keys/rotate"])
        #expect(noToken.status == 403 && noToken.text.contains("csrf_token_invalid"))
        #expect(try vault.curl(["-b", jar, "\(ui)/forces/wmp/keys"]).text.contains("No rotations yet."))
        // Sign-out ends the session on the server: the old cookie opens nothing afterwards.
        let saved = try String(contentsOfFile: jar, encoding: .utf8)
        #expect(try vault.curl(["-b", jar, "-c", jar, "-d", "csrf=\(csrf)", "\(ui)/sign-out"]).status == 303)
        try saved.write(toFile: jar, atomically: true, encoding: .utf8)
        let after = try vault.curl(["-b", jar, "\(ui)/forces/wmp/keys"])
        #expect(after.status == 303 && after.headers.lowercased().contains("/ui/sign-in?notice=ended"), "\(after.headers)")

        // By certificate: analyst-1's client certificate; the session holds only with the same certificate.
        let certJar = vault.directory.file("cert-cookies.txt")
        let cert = (vault.pki.clientCertificate("analyst-1"), vault.pki.clientKey("analyst-1"))
        let page = try vault.curl(["-c", certJar, "\(ui)/sign-in"], cert: cert.0, key: cert.1)
        #expect(page.text.contains("Sign in as analyst-1"))
        let certNonce = try #require(Self.field("signin_csrf", in: page.text))
        let byCert = try vault.curl(["-b", certJar, "-c", certJar, "-d", "signin_csrf=\(certNonce)",
                                     "\(ui)/sign-in/certificate"], cert: cert.0, key: cert.1)
        #expect(byCert.status == 303, "\(byCert.text)")
        let home = try vault.curl(["-b", certJar, "\(ui)/"], cert: cert.0, key: cert.1)
        #expect(home.status == 200 && home.text.contains("analyst-1"))
        // An analyst's refusal is the API's, on a page: status, code and message.
        let refused = try vault.curl(["-b", certJar, "\(ui)/forces/wmp/keys"], cert: cert.0, key: cert.1)
        #expect(refused.status == 403 && refused.text.contains("role_required")
                && refused.text.contains("analyst-1 needs one of custodian, ops, auditor for force wmp"))
        // Malformed input: a force id that is not one, an unknown page.
        let malformed = try vault.curl(["-b", certJar, "\(ui)/forces/NOT%20A%20FORCE"], cert: cert.0, key: cert.1)
        #expect(malformed.status == 400 && malformed.text.contains("id=\"error-message\""), "\(malformed.status)")
        #expect(try vault.curl(["-b", certJar, "\(ui)/nope"], cert: cert.0, key: cert.1).status == 404)
        // The cookie without the certificate opens nothing, and ends the session (it was taken from its browser).
        let stolen = try vault.curl(["-b", certJar, "\(ui)/"])
        #expect(stolen.status == 303, "a certificate session opened without the certificate")
        #expect(try vault.curl(["-b", certJar, "\(ui)/"], cert: cert.0, key: cert.1).status == 303)
    }

    @Test("custodians, an analyst, a DPO and an operator use the console in headless Chromium")
    func browser() async throws {
        let vault = try await RunningVault()
        let (retrieval, archive, held) = try Self.history(vault)
        let output = Self.outputDirectory
        try? FileManager.default.removeItem(atPath: output)
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let setup = JSONValue.object([
            "url": .string("https://127.0.0.1:\(vault.port)"), "ca": .string(vault.pki.caCertificate),
            "tokens": .object(vault.tokens.mapValues { .string($0) }),
            "retrieval": .string(retrieval), "archive": .string(archive), "held": .string(held),
        ])
        // The tokens go to the browser script in a file only the test's user reads, never as an argument.
        let setupFile = vault.directory.file("console-setup.json")
        FileManager.default.createFile(atPath: setupFile, contents: Data(setup.canonicalBytes()),
                                       attributes: [.posixPermissions: 0o600])
        let python = ProcessInfo.processInfo.environment["VAULT_PYTHON"] ?? "/usr/bin/python3"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../browser/console_test.py").standardized.path
        let run = try Binaries.run(python, [script], environment: [
            "VAULT_CONSOLE_SETUP": setupFile, "VAULT_CONSOLE_OUTPUT": output,
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": vault.directory.path,
        ])
        #expect(run.status == 0, "console_test.py:\n\(run.stdout)\n\(run.stderr.suffix(4000))")
        for name in ["01-sign-in", "03-overview", "04-retrievals", "05-use-cases", "06-keys", "07-certificates",
                     "08-certificate", "09-refused", "10-audit", "11-ops"] {
            let png = FileManager.default.contents(atPath: "\(output)/\(name).png") ?? Data()
            #expect(png.starts(with: [0x89, 0x50, 0x4E, 0x47]), "no screenshot \(name).png")
        }
        // What the DPO downloaded verifies offline with the vault's audit key, and holds the custodians' approvals.
        let export = "\(output)/audit-export.ndjson"
        let verified = try vault.cli(["audit", "verify", export, "--public-key", vault.directory.file("data/audit-signing.pub")],
                                     as: "dpo-wmp")
        #expect(verified.status == 0, "\(verified.stdout)\(verified.stderr)")
        let text = (try? String(contentsOfFile: export, encoding: .utf8)) ?? ""
        #expect(text.contains("\"action\":\"archive.grant\""), "the export has no grant")
        // The grant is what the API reports too: the analyst may now read the archive.
        let list = try vault.curl([vault.base + "/wmp/retrievals"], as: "analyst-1")
        #expect(list.text.contains("\"state\":\"granted\""), "\(list.text)")
    }

    /// Screenshots and downloads of the browser test: `VAULT_TEST_OUTPUT/console`, else `.build/test-output/console`.
    static var outputDirectory: String {
        if let explicit = ProcessInfo.processInfo.environment["VAULT_TEST_OUTPUT"] { return explicit + "/console" }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../.build/test-output/console").standardized.path
    }

    /// The value of the first hidden input `name` in a page.
    static func field(_ name: String, in page: String) -> String? {
        guard let range = page.range(of: "name=\"\(name)\" value=\"") else { return nil }
        let rest = page[range.upperBound...]
        return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
    }
}
