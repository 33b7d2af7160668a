/// The keyring file of DESIGN 5.3: an outer JSON document with the KDF parameters and an XChaCha20-Poly1305
/// sealed inner document listing the keys.
///
/// ```
/// {"format":"vault-keyring-v1","force":"wmp",
///  "kdf":{"alg":"argon2id13","salt":"<b64 16>","opslimit":3,"memlimit":268435456},
///  "sealed":"<b64 of 24-byte nonce || ciphertext>"}
/// ```
/// `@_spi(Fuzzing)`: the fuzz targets (`Fuzz/VaultFuzz`) parse and seal documents directly, without the KDF.
@_spi(Fuzzing) public struct KeyringDocument: Sendable {
    static let format = "vault-keyring-v1"
    static let kdfAlgorithm = "argon2id13"
    /// A keyring with a hundred thousand archive keys is about 20 MB; anything far beyond is not a keyring.
    static let maximumFileSize = 256 << 20

    let force: ForceID
    let salt: [UInt8]
    let parameters: Argon2id.Parameters
    let sealed: [UInt8]

    static func additionalData(force: ForceID) -> [UInt8] { Array("\(format):\(force)".utf8) }

    /// Parses the outer document; nothing is decrypted yet.
    @_spi(Fuzzing) public init(bytes: [UInt8], path: String) throws {
        let malformed = { (reason: String) in
            CustodyError(.keyringMalformed, "\(path) is not a usable keyring: \(reason)")
        }
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch let error as CustodyError {
            throw malformed(bytes.isEmpty ? "the file is empty" : "truncated or not JSON (\(error.message))")
        }
        do {
            let fields = try JSONFields(json, context: "keyring")
            let format = try fields.string("format")
            guard format == Self.format else { throw malformed("format is \"\(format)\", expected \"\(Self.format)\"") }
            force = try ForceID(force: try fields.string("force"))
            let kdf = try fields.object("kdf")
            let alg = try kdf.string("alg")
            guard alg == Self.kdfAlgorithm else { throw malformed("kdf alg \"\(alg)\" is not \(Self.kdfAlgorithm)") }
            salt = try kdf.base64("salt")
            guard salt.count == Argon2id.saltByteCount else { throw malformed("kdf salt must be 16 bytes") }
            let opslimit = try kdf.integer("opslimit")
            let memlimit = try kdf.integer("memlimit")
            guard opslimit > 0, memlimit > 0 else { throw malformed("kdf limits must be positive") }
            parameters = Argon2id.Parameters(opslimit: UInt64(opslimit), memlimit: UInt64(memlimit))
            do { try parameters.validate() } catch let error as CustodyError { throw malformed(error.message) }
            sealed = try fields.base64("sealed")
            guard sealed.count >= XChaCha20Poly1305.nonceByteCount + XChaCha20Poly1305.tagByteCount else {
                throw malformed("sealed data is too short")
            }
        } catch let error as CustodyError where error.code != .keyringMalformed {
            throw malformed(error.message)
        }
    }

    @_spi(Fuzzing) public init(force: ForceID, salt: [UInt8], parameters: Argon2id.Parameters, sealed: [UInt8]) {
        self.force = force
        self.salt = salt
        self.parameters = parameters
        self.sealed = sealed
    }

    @_spi(Fuzzing) public var bytes: [UInt8] {
        // Canonical member order is force, format, kdf, sealed: the megabytes of `sealed` go last, straight from
        // their base64 into the output (the same bytes as the whole document as a `JSONValue`; a test holds them
        // equal).
        let kdf = JSONValue.object([
            "alg": .string(Self.kdfAlgorithm), "salt": .string(Base64.encode(salt)),
            "opslimit": .integer(Int64(parameters.opslimit)), "memlimit": .integer(Int64(parameters.memlimit)),
        ])
        var sink = ByteArraySink()
        sink.bytes.reserveCapacity(Base64.encodedLength(sealed.count) + 512)
        sink.append("{\"force\":")
        JSONValue.writeString(force.rawValue, to: &sink)
        sink.append(",\"format\":")
        JSONValue.writeString(Self.format, to: &sink)
        sink.append(",\"kdf\":")
        kdf.writeCanonical(to: &sink)
        sink.append(",\"sealed\":\"")
        var text = Base64.encode(sealed)
        text.withUTF8 { sink.append(UnsafeRawBufferPointer($0)) }
        sink.append("\"}\n")
        return sink.bytes
    }

