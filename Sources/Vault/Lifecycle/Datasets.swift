import KeyCustody

/// Datasets and their retention (DESIGN section 7): a force's custodian sets how long archives of a dataset are kept.
extension VaultEngine {
    /// A force's datasets with their retention (metadata: every role of the force). Audited.
    public func listDatasets(principal: Principal, force: ForceID, requestID: String) async throws -> [DatasetRecord] {
        try await authoriseMetadataRead(Policy.Readers.datasets, principal: principal, force: force, action: "dataset.list",
                                        target: "\(force)/datasets", requestID: requestID)
        return try await catalog.datasets(force: force)
    }

    /// Sets a dataset's retention and description (custodian). Each archive of the dataset then expires its new
    /// retention after its archival: shortening brings expiry forward (an archive whose new expiry has passed is
    /// shredded by the next sweep), a held archive stays held. Audited with the previous retention and the number of
    /// archives whose expiry moved.
    public func putDataset(principal: Principal, force: ForceID, dataset: DatasetID, retentionDays: Int,
                           description: String, requestID: String) async throws -> DatasetRecord
    {
        let target = "\(force)/datasets/\(dataset)"
        try await check([.custodian], principal: principal, force: force, action: "dataset.put", target: target,
                        dataset: dataset, requestID: requestID)
        _ = try custody(force)
        let record = DatasetRecord(force: force, id: dataset, retentionDays: retentionDays, description: description)
        try record.validate()
        let time = now()
        let by = principal.id
        return try await recording(force) {
            try await catalog.putDataset(record, now: time) { previous, moved in
                var detail: [String: JSONValue] = [
                    "retention_days": .integer(Int64(retentionDays)), "description": .string(description),
                    "archives_moved": .integer(Int64(moved)),
                ]
                detail["previous_retention_days"] = previous.map { .integer(Int64($0.retentionDays)) } ?? .null
                return [AuditEntry(force: force, time: time, principal: by, action: "dataset.put", target: target,
                                   dataset: dataset, outcome: .allowed, detail: detail, requestID: requestID)]
            }
        }
    }
}
