import KeyCustody
import Vault

/// Remote custody (DESIGN 6.3): the bodies a force's custody service reads from the platform and its custodians,
/// the answers the platform reads back, and the analyst's signed read request (DESIGN 5.6).
enum CustodyTargets {
    // MARK: Custody service requests and answers

    enum Body: UInt8, CaseIterable {
        case generate, unwrap, rewrap, archiveKey, retire, destroy, useCase, principalKey, approval, witness,
            clearAlarms, auditSince, signedUseCase, cosignature, documents, keysAnswer, rewrapAnswer
    }

    /// First byte: which body (each route's own reading of it, as `CustodyRoutes` and `RemoteCustody` do); bit 7 of
    /// it signs a signed use case again with the fixture custody key. The rest is the body.
    static func request(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let mode = input.byte()
        let body = Body(rawValue: (mode & 0x7F) % UInt8(Body.allCases.count))!
        let bytes = input.rest()
        switch body {
        case .auditSince:
            guard let since = try? AuditSince(parsing: String(decoding: bytes, as: UTF8.self)) else { return }
            if case .sequence(let seq) = since, seq < 0 { violated("a negative since was accepted") }
            return
        case .principalKey:
            // PUT /principals/{p}: {"public_key": PEM}; the PEM alone as well.
            let pem = (try? JSONParser.parse(bytes))?["public_key"]?.stringValue
                ?? String(decoding: bytes, as: UTF8.self)
            guard let key = try? Ed25519.PublicKey(pem: pem) else { return }
            guard (try? Ed25519.PublicKey(pem: key.pem)) == key else { violated("a public key's PEM does not parse") }
            return
        default:
            break
        }
        guard let json = try? JSONParser.parse(bytes) else { return }
        switch body {
        case .generate:
            guard let fields = fields(json, ["context", "justification"]) else { return }
            if let context = try? CustodyWire.context(fields.members["context"]) { checkContext(context) }
            if let justification = try? CustodyWire.justification(fields.members["justification"]) {
                checkJustification(justification)
            }
        case .unwrap:
            guard let fields = fields(json, ["wrapped", "context", "justification"]) else { return }
            if let wrapped = try? CustodyWire.wrappedKey(fields.members["wrapped"]) { checkWrapped(wrapped) }
            if let context = try? CustodyWire.context(fields.members["context"]) { checkContext(context) }
            if let justification = try? CustodyWire.justification(fields.members["justification"]) {
                checkJustification(justification)
            }
        case .rewrap:
            guard let fields = fields(json, ["to", "items", "justification"]),
                let items = try? fields.array("items"), items.count <= CustodyWire.maximumBatch
            else { return }
            for item in items {
                guard let itemFields = Self.fields(item, ["wrapped", "context"]) else { continue }
                if let wrapped = try? CustodyWire.wrappedKey(itemFields.members["wrapped"]) { checkWrapped(wrapped) }
                if let context = try? CustodyWire.context(itemFields.members["context"]) { checkContext(context) }
            }
            if let kek = try? CustodyWire.kek(fields.members["to"], "to") { checkKEK(kek) }
        case .archiveKey:
            if let text = try? fields(json, ["extract"])?.string("extract"), let extract = try? ExtractID(text) {
                guard (try? ExtractID(extract.rawValue)) == extract else { violated("an extract id does not parse") }
                _ = extract.millisecondsSinceEpoch
            }
        case .retire:
            if let fields = fields(json, ["kek"]), let kek = try? CustodyWire.kek(fields.members["kek"], "kek") {
                checkKEK(kek)
            }
        case .destroy:
            if let keks = try? fields(json, ["keks"])?.array("keks") {
                for kek in keks { if let kek = try? CustodyWire.kek(kek, "keks") { checkKEK(kek) } }
            }
        case .useCase:
            // PUT /use-cases/{id}: the body a custodian sends.
            guard let request = try? UseCaseRequest(json: json) else { return }
            guard (try? UseCaseRequest(json: request.json)) == request else {
                violated("a use case request does not parse again from its own JSON")
            }
            let useCase = request.useCase(force: Fixtures.force, id: try! ResourceID("serious-violence"))
            if (try? useCase.validate()) != nil {
                let signed = try! SignedUseCase(useCase: useCase, version: 1, signer: Fixtures.witnessSigner)
                checkSignedUseCase(signed)
            }
        case .approval:
            if let fields = fields(json, ["extract", "analyst", "use_case"]) {
                _ = try? ExtractID(try fields.string("extract"))
                _ = (try? fields.string("analyst")).map(Principal.isValidID)
            }
        case .witness:
            guard let submission = try? WitnessSubmission(json: json) else { return }
            guard submission.oldSize >= 0, submission.records.count <= CustodyWire.maximumBatch else {
                violated("a witness submission outside its bounds was accepted")
            }
            guard let again = try? WitnessSubmission(json: submission.json), again.oldSize == submission.oldSize,
                again.checkpoint == submission.checkpoint, again.records == submission.records
            else { violated("a witness submission does not parse again from its own JSON") }
            for line in submission.records {
                guard let record = try? AuditRecord(line: line) else { continue }
                guard record.line == line, (try? AuditRecord(line: record.line)) == record else {
                    violated("an audit record does not parse again from its own line")
                }
                _ = record.requestID
            }
        case .clearAlarms:
            _ = try? fields(json, ["reason"])?.string("reason")
        case .signedUseCase:
            var document = json
            if mode & 0x80 != 0, let inner = json["document"] {
                document = .object(["document": inner, "signature": .string(
                    Base64.encode(try! Fixtures.witnessSigner.sign(inner.canonicalBytes())))])
            }
            let key = Fixtures.witnessSigner.publicKey
            guard let signed = try? SignedUseCase(json: document, verifyingWith: key) else { return }
            checkSignedUseCase(signed)
        case .cosignature:
            guard let cosignature = try? Cosignature(json: json) else { return }
            guard (try? Cosignature(json: cosignature.json)) == cosignature else {
                violated("a cosignature does not parse again from its own JSON")
            }
            _ = cosignature.isValid(key: Fixtures.witnessSigner.publicKey)
        case .documents:
            if let document = try? PrincipalKeyDocument(json: json),
                (try? PrincipalKeyDocument(json: document.json)) != document
            { violated("a principal key document does not round-trip") }
            if let document = try? WitnessAlarmDocument(json: json),
                (try? WitnessAlarmDocument(json: document.json)) != document
            { violated("a witness alarm document does not round-trip") }
            if let document = try? ApprovalCountDocument(json: json),
                (try? ApprovalCountDocument(json: document.json)) != document
            { violated("an approval count document does not round-trip") }
            if let document = try? ClearedAlarmsDocument(json: json),
                (try? ClearedAlarmsDocument(json: document.json)) != document
            { violated("a cleared alarms document does not round-trip") }
        case .keysAnswer:
            // GET /keys, as RemoteCustody.status reads it.
            guard let keys = json["keys"]?.arrayValue, let infos = try? keys.map(CustodyWire.keyInfo) else { return }
            for info in infos {
                guard (try? CustodyWire.keyInfo(CustodyWire.json(info))) == info else {
                    violated("a key info does not parse again from its own JSON")
                }
            }
            _ = infos.activeMaster
            _ = try? KeyTable(force: Fixtures.force, entries: infos) { CustodyError(.keyringInconsistent, $0) }
        case .rewrapAnswer:
            guard let results = json["results"]?.arrayValue else { return }
            for result in results {
                if let wrapped = result["wrapped"] {
                    if let key = try? CustodyWire.wrappedKey(wrapped) { checkWrapped(key) }
                } else {
                    let code = result["error"]?["code"]?.stringValue ?? "custody_refused"
                    _ = CustodyError.Code(rawValue: code)
                }
            }
        case .auditSince, .principalKey:
            break
        }
    }