    /// Seals the table's keys, each with its bytes from `keys` (none for a destroyed key), under `sealingKey` with a
    /// fresh nonce.
    @_spi(Fuzzing) public static func seal(
        table: KeyTable, keys: [KEKID: SecureBytes], salt: [UInt8], parameters: Argon2id.Parameters,
        sealingKey: SecureBytes
    ) throws -> KeyringDocument {
        // Each entry's id and key looked up once for both passes (counting, then writing).
        let list = table.entries.map { (entry: $0, id: $0.id.description, key: keys[$0.id]) }
        var counter = CountingSink()
        writeKeyList(list, to: &counter)
        let plaintext = SecureBytes(count: counter.count) { buffer in
            var sink = BufferSink(buffer: buffer)
            writeKeyList(list, to: &sink)
        }
        let nonce = SecureRandom.bytes(count: XChaCha20Poly1305.nonceByteCount)
        let ciphertext = try plaintext.withUnsafeBytes {
            try XChaCha20Poly1305.seal(key: sealingKey, nonce: nonce, plaintext: $0,
                                       aad: additionalData(force: table.force))
        }
        return KeyringDocument(force: table.force, salt: salt, parameters: parameters, sealed: nonce + ciphertext)
    }

    /// The sealed plaintext, `{"keys":[...]}` in canonical JSON, written straight from the table: each entry's members
    /// in canonical order (`created`, `id`, `key`, `kind`, `state`), a key's bytes as base64 straight into the sink.
    /// The same bytes as building the document as a `JSONValue` and writing that (a test holds the two equal), without
    /// a dictionary and a sort per key: a keyring of 10,000 archive keys is rewritten at every shredding batch.
    static func writeKeyList<Sink: JSONSink>(_ list: [(entry: KeyTable.Entry, id: String, key: SecureBytes?)],
                                             to sink: inout Sink)
    {
        sink.append("{\"keys\":[")
        for (index, item) in list.enumerated() {
            if index > 0 { sink.append(UInt8(ascii: ",")) }
            sink.append("{\"created\":")
            JSONValue.writeString(item.entry.created, to: &sink)
            sink.append(",\"id\":")
            JSONValue.writeString(item.id, to: &sink)
            if let key = item.key {
                sink.append(",\"key\":\"")
                sink.appendBase64(secret: key)
                sink.append(UInt8(ascii: "\""))
            }
            sink.append(",\"kind\":")
            JSONValue.writeString(item.entry.kind.rawValue, to: &sink)
            sink.append(",\"state\":")
            JSONValue.writeString(item.entry.state.rawValue, to: &sink)
            sink.append(UInt8(ascii: "}"))
        }
        sink.append("]}")
    }

    /// Decrypts and parses the key list, checking every invariant of DESIGN 5.3 (those of `KeyTable`, and key bytes
    /// exactly for the keys not destroyed).
    /// `allowHandedOver` accepts a keyring without an active master key: one whose force moved to a PKCS#11 token.
    @_spi(Fuzzing) public func open(sealingKey: SecureBytes, path: String, allowHandedOver: Bool = false) throws
        -> (table: KeyTable, keys: [KEKID: SecureBytes])
    {
        let nonce = Array(sealed.prefix(XChaCha20Poly1305.nonceByteCount))
        let ciphertext = Array(sealed.dropFirst(XChaCha20Poly1305.nonceByteCount))
        let plaintext: SecureBytes
        do {
            plaintext = try XChaCha20Poly1305.open(key: sealingKey, nonce: nonce, sealed: ciphertext,
                                                   aad: Self.additionalData(force: force))
        } catch {
            throw CustodyError(.wrongPassphrase,
                               "wrong passphrase for the keyring of force \(force) at \(path) "
                                   + "(or its sealed contents were altered)")
        }
        let inconsistent = { (reason: String) in
            CustodyError(.keyringInconsistent, "keyring \(path) opened but is inconsistent: \(reason)")
        }
        let json: JSONValue
        do {
            json = try plaintext.withUnsafeBytes { try JSONParser.parse($0, secretMembers: ["key"]) }
        } catch let error as CustodyError {
            throw inconsistent(error.message)
        }
        var entries: [KeyTable.Entry] = []
        var keys: [KEKID: SecureBytes] = [:]
        do {
            for item in try JSONFields(json, context: "keyring contents").array("keys") {
                let fields = try JSONFields(item, context: "keyring entry")
                let id = try KEKID(try fields.string("id"))
                guard let kind = KeyKind(rawValue: try fields.string("kind")) else {
                    throw inconsistent("\(id) has a wrong kind")
                }
                guard let state = KeyState(rawValue: try fields.string("state")) else {
                    throw inconsistent("\(id) has an unknown state")
                }
                if state == .destroyed {
                    guard fields.members["key"] == nil else { throw inconsistent("destroyed \(id) still has key bytes") }
                } else {
                    let key = try fields.secret("key")
                    guard key.count == 32 else { throw inconsistent("\(id) key is not 32 bytes") }
                    keys[id] = key
                }
                entries.append(KeyTable.Entry(id: id, kind: kind, state: state, created: try fields.string("created")))
            }
        } catch let error as CustodyError where error.code != .keyringInconsistent {
            throw inconsistent(error.message)
        }
        let table = try KeyTable(force: force, entries: entries, inconsistent: inconsistent)
        guard table.activeMaster != nil || allowHandedOver else {
            throw inconsistent("0 active master keys, expected exactly one (if force \(force) moved to a PKCS#11 "
                                + "token, open it through its pkcs11 custody, which names this keyring as its earlier "
                                + "keyring)")
        }
        return (table, keys)
    }
}
