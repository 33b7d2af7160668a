import KeyCustody

/// What `AuditVerifier` found wrong with an export: the first place the chain breaks, and how.
public struct AuditBreak: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// A record's content changed after it was written.
        case altered
        /// A record is missing.
        case removed
        /// A record that does not belong to the chain (or a second copy of one) was added.
        case inserted
        /// Records are all there but out of order.
        case reordered
        /// A checkpoint's signature does not verify with the public key.
        case badSignature = "bad_signature"
        /// A line is not an export header, record or checkpoint at all.
        case malformed
    }

    public let kind: Kind
    /// The 1-based line of the export where the break shows, and the sequence number of the record it names.
    public let line: Int
    public let seq: Int64?
    public let message: String

    public var description: String { "line \(line): \(message)" }
}

/// What a successful verification covered.
public struct AuditVerificationReport: Sendable, Equatable {
    public let force: ForceID
    public let firstSeq: Int64
    public let lastSeq: Int64
    public let records: Int64
    public let checkpoints: Int
    public let lastCheckpointTime: UnixTime?
    public let keyFingerprint: String
    /// With a witness key: the last record the force's witness cosigned, and how many records follow it (not yet
    /// witnessed). Nil without a witness key.
    public var witnessedThrough: Int64? = nil
    public var unwitnessed: Int64 = 0
    /// Cosignature lines seen (checked only with a witness key).
    public var cosignatures = 0
    /// The hash of the last record: with `lastSeq`, the head to give `--since-head` when the next export is checked.
    public var headHash = ""
}

/// A chain head verified before (`seq:hash`), which a later export of the same chain must extend: it holds record
/// `seq` with that hash, or starts at `seq + 1` with that hash as its first `prev`.
public struct AuditHead: Sendable, Equatable, CustomStringConvertible {
    public let seq: Int64
    public let hash: String

    public init(seq: Int64, hash: String) {
        self.seq = seq
        self.hash = hash
    }

    /// Reads `seq:hash` (a decimal sequence number, 64 lower-case hex digits).
    public init(_ text: String) throws {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let seq = Int64(parts[0]), seq >= 1, parts[1].count == 64,
              parts[1].allSatisfy({ $0.isHexDigit && !$0.isUppercase }) else {
            throw VaultError(.invalidParameter, "a head is seq:hash (a sequence number, a colon and 64 lower-case hex "
                             + "digits), as `vault audit verify` prints it")
        }
        self.init(seq: seq, hash: String(parts[1]))
    }

    public var description: String { "\(seq):\(hash)" }
}

/// Verifies an audit export offline (DESIGN 5.5): every line is well formed and canonical, sequence numbers run
/// without gaps, every `prev` is the hash of the record before, every checkpoint's Ed25519 signature verifies and
/// matches the record it signs, and the last record is covered by a checkpoint. Lines are fed one at a time, so
/// an export of any size is verified in constant memory until a break is found.
///
/// At the first break the verifier keeps reading only to tell how the chain was broken: a record that is missing
/// (removed), one that appears again or does not belong (inserted), one that appears later (reordered), or one
/// whose content no longer hashes to what the next record or a checkpoint says (altered).
public struct AuditVerifier {
    private let publicKey: Ed25519.PublicKey
    /// The force's witness key (DESIGN 5.7): when given, every cosignature must verify with it, and the export must
    /// be witnessed up to a cosigned checkpoint.
    private let witnessKey: Ed25519.PublicKey?
    /// The checkpoint line just read (a cosignature line must follow its checkpoint).
    private var previousCheckpoint: AuditCheckpoint?
    private var cosignatureCount = 0
    private var lastCosignedSeq: Int64?
    fileprivate var lineNumber = 0
    private var header: AuditExportHeader?
    private var lastSeq: Int64?
    private var lastHash: String?
    private var lastTime: UnixTime = 0
    private var lastRecordLine = 0
    /// The hash a checkpoint before the first record vouches for: the `prev` of the first record.
    private var anchorHash: String?
    private var records: Int64 = 0
    private var checkpoints = 0
    private var lastCheckpointSeq: Int64?
    private var lastCheckpointTime: UnixTime?
    /// The first record read, and the signed seal that ends the export.
    private var firstRecord: (seq: Int64, prev: String)?
    private var seal: AuditExportSeal?
    /// The line of each record read so far, by `seq - header.firstSeq` (records are contiguous until a break).
    private var recordLines: [Int32] = []

