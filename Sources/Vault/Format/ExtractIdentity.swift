import KeyCustody

/// Which extract a payload or a wrapped key belongs to: force, dataset and extract id. Everything cryptographic
/// about an extract is bound to these three.
public struct ExtractIdentity: Hashable, Sendable, CustomStringConvertible {
    public let force: ForceID
    public let dataset: DatasetID
    public let extract: ExtractID

    public init(force: ForceID, dataset: DatasetID, extract: ExtractID) {
        self.force = force
        self.dataset = dataset
        self.extract = extract
    }

    /// The Cobblestone context of DESIGN 5.1: `"vault.extract.v1" 0x00 force 0x00 dataset 0x00 extract_id`.
    public var payloadContext: [UInt8] {
        var context = Array("vault.extract.v1".utf8)
        for part in [force.rawValue, dataset.rawValue, extract.rawValue] {
            context.append(0)
            context.append(contentsOf: part.utf8)
        }
        return context
    }

    /// The wrapped-key context of DESIGN 5.2.
    public var wrapContext: WrapContext { WrapContext(force: force, dataset: dataset, extract: extract) }

    public var description: String { "\(force)/\(dataset)/\(extract)" }
}
