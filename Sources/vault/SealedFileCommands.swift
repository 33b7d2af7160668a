import ArgumentParser
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

struct EncryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encrypt",
        abstract: "Seal an extract at source: a fresh extract id and key, wrapped under the force's active master key.",
        discussion: "The output is the sealed file of DESIGN 5.4, ready for upload; the platform never sees the plaintext.")

    @OptionGroup var keys: OfflineCustodyOptions
    @Option(help: "The dataset id (e.g. crime-records).") var dataset: String
    @Option(name: .customLong("in"), help: ArgumentHelp("The plaintext extract.", valueName: "file")) var input: String
    @Option(name: .customLong("out"), help: ArgumentHelp("The sealed file to create (.vault).", valueName: "file"))
    var output: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false

    func run() async throws {
        let dataset = try DatasetID(dataset: dataset)
        let custody = try keys.open()
        let summary = try await SealedFile.seal(inputPath: input, outputPath: output, dataset: dataset,
                                                custody: custody, overwrite: overwrite)
        let header = summary.header
        print("sealed \(input) -> \(output): force \(header.identity.force), dataset \(header.identity.dataset), "
            + "extract \(header.identity.extract), \(header.plaintextSize) bytes, key under \(header.wrappedKey.kek)")
    }
}

struct DecryptCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt",
        abstract: "Decrypt a sealed file offline with the force's keyring (or its token) alone.",
        discussion: "The output appears only after every check passed; a failed decryption creates no file.")

    @OptionGroup var keys: OfflineCustodyOptions
    @Option(name: .customLong("in"), help: ArgumentHelp("The sealed file.", valueName: "file")) var input: String
    @Option(name: .customLong("out"), help: ArgumentHelp("The plaintext file to create.", valueName: "file"))
    var output: String
    @Flag(help: "Replace the output file if it exists.") var overwrite = false

    func run() async throws {
        let custody = try keys.open()
        let justification = Justification(principal: localPrincipal(), purpose: .export, requestID: requestID())
        let summary = try await SealedFile.unseal(inputPath: input, outputPath: output, custody: custody,
                                                  justification: justification, overwrite: overwrite)
        let header = summary.header
        print("decrypted \(input) -> \(output): force \(header.identity.force), dataset \(header.identity.dataset), "
            + "extract \(header.identity.extract), \(header.plaintextSize) bytes verified")
    }
}

/// Where an offline command finds the force's keys: a keyring file, or the force's entry in a custody file (a
/// PKCS#11 token, or a keyring, with the PIN or passphrase from the source the file names).
struct OfflineCustodyOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The force's keyring file.", valueName: "path")) var keyring: String?
    @Option(help: ArgumentHelp("Instead of --keyring: a custody file (keys.toml) ...", valueName: "path"))
    var custody: String?
    @Option(help: ArgumentHelp("... and the force whose keys it names (its PIN or passphrase from the source given "
                                + "there).", valueName: "id"))
    var force: String?
    @OptionGroup var passphrase: PassphraseOptions

    func validate() throws {
        switch (keyring, custody, force) {
        case (_?, nil, nil), (nil, _?, _?): return
        case (nil, nil, _): throw ValidationError("give --keyring, or --custody with --force")
        case (nil, _?, nil): throw ValidationError("--custody needs --force")
        default: throw ValidationError("give --keyring or --custody with --force, not both")
        }
    }

    func open() throws -> any KeyCustodian {
        if let keyring {
            return try KeyringCustody.open(at: keyring, passphrase: try passphrase.read(), mode: .readOnly,
                                           logger: makeLogger())
        }
        let configuration = try CustodyConfiguration.load(path: custody!)
        return try configuration.open(try ForceID(force: force!), mode: .readOnly, logger: makeLogger())
    }
}

/// A program installed beside this one (vaultd beside vault).
func siblingExecutable(_ name: String) -> String {
    var exe = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &exe, exe.count - 1)
    let own = length > 0 ? String(cString: exe) : "./vault"
    return DurableFile.parentDirectory(of: own) + "/" + name
}
