@_spi(Fuzzing) import KeyCustody
import Vault

/// The keyring file (DESIGN 5.3) in its two layers, without Argon2id: the KDF is the one step a fuzzer must not run
/// with a file's limits (up to 4 GiB and 64 passes by design), and it has no parser in it.
enum KeyringTargets {
    static let path = "fuzz.keyring"

    /// The outer document: one that parses re-encodes to canonical bytes that parse to the same bytes, and its
    /// sealed part is refused (never crashes) under a key that did not seal it.
    static func document(_ data: [UInt8]) {
        guard let document = try? KeyringDocument(bytes: data, path: path) else { return }
        let bytes = document.bytes
        guard let again = try? KeyringDocument(bytes: bytes, path: path) else {
            violated("a keyring's own bytes do not parse: \(String(decoding: bytes.prefix(300), as: UTF8.self))")
        }
        guard again.bytes == bytes else { violated("a keyring's bytes change when parsed and written again") }
        if (try? document.open(sealingKey: Fixtures.sealingKey, path: path)) != nil {
            violated("a keyring opened under a sealing key that did not seal it")
        }
    }

    /// The decrypted key list: the input (after a flags byte) is sealed under a fixed key for force `wmp` and opened
    /// as a keyring is. A list that opens satisfies DESIGN 5.3 (key bytes exactly for keys not destroyed, at most one
    /// active master key), survives re-sealing unchanged, and then takes a few key-table changes chosen by the flags
    /// (rotation, archive keys, retirement, destruction) without trapping.
    static func contents(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let flags = input.byte()
        let operations = input.bytes(4)
        let plaintext = input.rest()
        let force = Fixtures.force
        let nonce = [UInt8](repeating: flags, count: XChaCha20Poly1305.nonceByteCount)
        let aad = Array("vault-keyring-v1:\(force)".utf8)
        let ciphertext = try! plaintext.withUnsafeBytes {
            try XChaCha20Poly1305.seal(key: Fixtures.sealingKey, nonce: nonce, plaintext: $0, aad: aad)
        }
        let salt = [UInt8](repeating: 7, count: Argon2id.saltByteCount)
        let document = KeyringDocument(force: force, salt: salt, parameters: .interactive, sealed: nonce + ciphertext)
        let handedOver = flags & 1 == 1
        guard let (table, keys) = try? document.open(sealingKey: Fixtures.sealingKey, path: path,
                                                     allowHandedOver: handedOver)
        else { return }
        var living = 0
        for entry in table.entries {
            guard entry.id.force == force else { violated("\(entry.id) of another force was accepted") }
            if entry.state == .destroyed {
                guard keys[entry.id] == nil else { violated("destroyed \(entry.id) kept key bytes") }
            } else {
                guard keys[entry.id]?.count == 32 else { violated("\(entry.id) has no 32-byte key") }
                living += 1
            }
        }
        guard keys.count == living else { violated("key bytes for keys the table does not list") }
        let activeMasters = table.entries.filter { $0.kind == .master && $0.state == .active }.count
        guard activeMasters == 1 || (handedOver && activeMasters == 0) else {
            violated("\(activeMasters) active master keys were accepted")
        }
        // Re-sealing what was read opens to the same table and keys, and its outer document parses.
        let resealed: KeyringDocument
        do {
            resealed = try KeyringDocument.seal(table: table, keys: keys, salt: salt, parameters: .interactive,
                                                sealingKey: Fixtures.sealingKey)
        } catch { violated("a keyring that opened cannot be sealed again: \(error)") }
        guard let (table2, keys2) = try? resealed.open(sealingKey: Fixtures.sealingKey, path: path,
                                                        allowHandedOver: handedOver),
            table2 == table, keys2 == keys
        else { violated("a keyring changes when sealed again") }
        guard (try? KeyringDocument(bytes: resealed.bytes, path: path))?.bytes == resealed.bytes else {
            violated("a re-sealed keyring's outer document does not parse")
        }
        // What a custodian may do next with this table.
        var changed = table
        let created = "2026-06-01T00:00:00Z"
        for operation in operations {
            let known = changed.entries.map(\.id)
            let pick = known.isEmpty ? nil : known[Int(operation >> 2) % known.count]
            switch operation & 3 {
            case 0: _ = try? changed.rotate(to: changed.nextMaster(above: Int(operation >> 2)), created: created)
            case 1:
                let extract = ExtractID.generate(millisecondsSinceEpoch: UInt64(operation) << 20)
                _ = try? changed.addArchiveKey(.archive(force: force, extract: extract), created: created)
            case 2: if let pick { _ = try? changed.retire(pick) }
            default: if let pick { _ = try? changed.destroy([pick]) }
            }
        }
        let stillActive = changed.entries.filter { $0.kind == .master && $0.state == .active }.count
        guard stillActive <= 1 else { violated("key-table changes left \(stillActive) active master keys") }
    }
}
