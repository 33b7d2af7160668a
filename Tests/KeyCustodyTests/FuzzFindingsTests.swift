import KeyCustody
import Testing

/// Inputs the fuzz targets (`Fuzz/VaultFuzz`, `scripts/fuzz.sh`) found crashing a parser, kept as regressions.
@Suite("Fuzz findings: KeyCustody parsers")
struct FuzzFindingsTests {
    /// toml++ 3.4.0 (in TOMLKit 0.6.0, built without NDEBUG even for release) failed an assertion on each of these:
    /// vaultd, the CLI and the custody service aborted on such a file instead of naming the line (`config` target).
    @Test("TOML shapes the bundled parser asserts on are configuration errors naming their line, not aborts",
          arguments: [
              "[=\n", "[forces.wmp]\nbackend = \"keyring\"\n\n[= \"/usr/lib\"\n", "  [[ &\n", "[{a = 1}]\n",
              "[\nx = 1\n", "\u{FEFF}[ =\n", "[forces.wmp]\r\n[\t=\r\n", "[[[a]]]\n",
              "[forces.wmp]\nanalyst = [}wmp\"]\n", "a = [1, }\n", "a = [\n  # comment\n}\n", "a = [[ } ]]\n",
              "a = {b = [}]}\n", "a = [\u{2028}]\n", "a = [1,\u{85}]\n",
              "a = [1979-05-27T:]\n", "a = 1979-05-27TT07:00:00\n", "a = {b = 1979-05-27tx:}\n",
              "a = \"\"\"x\\\"\"\"y\"\"\"\n[=\n",
          ])
    func assertingShapes(text: String) throws {
        let error = #expect(throws: CustodyError.self) {
            try CustodyConfiguration.parse(text, source: "keys.toml", baseDirectory: ".")
        }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.hasPrefix("keys.toml: not valid TOML at line") == true, "\(error?.message ?? "")")
    }

    @Test("valid TOML that only looks like those shapes still reaches the TOML parser")
    func lookalikesStillParse() throws {
        let parsed = try CustodyConfiguration.parse(
            "[ forces . 'wmp' ]\nbackend = \"keyring\"\nkeyring = \"\"\"k\n[= not a header\"\"\"\n"
                + "passphrase_env = \"A\"\n"
                + "[forces.1979-05-27tx]  # a bare key shaped like a date\nbackend = \"keyring\"\nkeyring = '[}'\n"
                + "passphrase_file = '''/run/s\n  ]'''\n",
            source: "keys.toml", baseDirectory: ".")
        #expect(parsed.forces.map(\.id.rawValue) == ["1979-05-27tx", "wmp"])
        let blank = #expect(throws: CustodyError.self) {
            try CustodyConfiguration.parse("[]\n", source: "keys.toml", baseDirectory: ".")
        }
        #expect(blank?.message.contains("blank") == true, "toml++ words this one: \(blank?.message ?? "")")
    }

    /// A keyring whose key list names `fmk:wmp:9223372036854775807` opened, and its next rotation trapped on an
    /// arithmetic overflow in `KeyTable.nextMaster` (the `keyring-contents` target, after opening and rotating).
    @Test("master key versions end where the next rotation can still count: refused when read, refused when made")
    func masterVersionsEndBeforeOverflow() throws {
        let force = try ForceID(force: "wmp")
        let inconsistent = { (reason: String) in CustodyError(.keyringInconsistent, reason) }
        func master(_ version: Int) -> KeyInfo {
            KeyInfo(id: .master(force: force, version: version), kind: .master, state: .active,
                    created: "2026-01-01T00:00:00Z")
        }
        let error = #expect(throws: CustodyError.self) {
            try KeyTable(force: force, entries: [master(.max)], inconsistent: inconsistent)
        }
        #expect(error?.code == .keyringInconsistent)
        var table = try KeyTable(force: force, entries: [master(KeyTable.maximumMasterVersion)],
                                 inconsistent: inconsistent)
        let next = table.nextMaster()
        #expect(next == .master(force: force, version: KeyTable.maximumMasterVersion + 1))
        #expect(throws: CustodyError.self) { try table.rotate(to: next, created: "2026-02-01T00:00:00Z") }
        #expect(table.activeMaster?.id == .master(force: force, version: KeyTable.maximumMasterVersion))
    }

    /// `Ed25519.PublicKey(pem:)` read the PEM body through a pointer into an array already released: ASan reported a
    /// heap use-after-free on the first seeds of the `custody-request` target (a custodian's `PUT /principals` key);
    /// the custody service parses every registered key this way when it checks a signed read request.
    @Test("a PEM public key parses to the key it was written from, also amid other text")
    func publicKeyFromPEM() throws {
        let key = Ed25519.PrivateKey().publicKey
        #expect(try Ed25519.PublicKey(pem: key.pem) == key)
        #expect(try Ed25519.PublicKey(pem: "# a comment\n" + key.pem.replacing("\n", with: "\r\n")) == key)
        #expect(throws: CustodyError.self) {
            try Ed25519.PublicKey(pem: "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----")
        }
    }
}
