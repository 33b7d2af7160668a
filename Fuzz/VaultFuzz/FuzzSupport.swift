import Dispatch
import KeyCustody
import Logging
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// Reads structured values off the front of a fuzz input (as LLVM's FuzzedDataProvider does), with zeros once the
/// input runs out, so every input is a valid sequence of choices and small mutations stay small.
struct FuzzInput {
    private let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remainingCount: Int { bytes.count - position }
    var isEmpty: Bool { position >= bytes.count }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func bool() -> Bool { byte() & 1 == 1 }

    /// `count` bytes, zero-padded when the input is shorter.
    mutating func bytes(_ count: Int) -> [UInt8] {
        let available = max(0, min(count, bytes.count - position))
        var taken = Array(bytes[position..<position + available])
        position += available
        if taken.count < count { taken += [UInt8](repeating: 0, count: count - taken.count) }
        return taken
    }

    /// A big-endian integer of `T`'s width.
    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type) -> T {
        bytes(T.bitWidth / 8).reduce(T(0)) { $0 << 8 | T($1) }
    }

    /// An integer in `range`, from as few bytes as the range needs.
    mutating func integer(in range: ClosedRange<Int>) -> Int {
        let span = UInt64(range.upperBound - range.lowerBound)
        guard span > 0 else { return range.lowerBound }
        let width = span <= 0xFF ? 1 : span <= 0xFFFF ? 2 : span <= 0xFF_FFFF ? 3 : 8
        let raw = bytes(width).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return range.lowerBound + Int(span == UInt64.max ? raw : raw % (span + 1))
    }

    /// Up to `maximum` bytes, the count chosen by the input.
    mutating func chunk(upTo maximum: Int) -> [UInt8] { bytes(min(integer(in: 0...maximum), remainingCount)) }

    /// Everything not read yet.
    mutating func rest() -> [UInt8] {
        defer { position = bytes.count }
        return Array(bytes[min(position, bytes.count)...])
    }
}

/// A small deterministic generator for choices the input does not spell out (split points, extra ranges).
struct SplitMix {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(next() % UInt64(bound)) }
}

/// A broken invariant: the finding libFuzzer reports (a Swift trap is a crash to it).
func violated(_ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) -> Never {
    fatalError("VaultFuzz invariant violated: \(message())", file: file, line: line)
}

/// Keys and files the targets share, fixed so that seeds made in one process verify in another.
enum Fixtures {
    /// A seed that is not secret: the fuzz targets' audit key, which signs checkpoints, seals and certificates.
    static let auditSigner = AuditSigner(key: privateKey(filling: 0xA5))
    /// The force's witness (custody service) key: cosignatures and signed use cases.
    static let witnessSigner = AuditSigner(key: privateKey(filling: 0x5A))
    /// A principal's read-request signing key.
    static let principalKey = privateKey(filling: 0x3C)
    /// The sealing key the keyring-contents target seals its inputs under (what Argon2id would derive).
    static let sealingKey = SecureBytes(count: 32) { $0.initializeMemory(as: UInt8.self, repeating: 0x42) }
    static let force = try! ForceID(force: "wmp")
    static let dataset = try! DatasetID(dataset: "crime-records")
    static let extract = try! ExtractID("01JD0000000000000000000000")
    static let logger = Logger(label: "vault.fuzz", factory: { _ in SwiftLogNoOpLogHandler() })

    private static func privateKey(filling byte: UInt8) -> Ed25519.PrivateKey {
        try! Ed25519.PrivateKey(seed: SecureBytes(count: 32) { $0.initializeMemory(as: UInt8.self, repeating: byte) })
    }

    /// Touches every fixture, so their one-time allocations happen before the first input.
    static func prepare() {
        _ = auditSigner.publicKey.fingerprint
        _ = witnessSigner.publicKey.fingerprint
        _ = principalKey.publicKey
        _ = sealingKey.count
        _ = (force, dataset, extract, logger)
        _ = ScratchFile.shared
    }
}

/// One file, rewritten for each input, for the parsers that read from a path (`InputFile`).
final class ScratchFile: @unchecked Sendable {
    static let shared = ScratchFile()
    let path: String
    private let fd: Int32

    private init() {
        let directory = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(directory)/vault-fuzz-XXXXXX".utf8CString)
        fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { fatalError("VaultFuzz: cannot create a scratch file in \(directory)") }
        path = String(cString: template)
        scratchPath = strdup(path)
        atexit { if let scratchPath { unlink(scratchPath) } }
    }

    /// Replaces the file's content with `bytes`; returns its path.
    func write(_ bytes: [UInt8]) -> String {
        guard ftruncate(fd, 0) == 0 else { fatalError("VaultFuzz: ftruncate failed") }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else { fatalError("VaultFuzz: short write to the scratch file") }
        return path
    }
}

nonisolated(unsafe) private var scratchPath: UnsafeMutablePointer<CChar>?

/// Runs async code to completion and waits for it on this thread. It starts here (`Task.immediate`); code that
/// suspends (the async reader hands decryption to a read-ahead child task) finishes on the cooperative pool while
/// this thread waits.
func runToCompletion<T>(_ body: @escaping () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    let operation = UnsafeSendable(body)
    Task.immediate {
        do { box.result = .success(try await operation.value()) } catch { box.result = .failure(error) }
        done.signal()
    }
    done.wait()
    guard let result = box.result else { violated("an async read ended without a result") }
    return try result.get()
}

/// Where a task leaves its result for the thread that started it.
final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}

struct UnsafeSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

struct FuzzError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
