import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer targets for every parser of the vault that meets outside bytes, in one executable: `VAULT_FUZZ_TARGET`
/// names the target (read once, in `LLVMFuzzerInitialize`), so one link serves them all. libFuzzer's runtime supplies
/// the driver (the package builds this target with `-sanitize=fuzzer,address` when `VAULT_FUZZ` is set).
///
/// ```
/// VAULT_FUZZ_TARGET=list VaultFuzz              # name, -max_len, leak checking, dictionary, summary per target
/// VAULT_FUZZ_SEEDS=DIR VaultFuzz                # writes seed corpora made by the vault's own code to DIR/<target>/
/// VAULT_FUZZ_TARGET=cobblestone VaultFuzz -max_total_time=60 CORPUS...
/// ```
///
/// A target throws nothing: errors are the expected answer to bad input. What it reports (`fatalError`, which
/// libFuzzer sees as a crash) is a broken invariant: a parse that does not survive its own re-encoding, a reader
/// that returns bytes it did not authenticate, two readers of one format that disagree.
struct FuzzTarget: Sendable {
    let name: String
    /// The `-max_len` the target wants (multi-chunk Cobblestone messages need more than libFuzzer's default).
    let maximumLength: Int
    let summary: String
    /// Whether libFuzzer checks each input for leaks as it runs (`-detect_leaks=1`). A target whose every input leaks
    /// by a known cause (Fuzz/lsan.supp) is checked by a replay of its corpus instead: libFuzzer runs a full
    /// LeakSanitizer scan after each input that allocates more than it frees, which would slow it 50-fold.
    var leakCheckEachInput = true
    /// The libFuzzer dictionary in Fuzz/dictionaries: the format's tokens, so mutations speak its language.
    var dictionary: String? = "json.dict"
    let run: @Sendable ([UInt8]) -> Void
}

enum Targets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "cobblestone", maximumLength: 80_000,
                   summary: "Cobblestone-256 streaming and random-access decryption (raw, and encrypt-tamper-decrypt)",
                   dictionary: nil, run: CobblestoneTarget.run),
        FuzzTarget(name: "sealed-file", maximumLength: 8192,
                   summary: "sealed file header line (DESIGN 5.4) and SealedFile.readHeader on a whole file",
                   run: FormatTargets.sealedFile),
        FuzzTarget(name: "wrapped-key", maximumLength: 1024,
                   summary: "wrapped key JSON (DESIGN 5.2), canonical text, AAD and purpose checks",
                   run: FormatTargets.wrappedKey),
        FuzzTarget(name: "keyring", maximumLength: 4096,
                   summary: "keyring file outer document (DESIGN 5.3), without the KDF",
                   run: KeyringTargets.document),
        FuzzTarget(name: "keyring-contents", maximumLength: 8192,
                   summary: "decrypted keyring key list (DESIGN 5.3) under a fixed sealing key, and re-sealing",
                   run: KeyringTargets.contents),
        FuzzTarget(name: "json", maximumLength: 4096,
                   summary: "the strict JSON parser and canonical writer, with and without secret members",
                   run: FormatTargets.json),
        FuzzTarget(name: "byte-range", maximumLength: 128,
                   summary: "HTTP Range header (ByteRange.parse / resolve)", dictionary: "byte-range.dict",
                   run: FormatTargets.byteRange),
        FuzzTarget(name: "console-form", maximumLength: 4096,
                   summary: "the console's form bodies (application/x-www-form-urlencoded) and their re-encoding",
                   dictionary: nil, run: FormatTargets.consoleForm),
        FuzzTarget(name: "config", maximumLength: 4096,
                   summary: "TOML: vaultd.toml, the custody file, the custody service's configuration",
                   leakCheckEachInput: false, dictionary: "toml.dict", run: ConfigurationTarget.run),
        FuzzTarget(name: "audit-export", maximumLength: 16_384,
                   summary: "AuditVerifier on an NDJSON export (DESIGN 5.5), lines and file, signatures re-made",
                   run: AuditTarget.run),
        FuzzTarget(name: "destruction-certificate", maximumLength: 4096,
                   summary: "destruction certificate (DESIGN 5.8): parse, verify, re-encode, re-issue",
                   run: CertificateTarget.run),
        FuzzTarget(name: "custody-request", maximumLength: 8192,
                   summary: "remote custody request and answer bodies (CustodyWire, witness, signed use cases)",
                   run: CustodyTargets.request),
        FuzzTarget(name: "read-request", maximumLength: 4096,
                   summary: "signed read request (DESIGN 5.6): envelope bytes, header value, principal key file",
                   run: CustodyTargets.readRequest),
    ]
}

/// The target selected by `VAULT_FUZZ_TARGET`, set once before the first input.
nonisolated(unsafe) private var selected: FuzzTarget?

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>
) -> CInt {
    if let directory = getenv("VAULT_FUZZ_SEEDS").map({ String(cString: $0) }) {
        do {
            try Seeds.write(to: directory)
        } catch {
            printError("VaultFuzz: cannot write seeds: \(error)")
            finish(1)
        }
        finish(0)
    }
    let name = getenv("VAULT_FUZZ_TARGET").map { String(cString: $0) } ?? ""
    if name == "list" {
        for target in Targets.all {
            let leaks = target.leakCheckEachInput ? "each-input" : "replay"
            print("\(target.name)\t\(target.maximumLength)\t\(leaks)\t\(target.dictionary ?? "-")\t\(target.summary)")
        }
        finish(0)
    }
    guard let target = Targets.all.first(where: { $0.name == name }) else {
        printError("VaultFuzz: set VAULT_FUZZ_TARGET to one of: \(Targets.all.map(\.name).joined(separator: ", "))")
        finish(2)
    }
    selected = target
    Fixtures.prepare()
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    selected!.run(input)
    return 0
}

/// SwiftPM links an executable target's entry point as `<module>_main` (`--defsym main=VaultFuzz_main`), so this
/// is `main`: it hands over to libFuzzer's driver, as libFuzzer's own `main` would.
@_cdecl("VaultFuzz_main")
public func vaultFuzzMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzTestOneInput(data, size) }
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// Ends a mode that does not fuzz (seeds, list) without LeakSanitizer's exit check, which would report the Strings
/// still live in this very frame (held in registers that `exit` overwrites) as leaked.
func finish(_ status: CInt) -> Never {
    fflush(nil)
    _exit(status)
}

/// A line on standard error.
func printError(_ message: String) {
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}
