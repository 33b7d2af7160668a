import Foundation
import Testing

/// `make test` runs the suite once per backend pass (keyring and PKCS#11 custody; SQLite + files and PostgreSQL +
/// S3). What depends on no backend runs in the first pass only: `scripts/run-tests.sh` sets
/// `VAULT_TEST_BACKEND_INDEPENDENT=0` for the other passes. A plain `swift test` runs everything.
public enum TestPass {
    public static let runsBackendIndependentTests =
        ProcessInfo.processInfo.environment["VAULT_TEST_BACKEND_INDEPENDENT"] != "0"
}

extension Trait where Self == ConditionTrait {
    /// A suite that depends on neither the custody backend nor the storage under test (formats, primitives,
    /// configuration parsing, the offline CLI): it runs once, in the first pass.
    public static var backendIndependent: Self {
        .enabled(if: TestPass.runsBackendIndependentTests, "depends on no backend: runs in the first pass only")
    }

    /// A suite that depends on the custody backend under test but not on the storage: it runs in the embedded
    /// passes (keyring and PKCS#11), not again on PostgreSQL + S3.
    public static var custodyOnly: Self {
        .enabled(if: TestStorage.isEmbedded, "depends on custody only: runs in the embedded passes")
    }
}