    /// A route's strict reading: an object with only the members it knows.
    static func fields(_ json: JSONValue, _ known: Set<String>) -> JSONFields? {
        guard let fields = try? JSONFields(json, context: "body"),
            fields.members.keys.allSatisfy(known.contains)
        else { return nil }
        return fields
    }

    static func checkContext(_ context: WrapContext) {
        guard (try? CustodyWire.context(CustodyWire.json(context))) == context else {
            violated("a wrap context does not parse again from its own JSON")
        }
    }

    static func checkWrapped(_ wrapped: WrappedKey) {
        guard (try? CustodyWire.wrappedKey(wrapped.json)) == wrapped else {
            violated("a wrapped key does not parse again from its own JSON")
        }
    }

    static func checkKEK(_ kek: KEKID) {
        guard (try? CustodyWire.kek(.string(kek.description), "kek")) == kek else {
            violated("a KEK id does not parse again")
        }
    }

    static func checkJustification(_ justification: Justification) {
        guard let again = try? CustodyWire.justification(CustodyWire.json(justification)),
            again.description == justification.description, again.signedRequest == justification.signedRequest
        else { violated("a justification does not parse again from its own JSON") }
        if let signed = justification.signedRequest { checkSigned(signed) }
    }

    static func checkSignedUseCase(_ signed: SignedUseCase) {
        guard (try? SignedUseCase(json: signed.json, verifyingWith: Fixtures.witnessSigner.publicKey)) == signed else {
            violated("a signed use case does not parse again from its own JSON")
        }
        _ = signed.useCase.json
    }