    private enum Pending {
        /// A record with seq `found` came where `expected` belonged.
        case jump(expected: Int64, found: Int64, line: Int, previousLine: Int)
        /// A record with the expected seq whose `prev` is not the hash of the record before.
        case prevMismatch(seq: Int64, line: Int, previousLine: Int)
    }

    private var failure: AuditBreak?
    private var pending: Pending?
    /// After a pending break: where each seq shows up from then on, and the largest seq seen anywhere.
    private var laterLines: [Int64: [Int]] = [:]
    private var maximumSeq: Int64 = 0

    /// A head verified before that this export must extend; whether the export has reached it yet.
    private let sinceHead: AuditHead?
    private var sinceHeadMet = false

    public init(publicKey: Ed25519.PublicKey, witnessKey: Ed25519.PublicKey? = nil, sinceHead: AuditHead? = nil) {
        self.publicKey = publicKey
        self.witnessKey = witnessKey
        self.sinceHead = sinceHead
    }

    /// Verifies an export file, reading it line by line; with `sinceHead`, it must also extend that head.
    public static func verify(path: String, publicKey: Ed25519.PublicKey, witnessKey: Ed25519.PublicKey? = nil,
                              sinceHead: AuditHead? = nil) throws -> AuditVerificationReport
    {
        var verifier = AuditVerifier(publicKey: publicKey, witnessKey: witnessKey, sinceHead: sinceHead)
        let input = try InputFile(path: path)
        var reader = LineReader(input: input, maximumLineLength: 1 << 20)
        do {
            while let line = try reader.next() { verifier.consume(line) }
        } catch let error as VaultError where error.code == .malformedAudit {
            verifier.lineNumber += 1
            verifier.fail(.malformed, seq: nil, "\(error.message): not an audit export")
        }
        return try verifier.finish()
    }

    /// Feeds the next line (without its newline).
    public mutating func consume(_ line: [UInt8]) {
        lineNumber += 1
        if failure != nil { return }
        if pending != nil {
            observeAfterBreak(line)
            return
        }
        if header == nil {
            guard let value = try? JSONParser.parse(line), let parsed = try? AuditExportHeader(json: value) else {
                fail(.malformed, seq: nil, "the first line is not a \(AuditExportHeader.format) header")
                return
            }
            header = parsed
            return
        }
        if seal != nil {
            fail(.inserted, seq: (try? JSONParser.parse(line))?["seq"]?.integerValue,
                 "a line follows the export's signed seal: inserted")
        } else if line.starts(with: Array("{\"checkpoint\":".utf8)) {
            consumeCheckpoint(line)
            return
        } else if line.starts(with: Array("{\"cosignature\":".utf8)) {
            consumeCosignature(line)
            return
        } else if line.starts(with: Array("{\"export\":".utf8)) {
            consumeSeal(line)
        } else {
            consumeRecord(line)
        }
        previousCheckpoint = nil
    }

