import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

func encrypt(_ message: [UInt8], key: SecureBytes, context: [UInt8], split: Int = 1 << 20) throws -> [UInt8] {
    let encryptor = try CobblestoneEncryptor(key: key, context: context)
    var output = [UInt8]()
    var offset = 0
    while offset < message.count {
        let end = min(offset + split, message.count)
        try message[offset..<end].withUnsafeBytes { try encryptor.update($0) { output.append(contentsOf: $0) } }
        offset = end
    }
    try encryptor.finish { output.append(contentsOf: $0) }
    return output
}

@Suite("Cobblestone-256 round trips and tampering")
struct CobblestoneTests {
    static let sizes = [0, 1, 100, 16383, 16384, 16385, 32767, 32768, 32769, 100_000]
    let key = SecureBytes.random(count: 32)
    let context = Array("vault.extract.v1\u{0}wmp\u{0}crime\u{0}01JD0000000000000000000000".utf8)

    @Test("every size round-trips through streaming and random access, for uneven input splits", arguments: sizes)
    func roundTrip(size: Int) throws {
        let message = testBytes(count: size, seed: UInt64(size) + 1)
        for split in [1000, 16384, 16385, 1 << 20] {
            let ciphertext = try encrypt(message, key: key, context: context, split: split)
            #expect(UInt64(ciphertext.count) == Cobblestone.ciphertextSize(plaintextSize: UInt64(size)))
            #expect(try Cobblestone.plaintextSize(ciphertextSize: UInt64(ciphertext.count)) == UInt64(size))
            for readSplit in [1, 16400, 50_000] where size < 40_000 || readSplit > 1 {
                let (plaintext, error) = streamDecrypt(ciphertext, key: key, context: context, split: readSplit)
                #expect(error == nil)
                #expect(plaintext == message)
            }
            var viaReader = [UInt8]()
            try CobblestoneReader(key: key, context: context, source: MemoryCiphertext(bytes: ciphertext))
                .readAll { viaReader.append(contentsOf: $0) }
            #expect(viaReader == message)
        }
    }

    @Test("random access returns exactly the requested bytes for ranges inside, across and at the ends of chunks")
    func ranges() throws {
        let message = testBytes(count: 70_000)
        let ciphertext = try encrypt(message, key: key, context: context)
        let reader = try CobblestoneReader(key: key, context: context, source: MemoryCiphertext(bytes: ciphertext))
        #expect(reader.plaintextSize == 70_000)
        let ranges: [Range<UInt64>] = [0..<0, 0..<1, 16383..<16385, 16384..<32768, 5..<69_999, 69_999..<70_000,
                                       65_536..<70_000, 70_000..<70_000, 0..<70_000]
        for range in ranges {
            var part = [UInt8]()
            try reader.read(range) { part.append(contentsOf: $0) }
            #expect(part == Array(message[Int(range.lowerBound)..<Int(range.upperBound)]), "\(range)")
        }
        #expect(throws: VaultError(.invalidParameter, "")) { try reader.read(0..<70_001) { _ in } }
    }

    @Test("a flipped bit anywhere is detected: header by the commitment, chunks by their tags")
    func tampering() throws {
        let message = testBytes(count: 40_000)
        let ciphertext = try encrypt(message, key: key, context: context)
        for position in [0, 23, 24, 55, 56, 100, 16_455, 16_456, 30_000, ciphertext.count - 17, ciphertext.count - 1] {
            var tampered = ciphertext
            tampered[position] ^= 0x01
            let (output, error) = streamDecrypt(tampered, key: key, context: context, split: 4096)
            let code = (error as? VaultError)?.code
            #expect(code == (position < 56 ? .keyCommitmentMismatch : .integrityFailure), "position \(position)")
            // Only chunks before the damaged one may have been released.
            let damagedChunk = position < 56 ? -1 : (position - 56) / Cobblestone.encryptedChunkByteCount
            #expect(output.count <= max(0, damagedChunk) * Cobblestone.chunkByteCount)
            #expect(output == Array(message.prefix(output.count)))
        }
    }

