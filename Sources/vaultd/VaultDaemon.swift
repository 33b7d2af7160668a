import ArgumentParser
import KeyCustody
import Logging

#if canImport(Glibc)
import Glibc
#endif

@main
struct VaultDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vaultd",
        abstract: "The police data vault daemon.",
        discussion: "`vaultd custody check` verifies a custody file before the daemon is started with it.",
        subcommands: [Custody.self]
    )

    struct Custody: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Custody preflight.", subcommands: [Check.self])

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
                let results = await configuration.check(logger: logger)
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

/// Writes to a file descriptor without Foundation.
enum FileHandle {
    case standardError

    func write(_ text: String) {
        var text = text
        text.withUTF8 { _ = Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
    }
}