    /// A witness cosignature: it follows the checkpoint it cosigns, naming the same seq, hash and time.
    private mutating func consumeCosignature(_ line: [UInt8]) {
        let cosignature: Cosignature
        do { cosignature = try Cosignature(json: try JSONParser.parse(line)) } catch {
            fail(.malformed, seq: nil, "the cosignature line is malformed: altered")
            return
        }
        guard let checkpoint = previousCheckpoint, checkpoint.seq == cosignature.seq,
            checkpoint.hash == cosignature.hash, checkpoint.time == cosignature.checkpointTime,
            checkpoint.force == cosignature.force
        else {
            fail(.inserted, seq: cosignature.seq, "the cosignature of seq \(cosignature.seq) does not follow the "
                    + "checkpoint it cosigns: inserted or altered")
            return
        }
        cosignatureCount += 1
        guard let witnessKey else { return }
        guard cosignature.isValid(key: witnessKey) else {
            fail(.badSignature, seq: cosignature.seq, "the cosignature of seq \(cosignature.seq) does not verify with "
                    + "the witness key \(witnessKey.fingerprint): altered, or cosigned by another witness")
            return
        }
        lastCosignedSeq = max(lastCosignedSeq ?? 0, cosignature.seq)
    }

    /// The seal: signed by the vault when the export was made, it fixes where the export starts and ends, the prev
    /// of its first record and the hash of its last, so nothing can be cut from either end.
    private mutating func consumeSeal(_ line: [UInt8]) {
        let header = header!
        let parsed: AuditExportSeal
        do { parsed = try AuditExportSeal(json: try JSONParser.parse(line)) } catch {
            fail(.malformed, seq: nil, "the export's seal is malformed: altered")
            return
        }
        guard publicKey.isValidSignature(parsed.signature, for: parsed.signedBytes) else {
            fail(.badSignature, seq: nil, "the export's seal does not verify with the public key "
                    + "\(publicKey.fingerprint): altered, or signed by another vault's key")
            return
        }
        seal = parsed
        guard parsed.force == header.force else {
            fail(.altered, seq: nil, "the export's seal is for force \(parsed.force), not \(header.force)")
            return
        }
        if let lastSeq, let lastHash, let firstRecord {
            if firstRecord.seq > parsed.firstSeq {
                fail(.removed, seq: parsed.firstSeq, "record seq \(parsed.firstSeq) is missing: the signed seal says "
                        + "the export starts with it: removed")
            } else if firstRecord.seq < parsed.firstSeq {
                fail(.inserted, seq: firstRecord.seq, "record seq \(firstRecord.seq) comes before the export's signed "
                        + "start (seq \(parsed.firstSeq)): inserted")
            } else if firstRecord.prev != parsed.firstPrev {
                fail(.altered, seq: firstRecord.seq, "record seq \(firstRecord.seq) was altered: its prev is not the "
                        + "hash the signed seal names")
            } else if lastSeq < parsed.lastSeq {
                fail(.removed, seq: lastSeq + 1, "record seq \(lastSeq + 1) is missing: the signed seal says the "
                        + "export ends at seq \(parsed.lastSeq), the records end at \(lastSeq): removed")
            } else if lastSeq > parsed.lastSeq {
                fail(.inserted, seq: parsed.lastSeq + 1, "record seq \(parsed.lastSeq + 1) is beyond the export's "
                        + "signed end: inserted")
            } else if lastHash != parsed.lastHash {
                fail(.altered, seq: lastSeq, "record seq \(lastSeq) (line \(lastRecordLine)) was altered: it does not "
                        + "hash to what the signed seal names")
            }
        } else if parsed.lastSeq >= parsed.firstSeq {
            fail(.removed, seq: parsed.firstSeq, "record seq \(parsed.firstSeq) is missing: the signed seal names "
                    + "records \(parsed.firstSeq)–\(parsed.lastSeq) and the export holds none: removed")
        }
        if header.firstSeq != parsed.firstSeq || header.lastSeq != parsed.lastSeq {
            fail(.altered, seq: nil, "the export's header was altered: it disagrees with the signed seal")
        }
    }