    @Test("truncation at any point and extension are detected")
    func truncationAndExtension() throws {
        let message = testBytes(count: 40_000)
        let ciphertext = try encrypt(message, key: key, context: context)
        for cut in [0, 10, 56, 57, 71, 72, 16_456, 16_457, 32_856, ciphertext.count - 1] {
            let (_, error) = streamDecrypt(Array(ciphertext.prefix(cut)), key: key, context: context, split: 5000)
            #expect(error != nil, "cut at \(cut)")
            #expect(throws: (any Error).self) {
                let reader = try CobblestoneReader(key: key, context: context,
                                                   source: MemoryCiphertext(bytes: Array(ciphertext.prefix(cut))))
                try reader.readAll { _ in }
            }
        }
        for extra in [[UInt8](repeating: 0, count: 1), [UInt8](repeating: 0, count: 16), Array(ciphertext[56..<16_456])] {
            let (_, error) = streamDecrypt(ciphertext + extra, key: key, context: context, split: 5000)
            #expect(error != nil)
        }
    }

    @Test("a ciphertext does not decrypt under another context or key")
    func bindings() throws {
        let ciphertext = try encrypt(Array("secret rows".utf8), key: key, context: context)
        let other = Array("vault.extract.v1\u{0}gmp\u{0}crime\u{0}01JD0000000000000000000000".utf8)
        let (_, error) = streamDecrypt(ciphertext, key: key, context: other, split: 100)
        #expect((error as? VaultError)?.code == .keyCommitmentMismatch)
        let (_, error2) = streamDecrypt(ciphertext, key: SecureBytes.random(count: 32), context: context, split: 100)
        #expect((error2 as? VaultError)?.code == .keyCommitmentMismatch)
    }

    @Test("reordering two full chunks is detected")
    func reordering() throws {
        let message = testBytes(count: 40_000)
        var ciphertext = try encrypt(message, key: key, context: context)
        let size = Cobblestone.encryptedChunkByteCount
        let first = Array(ciphertext[56..<56 + size])
        let second = Array(ciphertext[56 + size..<56 + 2 * size])
        ciphertext.replaceSubrange(56..<56 + size, with: second)
        ciphertext.replaceSubrange(56 + size..<56 + 2 * size, with: first)
        let (output, error) = streamDecrypt(ciphertext, key: key, context: context, split: 100_000)
        #expect((error as? VaultError)?.code == .integrityFailure)
        #expect(output.isEmpty)
    }

    @Test("a message of whole chunks finishes into an empty buffer")
    func emptyFinalChunk() throws {
        let message = testBytes(count: 2 * Cobblestone.chunkByteCount)
        let ciphertext = try encrypt(message, key: key, context: context)
        let decryptor = try CobblestoneDecryptor(key: key, context: context)
        var output = [UInt8](repeating: 0, count: message.count)
        let produced = try ciphertext.withUnsafeBytes { c in
            try output.withUnsafeMutableBytes { try decryptor.update(c, into: $0) }
        }
        #expect(produced == message.count)
        #expect(decryptor.finishOutputSize == 0)
        #expect(try decryptor.finish(into: UnsafeMutableRawBufferPointer(start: nil, count: 0)) == 0)
        #expect(output == message)
    }

    @Test("impossible ciphertext lengths are named as truncation")
    func lengths() throws {
        for size: UInt64 in [0, 55, 56, 71, 56 + 16_400, 56 + 16_400 + 15] {
            #expect(throws: VaultError(.truncated, "")) { try Cobblestone.plaintextSize(ciphertextSize: size) }
        }
        #expect(try Cobblestone.plaintextSize(ciphertextSize: 72) == 0)
        #expect(try Cobblestone.plaintextSize(ciphertextSize: 56 + 16_400 + 16) == 16_384)
    }
}
