import Foundation

/// Locates the shared test vectors: `$VAULT_VECTORS`, else `../shared/vectors` beside the checkout.
public enum TestVectors {
    public enum Location {
        case found(URL)
        /// `VAULT_SKIP_VECTORS=1`: vector tests are skipped on purpose.
        case skipped
        /// Neither place exists: the message names both.
        case missing(String)
    }

    public static var packageRoot: URL {
        // Tests/VaultTestSupport/TestSupport.swift -> package root
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    public static func locate() -> Location {
        let environment = ProcessInfo.processInfo.environment
        if environment["VAULT_SKIP_VECTORS"] == "1" { return .skipped }
        let fromEnvironment = environment["VAULT_VECTORS"]
        if let fromEnvironment, FileManager.default.fileExists(atPath: fromEnvironment) {
            return .found(URL(fileURLWithPath: fromEnvironment))
        }
        let beside = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/vectors")
        if FileManager.default.fileExists(atPath: beside.path) { return .found(beside) }
        return .missing(
            "test vectors not found: neither $VAULT_VECTORS (\(fromEnvironment ?? "unset")) nor \(beside.path) "
                + "exists; set VAULT_VECTORS or VAULT_SKIP_VECTORS=1")
    }

    /// Decodes a vector file, or returns nil when vectors are skipped; throws with the locating message otherwise.
    public static func load<T: Decodable>(_ type: T.Type, _ relativePath: String) throws -> T? {
        switch locate() {
        case .skipped: return nil
        case .missing(let message): throw VectorError(message: message)
        case .found(let directory):
            let data = try Data(contentsOf: directory.appendingPathComponent(relativePath))
            return try JSONDecoder().decode(T.self, from: data)
        }
    }

    /// A test-setup failure with a message (missing vectors, a helper program that failed).
    public struct VectorError: Error, CustomStringConvertible {
        public let message: String
        public var description: String { message }
        public init(message: String) { self.message = message }
    }
}

/// Hex to bytes for test data (crashes on bad hex: vector files are trusted).
public func hexBytes(_ text: String) -> [UInt8] {
    var bytes = [UInt8]()
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

/// A temporary directory removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(_ prefix: String = "vault-test") throws {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent(
            "\(prefix)-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        path = base.path
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    public func file(_ name: String) -> String { "\(path)/\(name)" }

    public func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = file(name)
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        return file
    }

    public func read(_ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: file(name))))
    }

    public func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: file(name)) }

    /// Names of the directory's entries (to prove nothing was left behind).
    public func entries() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: path).sorted() }
}

/// Deterministic pseudo-random bytes for test payloads (not for keys).
public func testBytes(count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed
    var bytes = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        bytes[i] = UInt8(truncatingIfNeeded: state)
    }
    return bytes
}

/// The result of running one of the project's binaries.
public struct CommandResult: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
}

/// Runs the real `vault` / `vaultd` binaries built beside the test bundle.
public enum Binaries {
    public static var directory: URL {
        if let explicit = ProcessInfo.processInfo.environment["VAULT_BIN_DIR"] {
            return URL(fileURLWithPath: explicit)
        }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var directory = executable.deletingLastPathComponent()
        // On Linux the test runner is `<bin>/<Package>PackageTests.xctest`; on Darwin it sits inside a bundle.
        while !FileManager.default.fileExists(atPath: directory.appendingPathComponent("vault").path),
            directory.path != "/"
        {
            directory = directory.deletingLastPathComponent()
        }
        return directory
    }

    public static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Runs a binary to completion. `environment` is added to a minimal base environment (PATH, HOME) so that no
    /// secret from the test's own environment leaks in.
    public static func run(
        _ name: String, _ arguments: [String], environment: [String: String] = [:], stdin: [UInt8]? = nil,
        currentDirectory: String? = nil
    ) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: name.hasPrefix("/") ? name : path(name))
        process.arguments = arguments
        var base = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": "/tmp"]
        for (key, value) in environment { base[key] = value }
        process.environment = base
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin)) }
        try input.fileHandleForWriting.close()
        // Read both pipes concurrently so neither fills up and blocks the child.
        let errData = LockedData()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errData.set(err.fileHandleForReading.readDataToEndOfFile())
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                             stderr: String(decoding: errData.get(), as: UTF8.self))
    }
}

final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func set(_ value: Data) { lock.lock(); data = value; lock.unlock() }
    func get() -> Data { lock.lock(); defer { lock.unlock() }; return data }
}