    private mutating func consumeRecord(_ line: [UInt8]) {
        let header = header!
        let record: AuditRecord
        do { record = try AuditRecord(line: line) } catch let error as VaultError {
            let seq = (try? JSONParser.parse(line))?["seq"]?.integerValue
            fail(.altered, seq: seq, "\(seq.map { "record seq \($0)" } ?? "the record") was altered: \(error.message)")
            return
        } catch {
            fail(.malformed, seq: nil, "unreadable line")
            return
        }
        maximumSeq = max(maximumSeq, record.seq)
        guard record.force == header.force else {
            fail(.inserted, seq: record.seq,
                 "record seq \(record.seq) belongs to force \(record.force), not \(header.force): inserted")
            return
        }
        if let lastSeq, let lastHash {
            let expected = lastSeq + 1
            if record.seq == expected {
                guard record.prev == lastHash else {
                    pending = .prevMismatch(seq: record.seq, line: lineNumber, previousLine: lastRecordLine)
                    return
                }
            } else if record.seq > expected {
                pending = .jump(expected: expected, found: record.seq, line: lineNumber, previousLine: lastRecordLine)
                return
            } else {
                let earlier = lineOfSeq(record.seq).map { " (first at line \($0))" } ?? ""
                fail(.inserted, seq: record.seq,
                     "record seq \(record.seq) appears a second time\(earlier): a record was inserted")
                return
            }
        } else {
            // The first record: it starts the export where the header says, and is anchored to the chain's start or to
            // a checkpoint of the record before it, when the export holds one.
            if record.seq > header.firstSeq {
                fail(.removed, seq: header.firstSeq,
                     "record seq \(header.firstSeq) is missing: the export should start with it, but starts at seq "
                        + "\(record.seq): removed")
                return
            }
            if record.seq < header.firstSeq {
                fail(.inserted, seq: record.seq,
                     "record seq \(record.seq) comes before the export's first record (seq \(header.firstSeq)): inserted")
                return
            }
            if record.seq == 1, record.prev != AuditRecord.genesis {
                fail(.altered, seq: 1, "record seq 1 was altered: its prev must be \(AuditRecord.genesis.prefix(8))…")
                return
            }
            firstRecord = (record.seq, record.prev)
            if let anchorHash, record.prev != anchorHash {
                fail(.altered, seq: record.seq, "record seq \(record.seq)'s prev does not match the signed checkpoint of "
                        + "seq \(record.seq - 1) before it: altered")
                return
            }
        }
        if record.time < lastTime {
            fail(.reordered, seq: record.seq,
                 "record seq \(record.seq) is dated before the record preceding it: records were reordered or altered")
            return
        }
        if let sinceHead {
            // The head verified before is this record, or the one just before the export's first.
            let mismatch = record.seq == sinceHead.seq ? record.hash != sinceHead.hash
                : record.seq == sinceHead.seq + 1 && firstRecord?.seq == record.seq ? record.prev != sinceHead.hash : nil
            if let mismatch {
                sinceHeadMet = true
                if mismatch {
                    fail(.altered, seq: sinceHead.seq, "record seq \(sinceHead.seq) is not the one verified before "
                            + "(head \(sinceHead)): this export does not extend it, the chain was rewritten")
                    return
                }
            }
        }
        lastSeq = record.seq
        lastHash = record.hash
        lastTime = record.time
        lastRecordLine = lineNumber
        records += 1
        recordLines.append(Int32(truncatingIfNeeded: lineNumber))
    }