    // MARK: Signed read requests

    /// First byte: 0 reads an envelope's bytes, 1 an `X-Vault-Read-Request` header value, 2 a principal key file;
    /// bit 7 signs the request line again with the fixture principal key.
    static func readRequest(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let mode = input.byte()
        let bytes = input.rest()
        switch mode & 3 {
        case 0, 3:
            var envelope = bytes
            if mode & 0x80 != 0, let json = try? JSONParser.parse(bytes), let request = json["request"] {
                envelope = JSONValue.object([
                    "request": request,
                    "signature": .string(Base64.encode(Fixtures.principalKey.signature(for: request.canonicalBytes()))),
                ]).canonicalBytes()
            }
            guard let signed = try? SignedReadRequest(bytes: envelope) else { return }
            if mode & 0x80 != 0, !signed.isSigned(by: Fixtures.principalKey.publicKey) {
                violated("a request signed with the principal's key does not verify")
            }
            checkSigned(signed)
        case 1:
            let header = String(decoding: bytes, as: UTF8.self)
            guard let signed = try? SignedReadRequest(headerValue: header) else { return }
            checkSigned(signed)
        default:
            let document = bytes.withUnsafeBytes { SecureBytes(copying: $0) }
            guard let key = try? PrincipalSigningKey(document: document) else { return }
            guard let again = try? PrincipalSigningKey(document: key.document),
                again.principal == key.principal, again.key.publicKey == key.key.publicKey
            else { violated("a principal key file does not parse again from its own bytes") }
        }
    }

    /// The custody service verifies the signature over `line` and then acts on `request`: the two must say the same.
    static func checkSigned(_ signed: SignedReadRequest) {
        guard signed.request.json.canonicalBytes() == signed.line else {
            violated("a read request's fields re-encode to another line than the one signed: "
                        + String(decoding: signed.line.prefix(300), as: UTF8.self))
        }
        guard signed.line.count <= SignedReadRequest.maximumSize else { violated("an oversized request was accepted") }
        guard (try? SignedReadRequest(bytes: signed.envelope.canonicalBytes())) == signed,
            (try? SignedReadRequest(headerValue: signed.headerValue)) == signed
        else { violated("a signed read request does not parse again from its envelope or header value") }
        _ = signed.hash
        _ = signed.request.expires - signed.request.issued
    }
}
