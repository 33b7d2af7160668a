import KeyCustody

/// A custodian that times every operation into `vault_custody_operation_duration_seconds` and otherwise passes
/// everything through unchanged. The engine wraps each force's custody in one.
struct MeasuredCustodian: KeyCustodian {
    let base: any KeyCustodian

    var force: ForceID { base.force }

    func activeMasterKey() async throws -> KEKID {
        try await VaultMetrics.custody("active_master_key", force: force) { try await base.activeMasterKey() }
    }

    func rotate() async throws -> KEKID {
        try await VaultMetrics.custody("rotate", force: force) { try await base.rotate() }
    }

    func generateDataKey(for context: WrapContext) async throws -> DataKey {
        try await VaultMetrics.custody("generate_data_key", force: force) {
            try await base.generateDataKey(for: context)
        }
    }

    func generateDataKey(for context: WrapContext, justification: Justification) async throws -> DataKey {
        try await VaultMetrics.custody("generate_data_key", force: force) {
            try await base.generateDataKey(for: context, justification: justification)
        }
    }

    func unwrap(_ wrapped: WrappedKey, context: WrapContext, justification: Justification) async throws
        -> SecureBytes
    {
        try await VaultMetrics.custody("unwrap", force: force) {
            try await base.unwrap(wrapped, context: context, justification: justification)
        }
    }

    func rewrap(_ wrapped: WrappedKey, context: WrapContext, to kek: KEKID, justification: Justification)
        async throws -> WrappedKey
    {
        try await VaultMetrics.custody("rewrap", force: force) {
            try await base.rewrap(wrapped, context: context, to: kek, justification: justification)
        }
    }

    func createArchiveKey(for extract: ExtractID) async throws -> KEKID {
        try await VaultMetrics.custody("create_archive_key", force: force) {
            try await base.createArchiveKey(for: extract)
        }
    }

    func retire(_ kek: KEKID) async throws {
        try await VaultMetrics.custody("retire", force: force) { try await base.retire(kek) }
    }

    func destroy(_ kek: KEKID) async throws {
        try await VaultMetrics.custody("destroy", force: force) { try await base.destroy(kek) }
    }

    func rewrap(_ items: [RewrapItem], to kek: KEKID, justification: Justification) async throws
        -> [Result<WrappedKey, CustodyError>]
    {
        try await VaultMetrics.custody("rewrap_batch", force: force) {
            try await base.rewrap(items, to: kek, justification: justification)
        }
    }

    func destroy(_ keks: [KEKID]) async throws {
        try await VaultMetrics.custody("destroy_batch", force: force) { try await base.destroy(keks) }
    }

    func migrate(to backend: String) async throws -> KEKID {
        try await VaultMetrics.custody("migrate", force: force) { try await base.migrate(to: backend) }
    }

    func status() async throws -> [KeyInfo] {
        try await VaultMetrics.custody("status", force: force) { try await base.status() }
    }
}