    private mutating func consumeCheckpoint(_ line: [UInt8]) {
        let header = header!
        let checkpoint: AuditCheckpoint
        do {
            checkpoint = try AuditCheckpoint(json: try JSONParser.parse(line))
        } catch {
            fail(.malformed, seq: nil, "the checkpoint line is malformed: altered")
            return
        }
        guard publicKey.isValidSignature(checkpoint.signature, for: checkpoint.signedBytes) else {
            fail(.badSignature, seq: checkpoint.seq,
                 "the checkpoint of seq \(checkpoint.seq) does not verify with the public key "
                    + "\(publicKey.fingerprint): altered, or signed by another vault's key")
            return
        }
        guard checkpoint.force == header.force else {
            fail(.inserted, seq: checkpoint.seq, "the checkpoint of seq \(checkpoint.seq) is for force "
                    + "\(checkpoint.force), not \(header.force): inserted")
            return
        }
        if let lastSeq, let lastHash {
            if checkpoint.seq == lastSeq {
                guard checkpoint.hash == lastHash else {
                    fail(.altered, seq: lastSeq, "record seq \(lastSeq) (line \(lastRecordLine)) does not match the "
                            + "signed checkpoint at line \(lineNumber): altered (or the chain up to it was rewritten)")
                    return
                }
            } else if checkpoint.seq > lastSeq {
                fail(.removed, seq: lastSeq + 1, "record seq \(lastSeq + 1) is missing: the checkpoint at line "
                        + "\(lineNumber) signs seq \(checkpoint.seq) but the records before it end at seq \(lastSeq): removed")
                return
            } else {
                fail(.reordered, seq: checkpoint.seq, "the checkpoint of seq \(checkpoint.seq) comes after record "
                        + "seq \(lastSeq): reordered")
                return
            }
        } else if checkpoint.seq == header.firstSeq - 1 {
            anchorHash = checkpoint.hash
        } else {
            fail(.removed, seq: header.firstSeq, "the checkpoint at line \(lineNumber) signs seq \(checkpoint.seq) "
                    + "before any record of the export: records removed")
            return
        }
        checkpoints += 1
        lastCheckpointSeq = checkpoint.seq
        lastCheckpointTime = checkpoint.time
        previousCheckpoint = checkpoint
    }

    private mutating func observeAfterBreak(_ line: [UInt8]) {
        guard !line.starts(with: Array("{\"checkpoint\":".utf8)), !line.starts(with: Array("{\"cosignature\":".utf8)),
            let seq = (try? JSONParser.parse(line))?["seq"]?.integerValue
        else { return }
        laterLines[seq, default: []].append(lineNumber)
        maximumSeq = max(maximumSeq, seq)
    }

    private func lineOfSeq(_ seq: Int64) -> Int? {
        guard let header else { return nil }
        let index = seq - header.firstSeq
        guard index >= 0, index < Int64(recordLines.count) else { return nil }
        return Int(recordLines[Int(index)])
    }

    fileprivate mutating func fail(_ kind: AuditBreak.Kind, seq: Int64?, line: Int? = nil, _ message: String) {
        guard failure == nil else { return }
        failure = AuditBreak(kind: kind, line: line ?? lineNumber, seq: seq, message: message)
    }

    /// Resolves a break that needed the rest of the export to classify.
    private mutating func resolvePending() {
        guard let pending else { return }
        switch pending {
        case .prevMismatch(let seq, let line, let previousLine):
            if let again = laterLines[seq]?.first {
                fail(.inserted, seq: seq, line: line, "record seq \(seq) at line \(line) does not follow the chain and "
                        + "seq \(seq) appears again at line \(again): inserted")
            } else {
                fail(.altered, seq: seq - 1, line: previousLine, "record seq \(seq - 1) (line \(previousLine)) was "
                        + "altered: its hash no longer matches the prev of record seq \(seq) (line \(line))")
            }
        case .jump(let expected, let found, let line, let previousLine):
            guard let later = laterLines[expected]?.first else {
                let range = found - 1 > expected ? "records seq \(expected)–\(found - 1) are" : "record seq \(expected) is"
                fail(.removed, seq: expected, line: line, "\(range) missing: the export goes from seq \(expected - 1) "
                        + "(line \(previousLine)) to seq \(found) (line \(line)): removed")
                return
            }
            let foundAgain = laterLines[found] != nil
            let othersMaximum = laterLines.keys.filter { $0 != found }.max() ?? expected
            if foundAgain || found > othersMaximum {
                fail(.inserted, seq: found, line: line,
                     "record seq \(found) at line \(line) does not belong between seq \(expected - 1) and seq "
                        + "\(expected) (line \(later)): inserted")
            } else {
                fail(.reordered, seq: found, line: line,
                     "record seq \(found) at line \(line) comes before seq \(expected) (line \(later)): reordered")
            }
        }
        self.pending = nil
    }

