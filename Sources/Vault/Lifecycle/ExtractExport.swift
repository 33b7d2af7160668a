import KeyCustody
import NIOCore

/// A current extract as a DESIGN 5.4 sealed file: the header line, then the stored ciphertext exactly. The wrapped
/// key in the header is the one in the catalog, under the force's master key, so the force decrypts the file
/// offline with its keyring alone (`vault decrypt`); vaultd never unwraps or decrypts anything to export it.
public struct SealedExport: @unchecked Sendable {
    public let header: SealedFileHeader
    let blob: any CiphertextSource

    public var size: UInt64 { UInt64(header.line.count) + header.ciphertextSize }

    /// Writes the sealed file: the header line, then the ciphertext in buffers of `blockSize`.
    public func write(blockSize: Int = 1 << 20, to sink: (ByteBuffer) async throws -> Void) async throws {
        try await sink(ByteBuffer(bytes: header.line))
        var offset: UInt64 = 0
        while offset < header.ciphertextSize {
            let count = Int(min(UInt64(blockSize), header.ciphertextSize - offset))
            try await sink(try await blob.read(at: offset, count: count))
            offset += UInt64(count)
        }
    }
}

extension VaultEngine {
    /// Exports the current extract of `force`/`dataset` as a sealed file (custodian of that force). `expected`
    /// names the extract the custodian means; if it is no longer current the export is refused. Audited before the
    /// first byte, in the transaction that confirms the extract is current.
    public func exportExtract(
        principal: Principal, force: ForceID, dataset: DatasetID, expected: ExtractID?, requestID: String
    ) async throws -> SealedExport {
        let target = "\(force)/\(dataset)"
        try await check([.custodian], principal: principal, force: force, action: "export", target: target,
                        dataset: dataset, requestID: requestID)
        _ = try custody(force)
        guard let current = try await catalog.currentExtract(force: force, dataset: dataset) else {
            try await record(AuditEntry(
                force: force, time: now(), principal: principal.id, action: "export", target: target,
                dataset: dataset, outcome: .error, detail: ["reason": .string(VaultError.Code.notFound.rawValue)],
                requestID: requestID))
            throw VaultError(.notFound, "dataset \(dataset) of force \(force) has no current extract")
        }
        let identity = current.identity
        let extractTarget = "\(force)/\(dataset)/\(identity.extract)"
        if let expected, expected != identity.extract {
            let message = "extract \(expected) is not the current extract of \(dataset); archives are exported only "
                + "through an approved archive retrieval"
            try await record(AuditEntry(
                force: force, time: now(), principal: principal.id, action: "export", target: "\(target)/\(expected)",
                dataset: dataset, outcome: .denied, detail: ["reason": .string(VaultError.Code.archivedExtract.rawValue)],
                requestID: requestID))
            throw VaultError(.archivedExtract, message)
        }
        let blob: any CiphertextSource
        do {
            blob = try await blobs.open(identity)
            guard blob.size == current.ciphertextSize else {
                throw VaultError(.integrityFailure, "the stored blob of \(identity) has the wrong size")
            }
        } catch {
            try await record(AuditEntry(
                force: force, time: now(), principal: principal.id, action: "export", target: extractTarget,
                dataset: dataset, outcome: .error, detail: ["reason": .string("blob_unreadable")],
                requestID: requestID))
            throw error
        }
        let recorded = try await recording(force) {
            try await catalog.appendAuditIfCurrent(force: force, extract: identity.extract, audit: [AuditEntry(
                force: force, time: now(), principal: principal.id, action: "export", target: extractTarget,
                dataset: dataset, outcome: .allowed,
                detail: ["extract": .string(identity.extract.rawValue), "format": .string(SealedFileHeader.format),
                         "ciphertext_size": .integer(Int64(current.ciphertextSize)),
                         "kek": .string(current.wrappedKey.kek.description)],
                requestID: requestID)])
        }
        guard recorded else {
            throw VaultError(.archivedExtract, "extract \(identity.extract) was archived while it was being exported")
        }
        return SealedExport(
            header: SealedFileHeader(identity: identity, plaintextSize: current.plaintextSize,
                                     ciphertextSHA256: current.ciphertextSHA256, wrappedKey: current.wrappedKey),
            blob: blob)
    }
}
