import ArgumentParser
import KeyCustody
import Vault

/// A force's datasets and their retention (custodians set it; every role of the force may list it).
struct DatasetsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "datasets", abstract: "A force's datasets: retention of archives and description.",
        subcommands: [List.self, Put.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "A force's datasets with their retention.")
        @Option(help: "The force id.") var force: String
        @Flag(help: "JSON output.") var json = false
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let items = try await server.withClient { try await $0.datasets(force: force) }
            printJSONOrLines(items, json: json, list: .datasets, encode: \.json) { dataset in
                "\(dataset.id)  retention \(dataset.retentionDays) days"
                    + (dataset.description.isEmpty ? "" : "  \(dataset.description)")
            }
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a dataset's retention (custodian): each archive then expires that many days after its "
                + "archival; a shorter retention brings expiry forward, a held archive stays held.")
        @Option(help: "The force id.") var force: String
        @Option(help: "The dataset id.") var dataset: String
        @Option(help: "Days an archive is kept after archival (1 to 36500).") var retentionDays: Int
        @Option(help: "What the dataset holds.") var description = ""
        @OptionGroup var server: ServerOptions

        func run() async throws {
            let force = try ForceID(force: force)
            let dataset = try DatasetID(dataset: dataset)
            guard DatasetRecord.retentionRange.contains(retentionDays) else {
                throw VaultError(.invalidParameter, "--retention-days must be from 1 to 36500")
            }
            let stored = try await server.withClient {
                try await $0.putDataset(force: force, dataset: dataset, retentionDays: retentionDays,
                                        description: description)
            }
            print("\(stored.force)/\(stored.id): archives kept \(stored.retentionDays) days after archival")
        }
    }
}