    /// The verdict once every line has been fed.
    public mutating func finish() throws -> AuditVerificationReport {
        resolvePending()
        if let failure { throw failure }
        guard let header else {
            throw AuditBreak(kind: .malformed, line: 1, seq: nil, message: "the export is empty (no header)")
        }
        if seal == nil {
            let next = (lastSeq ?? header.firstSeq - 1) + 1
            throw AuditBreak(kind: .removed, line: lineNumber, seq: next,
                             message: "the export's signed seal is missing: the export was cut off after line "
                                + "\(lineNumber) (record seq \(next) onwards removed)")
        }
        if let lastSeq {
            if lastSeq < header.lastSeq {
                throw AuditBreak(kind: .removed, line: lineNumber, seq: lastSeq + 1,
                                 message: "record seq \(lastSeq + 1) is missing: the export should end at seq "
                                    + "\(header.lastSeq) but ends at seq \(lastSeq): removed")
            }
            guard let lastCheckpointSeq, lastCheckpointSeq == lastSeq else {
                let uncovered = (lastCheckpointSeq ?? (header.firstSeq - 1)) + 1
                throw AuditBreak(kind: .inserted, line: lineOfSeq(uncovered) ?? lineNumber, seq: uncovered,
                                 message: "record seq \(uncovered) is not covered by any signed checkpoint: "
                                    + "inserted after the export was signed")
            }
            if lastSeq > header.lastSeq {
                throw AuditBreak(kind: .inserted, line: lastRecordLine, seq: lastSeq,
                                 message: "the export should end at seq \(header.lastSeq) but goes on to seq \(lastSeq): inserted")
            }
        } else if header.lastSeq >= header.firstSeq {
            throw AuditBreak(kind: .removed, line: lineNumber, seq: header.firstSeq,
                             message: "record seq \(header.firstSeq) is missing: the export holds no records: removed")
        }
        if let sinceHead, !sinceHeadMet {
            throw AuditBreak(kind: .removed, line: lineNumber, seq: sinceHead.seq,
                             message: "the export holds neither record seq \(sinceHead.seq) of the head verified before "
                                + "nor the record right after it: export from seq \(sinceHead.seq) or earlier")
        }
        var report = AuditVerificationReport(
            force: header.force, firstSeq: header.firstSeq, lastSeq: lastSeq ?? header.lastSeq, records: records,
            checkpoints: checkpoints, lastCheckpointTime: lastCheckpointTime, keyFingerprint: publicKey.fingerprint)
        report.cosignatures = cosignatureCount
        report.headHash = lastHash ?? ""
        if let witnessKey, let lastSeq {
            guard let witnessed = lastCosignedSeq else {
                throw AuditBreak(kind: .removed, line: lineNumber, seq: header.firstSeq,
                                 message: "no checkpoint of the export is cosigned by the witness key "
                                    + "\(witnessKey.fingerprint): none of its \(records) records is witnessed by the force")
            }
            report.witnessedThrough = witnessed
            report.unwitnessed = lastSeq - witnessed
        }
        return report
    }
}

/// Reads a file line by line (LF-terminated; a final line without LF counts), refusing absurdly long lines.
struct LineReader {
    let input: InputFile
    let maximumLineLength: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var atEnd = false

    init(input: InputFile, maximumLineLength: Int) {
        self.input = input
        self.maximumLineLength = maximumLineLength
    }

    mutating func next() throws -> [UInt8]? {
        while true {
            if let newline = buffer[start...].firstIndex(of: 0x0A) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                return line
            }
            if atEnd {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                return line
            }
            guard buffer.count - start <= maximumLineLength else {
                throw VaultError(.malformedAudit, "a line is longer than \(maximumLineLength) bytes")
            }
            buffer.removeFirst(start)
            start = 0
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let count = try chunk.withUnsafeMutableBytes { try input.read(into: $0) }
            if count == 0 { atEnd = true } else { buffer.append(contentsOf: chunk[0..<count]) }
        }
    }
}
