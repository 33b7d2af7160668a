import KeyCustody

/// A custodian that times every operation into `vault_custody_operation_duration_seconds` and otherwise passes
/// everything through unchanged. The engine wraps each force's custody in one.
///
/// A local backend (keyring file, PKCS#11 token) blocks in its calls: a file lock and fsync, a token's C calls. Its
/// operations run on `BlockingWork`'s threads (`executor`), never on the cooperative pool; a remote custodian's
/// calls are asynchronous already and stay where they are.
struct MeasuredCustodian: KeyCustodian {
    let base: any KeyCustodian
    let executor: (any TaskExecutor)?

    init(base: any KeyCustodian) {
        self.base = base
        executor = base is RemoteCustody ? nil : BlockingWork.executor
    }

    var force: ForceID { base.force }

    /// Times `operation`, run on the blocking-work threads for a local backend.
    private func measure<T: Sendable>(_ name: String, _ operation: @Sendable () async throws -> T) async throws -> T {
        try await VaultMetrics.custody(name, force: force) {
            guard let executor else { return try await operation() }
            return try await withTaskExecutorPreference(executor) { try await operation() }
        }
    }

    func activeMasterKey() async throws -> KEKID {
        try await measure("active_master_key") { try await base.activeMasterKey() }
    }

    func rotate() async throws -> KEKID {
        try await measure("rotate") { try await base.rotate() }
    }

    func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try await measure("generate_data_key") {
            try await base.generateDataKey(for: context)
        }
    }

    func generateDataKey(for context: WrapContext, justification: Justification) async throws -> DataKey {
        try await measure("generate_data_key") {
            try await base.generateDataKey(for: context, justification: justification)
        }
    }

    func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try await measure("unwrap") {
            try await base.unwrap(wrapped, context: context, justification: justification)
        }
    }

    func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        try await measure("rewrap") {
            try await base.rewrap(wrapped, context: context, to: kek, justification: justification)
        }
    }

    func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        try await measure("create_archive_key") {
            try await base.createArchiveKey(for: extract)
        }
    }

    func retire(_ kek: KEKID) async throws {
        try await measure("retire") { try await base.retire(kek) }
    }

    func destroy(_ kek: KEKID) async throws {
        try await measure("destroy") { try await base.destroy(kek) }
    }

    func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try await measure("rewrap_batch") {
            try await base.rewrap(items, to: kek, justification: justification)
        }
    }

    func destroy(_ keks: [KEKID]) async throws {
        try await measure("destroy_batch") { try await base.destroy(keks) }
    }

    func forgetDestroyed(_ keks: [KEKID]) async throws {
        try await measure("forget_destroyed") { try await base.forgetDestroyed(keks) }
    }

    func migrate(to backend: String) async throws -> KEKID {
        try await measure("migrate") { try await base.migrate(to: backend) }
    }

    func status() async throws -> [KeyInfo] {
        try await measure("status") { try await base.status() }
    }

    func destroy(_ keks: [KEKID], forgetting: [KEKID]) async throws {
        try await measure("destroy_batch") { try await base.destroy(keks, forgetting: forgetting) }
    }

    func states(of keks: Set<KEKID>) async throws -> [KEKID: KeyState] {
        try await measure("status") { try await base.states(of: keks) }
    }
}
