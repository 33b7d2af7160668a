import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

@Suite("vaultd configuration and bearer tokens")
struct ServerConfigurationTests {
    static let valid = """
        listen = "127.0.0.1:8443"
        data_dir = "data"
        custody = "keys.toml"

        [tls]
        certificate = "tls/server.pem"
        private_key = "tls/server.key"
        client_ca = "/etc/vault/ca.pem"

        [[principals]]
        id = "ingest-wmp"
        uploader = ["wmp"]

        [[principals]]
        id = "ops-1"
        ops = ["wmp", "gmp"]
        auditor = ["gmp"]
        """

    @Test("a valid file: paths resolve against the file's directory, roles map to forces")
    func valid() throws {
        let configuration = try ServerConfiguration.parse(Self.valid, source: "vaultd.toml", baseDirectory: "/srv/vault")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 8443)
        #expect(configuration.catalogPath == "/srv/vault/data/catalog.sqlite")
        #expect(configuration.certificate == "/srv/vault/tls/server.pem")
        #expect(configuration.clientCA == "/etc/vault/ca.pem")
        let ops = try #require(configuration.principals["ops-1"])
        #expect(ops.has(.ops, for: try ForceID(force: "gmp")))
        #expect(ops.has(.auditor, for: try ForceID(force: "gmp")))
        #expect(!ops.has(.auditor, for: try ForceID(force: "wmp")))
        #expect(configuration.principals["ingest-wmp"]?.has(.uploader, for: try ForceID(force: "wmp")) == true)
    }

    @Test("mistakes are named", arguments: [
        ("listen = \"8443\"", "listen must be host:port"),
        ("listen = \"127.0.0.1:99999\"", "listen must be host:port"),
        ("[tls]\ncertificate = \"c\"", "tls.certificate and tls.private_key"),
        ("[[principals]]\nid = \"x\"\nreader = [\"wmp\"]", "unknown role \"reader\""),
        ("[[principals]]\nid = \"x\"\nanalyst = [\"WMP\"]", "invalid force id"),
        ("[[principals]]\nid = \"a b\"\nanalyst = [\"wmp\"]", "principal id"),
        ("[[principals]]\nid = \"ingest-wmp\"\nuploader = [\"gmp\"]", "listed twice"),
        ("colour = \"blue\"", "unknown key \"colour\""),
    ])
    func mistakes(change: String, message: String) throws {
        var text = Self.valid
        if change.hasPrefix("listen") {
            text = text.replacingOccurrences(of: "listen = \"127.0.0.1:8443\"", with: change)
        } else if change.hasPrefix("[tls]") {
            text = text.replacingOccurrences(of: "[tls]\ncertificate = \"tls/server.pem\"\nprivate_key = \"tls/server.key\"",
                                             with: change)
        } else if change.hasPrefix("colour") {
            text = change + "\n" + text
        } else {
            text += "\n\n" + change
        }
        let error = #expect(throws: CustodyError.self) {
            try ServerConfiguration.parse(text, source: "vaultd.toml", baseDirectory: ".")
        }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.contains(message) == true, "\(String(describing: error?.message))")
    }

    @Test("scale-out storage: catalog URL and [blobs] parse; a password in the URL and bad [blobs] are refused")
    func scaleOut() throws {
        let text = "catalog = \"postgres://vault@db1:5432/vault\"\ninstance = \"vaultd-a\"\n" + Self.valid + """

            [blobs]
            url = "s3://vault-blobs/prod"
            endpoint = "https://s3.internal:9000"
            credentials_file = "s3.credentials"
            part_size_mib = 16
            """
        let configuration = try ServerConfiguration.parse(text, source: "vaultd.toml", baseDirectory: "/srv/vault")
        #expect(configuration.catalog == .postgres(url: "postgres://vault@db1:5432/vault"))
        #expect(configuration.instance == "vaultd-a")
        guard case .s3(let s3) = configuration.blobs else { Issue.record("no S3 blobs"); return }
        #expect(s3.url == "s3://vault-blobs/prod" && s3.partSize == 16 << 20)
        #expect(s3.credentialsFile == "/srv/vault/s3.credentials")
        let mistakes: [(String, String)] = [
            ("catalog = \"postgres://vault:hunter2@db1/vault\"\n" + Self.valid, "must not carry a password"),
            ("catalog = \"mysql://db1/vault\"\n" + Self.valid, "catalog must be a postgres://"),
            (Self.valid + "\n[blobs]\nendpoint = \"http://x:1\"", "[blobs] url"),
            (Self.valid + "\n[blobs]\nurl = \"s3://UPPER\"\nendpoint = \"http://x:1\"", "not an S3 bucket name"),
            (Self.valid + "\n[blobs]\nurl = \"s3://vault-blobs\"", "[blobs] endpoint"),
            (Self.valid + "\n[blobs]\nurl = \"s3://vault-blobs\"\nendpoint = \"ftp://x\"", "http:// or https://"),
            (Self.valid + "\n[blobs]\nurl = \"s3://vault-blobs\"\nendpoint = \"http://x:1\"\npart_size_mib = 1024",
             "part_size_mib"),
            (Self.valid + "\n[blobs]\nurl = \"s3://vault-blobs\"\nendpoint = \"http://x:1\"\nsecret = \"x\"",
             "unknown key \"secret\""),
        ]
        for (text, message) in mistakes {
            let error = #expect(throws: CustodyError.self) {
                try ServerConfiguration.parse(text, source: "vaultd.toml", baseDirectory: ".")
            }
            #expect(error?.message.contains(message) == true, "\(String(describing: error?.message))")
            #expect(error?.message.contains("hunter2") == false)
        }
    }

    @Test("tokens: random, well-formed, stored only as a hash that maps back to the principal")
    func tokens() async throws {
        let directory = try TemporaryDirectory()
        let catalog = try SQLiteCatalog(path: directory.file("catalog.sqlite"))
        let (token, hash) = BearerToken.generate()
        let (other, _) = BearerToken.generate()
        #expect(token != other)
        #expect(token.withUnsafeBytes { BearerToken.isWellFormed($0) })
        #expect(hash.count == 64)
        #expect(token.withUnsafeBytes { !String(decoding: $0, as: UTF8.self).contains(hash) })
        let record = TokenRecord(id: String(hash.prefix(12)), principal: "analyst-1", description: "test",
                                 createdAt: 0, expiresAt: 1000)
        try await catalog.addToken(record, hash: hash, audit: [])
        #expect(try await catalog.tokenPrincipal(hash: BearerToken.hash(token), now: 999) == "analyst-1")
        #expect(try await catalog.tokenPrincipal(hash: BearerToken.hash(other), now: 999) == nil)
        // Expired at its expiry, not a second later.
        #expect(try await catalog.tokenPrincipal(hash: BearerToken.hash(token), now: 1000) == nil)
        for junk in ["", "vt_", "vt_XYZ", "Bearer", String(repeating: "a", count: 67)] {
            #expect(!Array(junk.utf8).withUnsafeBytes { BearerToken.isWellFormed($0) })
        }
    }

    @Test("token lifetimes: a number and a unit from 1m to 365d; anything else is a clear refusal")
    func tokenLifetimes() throws {
        #expect(try BearerToken.lifetime("90m") == 5400)
        #expect(try BearerToken.lifetime("12h") == 43_200)
        #expect(try BearerToken.lifetime("30d") == 2_592_000)
        #expect(try BearerToken.lifetime("365d") == BearerToken.maximumLifetime)
        for bad in ["", "d", "0d", "-1d", "366d", "59s", "1y", "1.5d", "12", " 1d", "99999999999999999999d"] {
            #expect(throws: VaultError.self, "\(bad)") { try BearerToken.lifetime(bad) }
        }
    }
}
