import Logging

/// What a preflight of one force's custody found.
public struct CustodyCheckResult: Sendable {
    public let force: ForceID
    /// The active master key and the other keys, when the custody opened.
    public let keys: [KeyInfo]
    /// Why the custody did not open, if it did not.
    public let error: CustodyError?

    public var ok: Bool { error == nil }
    public var activeMasterKey: KeyInfo? { keys.first { $0.kind == .master && $0.state == .active } }
}

extension CustodyConfiguration {
    /// Opens every force's custody read-only with its configured secret source and lists its keys: the check an
    /// operator runs before starting vaultd (all passphrases present, every keyring readable and consistent).
    public func check(logger: Logger, remote: ((ForceID, RemoteLocation) throws -> any KeyCustodian)? = nil) async
        -> [CustodyCheckResult]
    {
        var results: [CustodyCheckResult] = []
        for force in forces {
            do {
                let custody = try open(force.id, mode: .readOnly, logger: logger, remote: remote)
                results.append(CustodyCheckResult(force: force.id, keys: try await custody.status(), error: nil))
            } catch let error as CustodyError {
                results.append(CustodyCheckResult(force: force.id, keys: [], error: error))
            } catch {
                results.append(CustodyCheckResult(force: force.id, keys: [],
                                                  error: CustodyError(.io, String(describing: error))))
            }
        }
        return results
    }
}
