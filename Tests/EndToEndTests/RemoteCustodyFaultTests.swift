import Foundation
import KeyCustody
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Bad answers and bad requests on the remote custody wire (DESIGN 6.3): vaultd's client gives up on a custody
/// service that stalls or answers something else, in bounded time and with a precise error; the custody service
/// answers every malformed, oversized, unauthenticated or misdirected request with a JSON error and keeps serving.
@Suite(.serialized)
struct RemoteCustodyFaultTests {
    /// A listener that completes TCP handshakes (the kernel does) but never reads or answers: a stalled service.
    final class StalledListener {
        let fd: Int32
        let port: Int

        init() throws {
            port = try freeLoopbackPort()
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = UInt16(port).bigEndian
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard bound == 0, listen(fd, 16) == 0 else { throw TestVectors.VectorError(message: "cannot listen") }
        }

        deinit { close(fd) }
    }

    func location(_ url: String, _ pki: DevPKI, directory: TemporaryDirectory) throws
        -> CustodyConfiguration.RemoteLocation
    {
        let key = directory.file("custody-key.pub")
        _ = try directory.write("custody-key.pub", Array(Ed25519.PrivateKey().publicKey.pem.utf8))
        return CustodyConfiguration.RemoteLocation(url: url, caFile: pki.caCertificate,
                                                   clientCertificate: pki.clientCertificate("vaultd-a"),
                                                   clientKey: pki.clientKey("vaultd-a"), custodyKey: key)
    }

    func failure(_ body: () async throws -> Void) async -> CustodyError? {
        do { try await body() } catch let error as CustodyError { return error } catch {
            Issue.record("unexpected \(error)")
        }
        return nil
    }

