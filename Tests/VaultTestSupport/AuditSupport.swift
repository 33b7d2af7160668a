import KeyCustody
import Vault

extension Catalog {
    /// Every record of a force's audit chain, parsed.
    public func auditRecords(force: ForceID) async throws -> [AuditRecord] {
        try await auditLines(force: force, after: 0, through: Int64.max, limit: 1_000_000)
            .map { try AuditRecord(line: $0.line) }
    }
}
