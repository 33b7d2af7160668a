import KeyCustody

/// The audit-chain append (DESIGN 5.5), written once for every catalog: which chains a batch of entries extends,
/// and from each chain's head the records that follow it. Pure; a catalog driver reads each head, asks for the
/// records, and writes them and the new head in the same transaction as the change they record.
///
/// Each record takes the next seq, `prev` = the head's hash, and a time never before the head's (a clock stepping
/// back does not reorder the chain).
struct AuditAppend: Sendable {
    /// The last record of a force's chain.
    struct Head: Sendable, Equatable {
        let seq: Int64
        let hash: String
        let time: UnixTime
    }

    /// One force's part of the batch, in the order given.
    struct Chain: Sendable {
        let force: ForceID
        let entries: [AuditEntry]

        /// The records extending `head` (nil: the chain is empty), and the head after them.
        func records(after head: Head?) -> (records: [AuditRecord], head: Head) {
            var seq = head?.seq ?? 0
            var time = head?.time ?? 0
            var hash = head?.hash ?? AuditRecord.genesis
            var records: [AuditRecord] = []
            records.reserveCapacity(entries.count)
            for entry in entries {
                seq += 1
                time = max(entry.time, time)
                let record = AuditRecord(entry: entry, seq: seq, time: time, prev: hash)
                hash = record.hash
                records.append(record)
            }
            return (records, Head(seq: seq, hash: hash, time: time))
        }
    }

    /// The chains `entries` extend, each force once, in the order its first entry appears.
    let chains: [Chain]

    init(_ entries: [AuditEntry]) {
        var forces: [ForceID] = []
        var grouped: [ForceID: [AuditEntry]] = [:]
        for entry in entries {
            if grouped[entry.force] == nil { forces.append(entry.force) }
            grouped[entry.force, default: []].append(entry)
        }
        chains = forces.map { Chain(force: $0, entries: grouped[$0] ?? []) }
    }
}
