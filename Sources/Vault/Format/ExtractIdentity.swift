import KeyCustody

/// Which extract a payload or a wrapped key belongs to: force, dataset and extract id. Everything cryptographic
/// about an extract is bound to these three; the same triple is custody's wrap context (DESIGN 5.2).
public typealias ExtractIdentity = WrapContext

extension WrapContext {
    /// The Cobblestone context of DESIGN 5.1: `"vault.extract.v1" 0x00 force 0x00 dataset 0x00 extract_id`.
    public var payloadContext: [UInt8] {
        var context = Array("vault.extract.v1".utf8)
        for part in [force.rawValue, dataset.rawValue, extract.rawValue] {
            context.append(0)
            context.append(contentsOf: part.utf8)
        }
        return context
    }

    /// The wrapped-key context (the identity itself), named for readability at call sites.
    public var wrapContext: WrapContext { self }
}
