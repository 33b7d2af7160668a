import Logging

/// What every custody backend records in its own log for each use of a key (DESIGN 6: "every backend records the
/// justification"), and the purpose check every rewrap makes. One wording for all backends, so an operator reads the
/// same line whichever backend served it. Never key bytes, PINs or passphrases: ids, purposes and principals only.
extension Logger {
    func custodyUnwrap(force: ForceID, kek: KEKID, context: WrapContext, justification: Justification) {
        info("custody unwrap", metadata: [
            "force": "\(force)", "kek": "\(kek)", "context": "\(context)",
            "purpose": "\(justification.purpose.rawValue)", "principal": "\(justification.principal)",
            "use_case": "\(justification.useCase ?? "-")", "request": "\(justification.requestID)",
        ])
    }

    func custodyRewrap(force: ForceID, from: KEKID, to: KEKID, context: WrapContext, justification: Justification) {
        info("custody rewrap", metadata: [
            "force": "\(force)", "from": "\(from)", "to": "\(to)", "context": "\(context)",
            "principal": "\(justification.principal)", "request": "\(justification.requestID)",
        ])
    }

    func custodyRewrapBatch(force: ForceID, to: KEKID, count: Int, failed: Int, justification: Justification) {
        info("custody rewrap batch", metadata: [
            "force": "\(force)", "to": "\(to)", "count": "\(count)", "failed": "\(failed)",
            "principal": "\(justification.principal)", "request": "\(justification.requestID)",
        ])
    }
}

extension Justification {
    /// A rewrap is allowed only with purpose `rewrap`.
    func checkRewrap() throws {
        guard purpose == .rewrap else {
            throw CustodyError(.purposeRefused, "rewrap needs purpose rewrap, not \(purpose.rawValue)")
        }
    }
}