    @Test("a custody service that stalls or answers something else: the call fails in bounded time, saying why")
    func badAnswers() async throws {
        let directory = try TemporaryDirectory("remote-faults")
        let pki = try DevPKI(directory: directory.file("tls"), clients: ["vaultd-a"])
        let force = try ForceID(force: "wyp")
        // Stalled: no TLS handshake ever completes.
        let stalled = try StalledListener()
        let slow = try RemoteCustody(force: force, location: try location("https://127.0.0.1:\(stalled.port)", pki,
                                                                        directory: directory),
                                     timeout: .seconds(1))
        // The call ends because its deadline passed (the message says so), not because the listener gave up: it never
        // does. No wall-clock bound is asserted here: the test process's cooperative pool is shared with every other
        // test, so when this task resumes says nothing about vaultd (DESIGN 10's figures come from `vault bench`).
        let timedOut = await failure { _ = try await slow.status() }
        #expect(timedOut?.code == .custodyUnavailable, "\(String(describing: timedOut))")
        #expect(timedOut?.message.contains("no answer within 1 s") == true, "\(String(describing: timedOut))")
        // Bounded: a status (idempotent) is tried three times, each within its 1 s deadline, then given up.
        #expect(timedOut?.message.hasSuffix("(3 attempts)") == true, "\(String(describing: timedOut))")
        #expect(slow.unavailableReason != nil, "the force is reported unavailable")
        // Not the protocol: an HTTPS server that answers HTML (openssl s_server -www).
        let port = try freeLoopbackPort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        server.arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.serverCertificate, "-key",
                            pki.serverKey, "-www", "-quiet"]
        server.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        server.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try server.run()
        // SIGKILL: a child started through Foundation's Process inherits a blocked SIGTERM.
        defer { kill(server.processIdentifier, SIGKILL); server.waitUntilExit() }
        let garbage = try RemoteCustody(force: force, location: try location("https://127.0.0.1:\(port)", pki,
                                                                           directory: directory),
                                        timeout: .seconds(2))
        // Wait for s_server to listen.
        for _ in 0..<100 where try Binaries.run("/usr/bin/curl", ["-sk", "-o", "/dev/null", "https://127.0.0.1:\(port)/"])
            .status != 0 {
            try await Task.sleep(for: .milliseconds(50))
        }
        let answered = await failure { _ = try await garbage.status() }
        #expect(answered?.code == .custodyProtocolError, "\(String(describing: answered))")
        // And the unwrap of a force whose custody is unreachable never falls back to anything.
        let context = WrapContext(force: force, dataset: try DatasetID(dataset: "crime"), extract: .generate())
        let wrapped = try WrappedKey(kek: .master(force: force, version: 1), iv: [UInt8](repeating: 0, count: 12),
                                     ciphertext: [UInt8](repeating: 0, count: 48))
        let unwrap = await failure {
            _ = try await slow.unwrap(wrapped, context: context, justification: Justification(
                principal: "analyst-wyp", useCase: "sv", purpose: .useCaseRead, requestID: "r"))
        }
        #expect(unwrap?.code == .custodyUnavailable)
        #expect(unwrap?.message.hasSuffix("(1 attempt)") == true, "an unwrap is never retried: \(String(describing: unwrap))")
    }

    @Test("malformed, oversized, unauthenticated and misdirected custody requests: a JSON error, and it keeps serving")
    func badRequests() async throws {
        let custody = try await CustodyProcess(force: "wyp")
        let keys = "\(custody.url)/v1/forces/wyp/keys"
        func check(_ reply: RunningVault.Reply, _ status: Int, _ code: String, _ what: String) {
            #expect(reply.status == status && reply.errorCode == code, "\(what): \(reply.status) \(reply.text)")
        }
        check(try custody.curl([keys]), 401, "unauthenticated", "no credentials")
        check(try custody.curl(["-H", "Authorization: Bearer vt_" + String(repeating: "1", count: 64), keys]), 401,
              "invalid_token", "an unknown token")
        check(try custody.curl([keys], as: "custodian-wyp"), 403, "role_required", "a person asking for keys")
        check(try custody.curl(["\(custody.url)/v1/forces/gmp/keys"], platform: true), 404, "not_found",
              "another force")
        check(try custody.curl(["\(custody.url)/v1/forces/NOT_A_FORCE/keys"], platform: true), 400,
              "invalid_identifier", "an invalid force id")
        let unwrap = "\(custody.url)/v1/forces/wyp/keys/unwrap"
        for (body, what) in [("{", "not JSON"), ("[]", "not an object"), ("{\"wrapped\":{},\"x\":1}", "unknown field"),
                             ("{\"wrapped\":{\"kek\":\"fmk:wyp:1\"},\"context\":{},\"justification\":{}}", "missing fields")] {
            let reply = try custody.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body,
                                          unwrap], platform: true)
            #expect(reply.status == 400 && reply.errorCode != nil, "\(what): \(reply.status) \(reply.text)")
        }
        let huge = try custody.directory.write("huge.json", [UInt8](repeating: 0x20, count: 17 << 20))
        let oversized = try custody.curl(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary",
                                          "@\(huge)", "\(custody.url)/v1/forces/wyp/keys/rewrap"], platform: true)
        #expect(oversized.status == 400 && oversized.text.contains("larger"), "\(oversized.status) \(oversized.text)")
        // A client certificate the force does not trust: no TLS session at all.
        let foreign = try DevPKI(directory: custody.directory.file("foreign"), clients: ["vaultd-a"])
        let out = try Binaries.run("/usr/bin/curl", ["-sS", "--cacert", custody.pki.caCertificate, "--cert",
                                                     foreign.clientCertificate("vaultd-a"), "--key",
                                                     foreign.clientKey("vaultd-a"), keys])
        #expect(out.status != 0)
        // TLS 1.2 is not offered.
        #expect(try Binaries.run("/usr/bin/curl", ["-sS", "--tls-max", "1.2", "--cacert", custody.pki.caCertificate,
                                                   "\(custody.url)/healthz"]).status != 0)
        // Still serving, and every refusal of an authenticated caller is in the force's log.
        #expect(try custody.curl([keys], platform: true).status == 200)
        #expect(try custody.curl(["\(custody.url)/readyz"]).status == 200)
        let log = try custody.curl(["\(custody.url)/v1/forces/wyp/audit"], as: "dpo-wyp").text
        #expect(log.contains("\"action\":\"custody.status\"") && log.contains("\"reason\":\"role_required\""))
    }
}
