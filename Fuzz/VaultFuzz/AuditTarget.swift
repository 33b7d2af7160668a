import KeyCustody
import Vault

/// `vault audit verify` (DESIGN 5.5, 5.7): the verifier fed an export line by line, and the same export read from a
/// file, must reach the same verdict. The fuzzer cannot forge Ed25519 signatures, so with flag bit 0 every line that
/// parses as a checkpoint, seal or cosignature is signed again with the fixture keys: the chain logic behind the
/// signature checks is what gets explored. Bit 1 passes the witness key; bit 2 takes a `--since-head` from the
/// first line.
enum AuditTarget {
    static func run(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let flags = input.byte()
        var lines = split(input.rest())
        var sinceHead: AuditHead?
        if flags & 4 == 4, !lines.isEmpty {
            let text = String(decoding: lines.removeFirst(), as: UTF8.self)
            if let head = try? AuditHead(text) {
                guard (try? AuditHead(head.description)) == head else { violated("a head does not parse again") }
                sinceHead = head
            }
        }
        if flags & 1 == 1 { lines = lines.map(resigned) }
        let key = Fixtures.auditSigner.publicKey
        let witnessKey = flags & 2 == 2 ? Fixtures.witnessSigner.publicKey : nil

        var verifier = AuditVerifier(publicKey: key, witnessKey: witnessKey, sinceHead: sinceHead)
        for line in lines { verifier.consume(line) }
        let streamed = verdict { try verifier.finish() }
        let path = ScratchFile.shared.write(lines.flatMap { $0 + [0x0A] })
        let fromFile = verdict {
            try AuditVerifier.verify(path: path, publicKey: key, witnessKey: witnessKey, sinceHead: sinceHead)
        }
        guard streamed == fromFile else {
            violated("verifying lines and verifying the file disagree: \(streamed) / \(fromFile)")
        }
        switch streamed {
        case .failure(let failure):
            guard failure.line >= 0, failure.line <= max(lines.count, 1) else {
                violated("a break names line \(failure.line) of an export of \(lines.count) lines")
            }
        case .success(let report):
            guard report.records == 0 || report.records == report.lastSeq - report.firstSeq + 1 else {
                violated("a verified export of records \(report.firstSeq)-\(report.lastSeq) holds \(report.records)")
            }
            guard report.records == 0 || report.checkpoints > 0 else {
                violated("records verified without a checkpoint")
            }
            if let witnessed = report.witnessedThrough {
                guard witnessed <= report.lastSeq, report.unwitnessed == report.lastSeq - witnessed else {
                    violated("witnessed through \(witnessed) of \(report.lastSeq), \(report.unwitnessed) unwitnessed")
                }
            }
        }
    }

    enum Verdict: Equatable, CustomStringConvertible {
        case success(AuditVerificationReport)
        case failure(AuditBreak)

        var description: String {
            switch self {
            case .success(let report): "verified \(report.firstSeq)-\(report.lastSeq)"
            case .failure(let failure): "\(failure.kind): \(failure)"
            }
        }
    }

    static func verdict(_ body: () throws -> AuditVerificationReport) -> Verdict {
        do { return .success(try body()) } catch let failure as AuditBreak { return .failure(failure) } catch {
            violated("the verifier threw something other than an AuditBreak: \(error)")
        }
    }

    /// Lines as `LineReader` sees them: LF-separated, a last line without LF counts, no empty line after a final LF.
    static func split(_ bytes: [UInt8]) -> [[UInt8]] {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
        if bytes.last == 0x0A || bytes.isEmpty { lines.removeLast() }
        return lines
    }

    /// The line signed again with the fixture keys, when it is a checkpoint, a seal or a cosignature.
    static func resigned(_ line: [UInt8]) -> [UInt8] {
        guard let json = try? JSONParser.parse(line) else { return line }
        let signer = Fixtures.auditSigner
        if let checkpoint = try? AuditCheckpoint(json: json) {
            return try! signer.checkpoint(force: checkpoint.force, seq: checkpoint.seq, hash: checkpoint.hash,
                                          time: checkpoint.time).json.canonicalBytes()
        }
        if let seal = try? AuditExportSeal(json: json) {
            return try! signer.seal(force: seal.force, firstSeq: seal.firstSeq, lastSeq: seal.lastSeq,
                                    firstPrev: seal.firstPrev, lastHash: seal.lastHash, time: seal.exportedAt)
                .json.canonicalBytes()
        }
        if let cosignature = try? Cosignature(json: json) {
            let checkpoint = AuditCheckpoint(force: cosignature.force, seq: cosignature.seq, hash: cosignature.hash,
                                             time: cosignature.checkpointTime, signature: [])
            return try! Cosignature(checkpoint: checkpoint, cosigned: cosignature.cosigned,
                                    signer: Fixtures.witnessSigner).json.canonicalBytes()
        }
        return line
    }
}
