import KeyCustody
import Vault

/// Destruction certificates (DESIGN 5.8), as `vault certificates verify` and the API's clients read them. With flag
/// bit 0 a `{"certificate":...,"signature":...}` document is signed again with the fixture audit key, so the
/// fuzzer gets past the signature. A certificate that parses re-encodes to bytes that parse to the same
/// certificate with the same verdict under the key, and can be re-issued with any key states.
enum CertificateTarget {
    static func run(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let flags = input.byte()
        let states = input.bytes(4)
        var bytes = input.rest()
        let signer = Fixtures.auditSigner
        if flags & 1 == 1, let json = try? JSONParser.parse(bytes), case .object(var members) = json,
            let body = members["certificate"]
        {
            members["signature"] = .string(Base64.encode(try! signer.sign(body.canonicalBytes())))
            bytes = JSONValue.object(members).canonicalBytes()
        }
        guard let certificate = try? DestructionCertificate(bytes: bytes) else { return }
        let verified = certificate.verify(publicKey: signer.publicKey)
        if flags & 1 == 1, !verified { violated("a certificate signed with the audit key does not verify") }
        guard let again = try? DestructionCertificate(bytes: certificate.bytes), again == certificate else {
            violated("a certificate does not parse again from its own bytes")
        }
        guard again.verify(publicKey: signer.publicKey) == verified else {
            violated("re-encoding a certificate changed its verdict")
        }
        guard (certificate.verdict == .complete) == certificate.pendingKEKs.isEmpty else {
            violated("verdict \(certificate.verdict) with \(certificate.pendingKEKs.count) pending KEKs")
        }
        // Re-issue with the key states of "now", as the shredding job does when a pending KEK is destroyed.
        var keyStates: [KEKID: KeyState] = [:]
        for (index, kek) in certificate.pendingKEKs.enumerated() {
            let choice = states[index % states.count] >> (2 * (index / states.count % 4)) & 3
            if let state = [KeyState.active, .retired, .destroyed, nil][Int(choice)] { keyStates[kek] = state }
        }
        let reissued = try! certificate.reissued(keyStates: keyStates, signer: signer, now: 1_780_000_000)
        guard reissued.verify(publicKey: signer.publicKey),
            (try? DestructionCertificate(bytes: reissued.bytes)) == reissued
        else { violated("a re-issued certificate does not verify or parse") }
        let stillPending = certificate.pendingKEKs.filter { keyStates[$0] != .destroyed }
        guard reissued.pendingKEKs == stillPending, reissued.body["supersedes"]?.stringValue == certificate.id else {
            violated("a re-issued certificate misstates what is pending or what it supersedes")
        }
    }
}
