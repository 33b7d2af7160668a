import ArgumentParser
import Hummingbird
import KeyCustody
import Logging
import ServiceLifecycle
import Vault

#if canImport(Glibc)
import Glibc
#endif

@main
struct VaultDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vaultd",
        abstract: "The police data vault daemon.",
        discussion: """
            `vaultd serve --config PATH` runs the HTTPS API; `vaultd token create|list|revoke` manages bearer tokens;
            `vaultd custody check` verifies a custody file before the daemon is started with it;
            `vaultd custody serve --config custody.toml` runs a force's own custody service (DESIGN 6.3).
            """,
        subcommands: [Serve.self, Token.self, Custody.self]
    )

    static func fail(_ message: String, exit code: Int32 = 1) -> ExitCode {
        FileHandle.standardError.write("vaultd: error: \(message)\n")
        return ExitCode(code)
    }

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Serve the vault over HTTPS until SIGTERM or SIGINT.")

        @Option(help: ArgumentHelp("The vaultd configuration file (TOML).", valueName: "path")) var config: String

        func run() async throws {
            var logger = Logger(label: "vaultd") { StreamLogHandler.standardError(label: $0) }
            logger.logLevel = .info
            DaemonProcess.prepare()
            let metrics = PrometheusExporter.bootstrap()
            let server: VaultServer
            do {
                server = try await VaultServer.open(configuration: try ServerConfiguration.load(path: config),
                                                    logger: logger)
            } catch {
                throw VaultDaemon.fail(String(describing: error), exit: 2)
            }
            let services: [ServiceGroupConfiguration.ServiceConfiguration]
            do {
                services = try server.services(metrics: { metrics.emit() }, logger: logger)
            } catch {
                throw VaultDaemon.fail("cannot set up TLS: \(error)", exit: 2)
            }
            let group = ServiceGroup(configuration: .init(services: services,
                                                          gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        }
    }

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Bearer tokens: create (with an expiry), list and revoke.",
            subcommands: [TokenCreate<VaultdTokens>.self, TokenList<VaultdTokens>.self,
                          TokenRevoke<VaultdTokens>.self])
    }

    struct Custody: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Custody: the preflight of a custody file, and a force's own custody service.",
            subcommands: [Check.self, Serve.self, Token.self])

        struct Serve: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Run a force's custody service (HTTPS, TLS 1.3) until SIGTERM or SIGINT.",
                discussion: """
                    The service fronts the force's keyring or PKCS#11 token named in its custody file, answers the \
                    platform's vaultd instances (client certificates of tls.platform_ca) and the force's custodians \
                    and auditors (bearer tokens from `vaultd custody token create`), and keeps its own log.
                    """)

            @Option(help: ArgumentHelp("The custody service configuration (TOML).", valueName: "path"))
            var config: String

            func run() async throws {
                var logger = Logger(label: "vault-custody") { StreamLogHandler.standardError(label: $0) }
                logger.logLevel = .info
                DaemonProcess.prepare()
                let metrics = PrometheusExporter.bootstrap()
                let service: CustodyService
                do {
                    let configuration = try CustodyServiceConfiguration.load(path: config)
                    service = try await CustodyService.open(configuration: configuration, logger: logger)
                } catch {
                    throw VaultDaemon.fail(String(describing: error), exit: 2)
                }
                let app: any ApplicationProtocol
                do {
                    app = try CustodyRoutes.makeApplication(service: service, metrics: { metrics.emit() },
                                                            logger: logger)
                } catch {
                    throw VaultDaemon.fail("cannot set up TLS: \(error)", exit: 2)
                }
                logger.notice("custody service serving", metadata: [
                    "address": "\(service.configuration.host):\(service.configuration.port)",
                    "force": "\(service.force)", "custody_key": "\(service.signer.publicKey.fingerprint)",
                ])
                let group = ServiceGroup(configuration: .init(
                    services: [.init(service: app), .init(service: CustodyJobs(service: service, logger: logger))],
                    gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
                try await group.run()
            }
        }

        struct Token: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Bearer tokens of the force's custodians and auditors at its custody service: create (with an "
                    + "expiry), list and revoke.",
                subcommands: [TokenCreate<CustodyServiceTokens>.self, TokenList<CustodyServiceTokens>.self,
                              TokenRevoke<CustodyServiceTokens>.self])
        }

        struct Check: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Open every force's custody named in a custody file and report its keys.",
                discussion: "Exits 0 when every force opens, 2 when any does not, 6 when the file itself is invalid.")

            @Option(help: ArgumentHelp("The custody file (see Keys.example).", valueName: "path"))
            var custody: String
            @Flag(help: "One JSON object on stdout.") var json = false

            func run() async throws {
                var logger = Logger(label: "vaultd") { StreamLogHandler.standardError(label: $0) }
                logger.logLevel = .warning
                let configuration: CustodyConfiguration
                do {
                    configuration = try CustodyConfiguration.load(path: custody)
                } catch {
                    FileHandle.standardError.write("vaultd: error: \(error)\n")
                    throw ExitCode(6)
                }
                let results = await configuration.check(logger: logger, remote: RemoteCustody.opener)
                if json {
                    let document = JSONValue.object(["forces": .array(results.map { result in
                        var members: [String: JSONValue] = ["force": .string(result.force.rawValue),
                                                            "ok": .bool(result.ok)]
                        if let error = result.error {
                            members["error"] = .object(["code": .string(error.code.rawValue),
                                                        "message": .string(error.message)])
                        }
                        members["keys"] = .array(result.keys.map {
                            .object(["id": .string($0.id.description), "kind": .string($0.kind.rawValue),
                                     "state": .string($0.state.rawValue), "created": .string($0.created)])
                        })
                        return .object(members)
                    })])
                    print(document.canonicalString)
                } else {
                    for result in results {
                        if let error = result.error {
                            print("\(result.force): FAILED: \(error)")
                        } else {
                            let archives = result.keys.filter { $0.kind == .archive && $0.state != .destroyed }.count
                            let masters = result.keys.filter { $0.kind == .master }
                                .map { "\($0.id) \($0.state.rawValue)" }.joined(separator: ", ")
                            print("\(result.force): ok: \(masters); \(archives) archive key(s)")
                        }
                    }
                }
                if results.contains(where: { !$0.ok }) { throw ExitCode(2) }
            }
        }
    }
}

/// Keeps PostgreSQL's connection pool (running in `runner`) open until the service group shuts down, after the
/// services listed after it have stopped.
/// Writes to a file descriptor without Foundation.
enum FileHandle {
    case standardError
    case standardOutput

    func write(_ text: String) {
        var text = text
        let fd = self == .standardError ? STDERR_FILENO : STDOUT_FILENO
        text.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
