import Foundation
import Testing

/// One backend combination the backend-dependent tests run on: a custody backend and a storage. Such a test takes
/// the combinations present as its arguments (`TestBackend.all`, `.custodies`, `.storages`) and runs its body in
/// `backend.run { ... }`, where the fixtures (`TestCustody`, `TestStorage`) read the combination. Tests that depend on
/// no backend take no argument and run once. One `swift test` run covers every combination present.
public struct TestBackend: Sendable, CustomTestStringConvertible {
    public enum Custody: String, Sendable { case keyring, pkcs11 }
    public enum Storage: String, Sendable { case embedded, postgresS3 = "postgres-s3" }

    public let custody: Custody
    public let storage: Storage

    public var testDescription: String { "\(custody.rawValue) custody, \(storage.rawValue) storage" }

    /// The combination the running test chose; keyring custody on the embedded default outside any `run`.
    @TaskLocal public static var current = TestBackend(custody: .keyring, storage: .embedded)

    public static let keyringEmbedded = TestBackend(custody: .keyring, storage: .embedded)
    public static let pkcs11Embedded = TestBackend(custody: .pkcs11, storage: .embedded)
    public static let postgresS3 = TestBackend(custody: .keyring, storage: .postgresS3)

    /// PostgreSQL and S3 are there when `make test` started them (`scripts/test-services.sh` exports their URLs).
    public static var servicesPresent: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["VAULT_TEST_POSTGRES_URL"] != nil && environment["VAULT_TEST_S3_ENDPOINT"] != nil
    }

    public static let servicesMissing: Comment = "needs PostgreSQL and S3 on loopback (make test starts them)"

    /// SoftHSM2 is there when its module is installed (the tests make their own tokens when SOFTHSM2_CONF is unset).
    public static var softHSMPresent: Bool { FileManager.default.fileExists(atPath: TestCustody.module) }

    /// Every combination present: keyring and PKCS#11 custody on the embedded default, keyring custody on
    /// PostgreSQL + S3. `VAULT_TEST_BACKENDS` (say `keyring/embedded,pkcs11/embedded`) narrows the list.
    public static var all: [TestBackend] {
        var present = [keyringEmbedded]
        if softHSMPresent { present.append(pkcs11Embedded) }
        if servicesPresent { present.append(postgresS3) }
        guard let only = ProcessInfo.processInfo.environment["VAULT_TEST_BACKENDS"], !only.isEmpty else {
            return present
        }
        let wanted = Set(only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        return present.filter { wanted.contains("\($0.custody.rawValue)/\($0.storage.rawValue)") }
    }

    /// The custody backends present, on the embedded default: for what depends on custody but not on storage.
    public static var custodies: [TestBackend] { all.filter { $0.storage == .embedded } }

    /// The storages present, with keyring custody: for what depends on storage but not on the custody backend.
    public static var storages: [TestBackend] { all.filter { $0.custody == .keyring } }

    /// Runs `body` with this combination as the current one (child tasks inherit it).
    public func run<R>(_ body: () async throws -> R, isolation: isolated (any Actor)? = #isolation,
                       file: String = #fileID, line: UInt = #line) async rethrows -> R
    {
        try await Self.$current.withValue(self, operation: body, isolation: isolation, file: file, line: line)
    }
}
