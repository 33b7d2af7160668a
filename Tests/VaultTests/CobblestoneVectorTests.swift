import CZlib
import Foundation
import KeyCustody
import Testing
import VaultTestSupport

@testable import Vault

struct ChunkedVectorFile: Decodable {
    struct Group: Decodable { let tests: [Vector] }
    let numberOfTests: Int
    let testGroups: [Group]
}

struct Vector: Decodable, Sendable, CustomTestStringConvertible {
    let tcId: Int
    let comment: String
    let key: String
    let ctx: String
    let ct: String
    let aeadKey: String?
    let baseNonce: String?
    let msgLength: Int?
    let msgSha512: String?
    let result: String
    let flags: [String]

    var testDescription: String { "tcId \(tcId): \(comment)" }
    var isValid: Bool { result == "valid" }
    func has(_ flag: String) -> Bool { flags.contains(flag) }
}

/// zlib-inflates a vector's `ct` (the C2SP vectors store ciphertexts compressed).
func inflate(_ compressed: [UInt8]) -> [UInt8] {
    var stream = z_stream()
    precondition(inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK)
    defer { inflateEnd(&stream) }
    var output = [UInt8]()
    var input = compressed
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    input.withUnsafeMutableBufferPointer { inputPointer in
        stream.next_in = inputPointer.baseAddress
        stream.avail_in = uInt(inputPointer.count)
        var status: Int32 = Z_OK
        repeat {
            status = buffer.withUnsafeMutableBufferPointer { out in
                stream.next_out = out.baseAddress
                stream.avail_out = uInt(out.count)
                return CZlib.inflate(&stream, Z_NO_FLUSH)
            }
            output.append(contentsOf: buffer[0..<(buffer.count - Int(stream.avail_out))])
        } while status == Z_OK
        precondition(status == Z_STREAM_END, "bad zlib data in vector")
    }
    return output
}

/// Ciphertext held in memory, for random-access tests.
struct MemoryCiphertext: RandomAccessCiphertext {
    let bytes: [UInt8]
    var size: UInt64 { UInt64(bytes.count) }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset + UInt64(buffer.count) <= size else { throw VaultError(.truncated, "read past end") }
        bytes.withUnsafeBytes {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count]))
        }
    }
}

func secureKey(_ hex: String) -> SecureBytes {
    var bytes = hexBytes(hex)
    return SecureBytes(consuming: &bytes)
}

/// Streams `ciphertext` through a decryptor in pieces of `split` bytes; returns the released plaintext and the error.
func streamDecrypt(_ ciphertext: [UInt8], key: SecureBytes, context: [UInt8], split: Int) -> ([UInt8], (any Error)?) {
    var output = [UInt8]()
    do {
        let decryptor = try CobblestoneDecryptor(key: key, context: context)
        var offset = 0
        do {
            while offset < ciphertext.count {
                let end = min(offset + split, ciphertext.count)
                try ciphertext[offset..<end].withUnsafeBytes { piece in
                    try decryptor.update(piece) { output.append(contentsOf: $0) }
                }
                offset = end
            }
            try decryptor.finish { output.append(contentsOf: $0) }
            return (output, nil)
        } catch {
            // It must keep failing: more input and another finish both error, and release nothing.
            let before = output.count
            #expect(throws: (any Error).self) { try [UInt8](repeating: 0, count: 20000).withUnsafeBytes { try decryptor.update($0) { output.append(contentsOf: $0) } } }
            #expect(throws: (any Error).self) { try decryptor.finish { output.append(contentsOf: $0) } }
            #expect(output.count == before, "bytes released after an error")
            return (output, error)
        }
    } catch {
        return (output, error)
    }
}

@Suite("Cobblestone-256 C2SP vectors")
struct CobblestoneVectorTests {
    static let vectors: [Vector] = {
        (try? TestVectors.load(ChunkedVectorFile.self, "wycheproof/c2sp_chunked_encryption_aes_256_gcm_test.json"))??
            .testGroups.flatMap(\.tests) ?? []
    }()

    @Test("the vector file is found and holds 35 vectors")
    func vectorFilePresent() throws {
        guard let file = try TestVectors.load(ChunkedVectorFile.self,
                                              "wycheproof/c2sp_chunked_encryption_aes_256_gcm_test.json")
        else { return }
        let count = file.testGroups.flatMap(\.tests).count
        #expect(count == 35)
        #expect(count == file.numberOfTests)
        print("c2sp chunked-encryption (Cobblestone-256): \(count) vectors run through streaming (5 split sizes), "
            + "random access, length authentication and re-encryption")
    }

    @Test("streaming decryption", arguments: vectors)
    func streaming(vector: Vector) throws {
        let ciphertext = inflate(hexBytes(vector.ct))
        let context = hexBytes(vector.ctx)
        let key = secureKey(vector.key)
        if vector.has("InvalidKeySize") {
            #expect(throws: VaultError(.invalidParameter, "")) { try CobblestoneDecryptor(key: key, context: context) }
            #expect(throws: VaultError(.invalidParameter, "")) { try CobblestoneEncryptor(key: key, context: context) }
            return
        }
        var splits = [ciphertext.count + 1, 7, 16400, 16401, 65536]
        if ciphertext.count < 70000 { splits.append(1) }
        for split in splits {
            let (output, error) = streamDecrypt(ciphertext, key: key, context: context, split: split)
            if vector.isValid {
                #expect(error == nil, "split \(split): \(String(describing: error))")
                #expect(output.count == vector.msgLength)
                #expect(Hex.encode(Digest.hash(.sha512, output)) == vector.msgSha512)
            } else {
                #expect(error != nil, "split \(split): invalid vector decrypted")
                // PartialPlaintext: never a byte beyond the valid prefix; without the flag there is no valid prefix.
                let prefix = vector.has("PartialPlaintext") ? (vector.msgLength ?? 0) : 0
                #expect(output.count <= prefix, "split \(split): \(output.count) bytes released, prefix \(prefix)")
                if output.count == prefix, let hash = vector.msgSha512, vector.has("PartialPlaintext") {
                    #expect(Hex.encode(Digest.hash(.sha512, output)) == hash)
                }
                if vector.has("HeaderFailure") || vector.has("WrongKey") || vector.has("WrongContext") {
                    #expect(output.isEmpty)
                }
            }
        }
    }

    @Test("random-access decryption and length authentication", arguments: vectors)
    func randomAccess(vector: Vector) throws {
        let ciphertext = inflate(hexBytes(vector.ct))
        let context = hexBytes(vector.ctx)
        let key = secureKey(vector.key)
        let source = MemoryCiphertext(bytes: ciphertext)
        if vector.has("InvalidKeySize") {
            #expect(throws: VaultError(.invalidParameter, "")) {
                try CobblestoneReader(key: key, context: context, source: source)
            }
            return
        }
        var output = [UInt8]()
        let whole = Result { () throws -> Void in
            let reader = try CobblestoneReader(key: key, context: context, source: source)
            try reader.readAll { output.append(contentsOf: $0) }
        }
        let length = Result { () throws -> Void in
            try CobblestoneReader(key: key, context: context, source: source).authenticateLength()
        }
        if vector.isValid {
            #expect((try? whole.get()) != nil)
            #expect(output.count == vector.msgLength)
            #expect(Hex.encode(Digest.hash(.sha512, output)) == vector.msgSha512)
            #expect((try? length.get()) != nil)
            // Every single-chunk window and a range across a chunk boundary match the streamed plaintext.
            let reader = try CobblestoneReader(key: key, context: context, source: source)
            let size = reader.plaintextSize
            for range in [0..<min(size, 10), size / 2..<size, (size > 16390 ? 16380..<16390 : 0..<size)] {
                var part = [UInt8]()
                try reader.read(range) { part.append(contentsOf: $0) }
                #expect(part == Array(output[Int(range.lowerBound)..<Int(range.upperBound)]))
            }
        } else {
            #expect((try? whole.get()) == nil, "invalid vector read in full")
            if !vector.has("ValidFinalChunk") {
                #expect((try? length.get()) == nil, "length authenticated for an invalid vector")
            }
        }
    }

    @Test("key derivation matches the vectors' AEAD key and base nonce; re-encryption reproduces the ciphertext",
          arguments: vectors.filter(\.isValid))
    func encryption(vector: Vector) throws {
        let ciphertext = inflate(hexBytes(vector.ct))
        let context = hexBytes(vector.ctx)
        let key = secureKey(vector.key)
        let salt = Array(ciphertext.prefix(Cobblestone.saltByteCount))
        let keys = try salt.withUnsafeBytes { try Cobblestone.deriveKeys(inputKey: key, salt: $0, context: context) }
        #expect(Hex.encode(keys.cipherKey.withUnsafeBytes { Array($0) }) == vector.aeadKey)
        #expect(Hex.encode(keys.baseNonce) == vector.baseNonce)

        let (message, error) = streamDecrypt(ciphertext, key: key, context: context, split: 1 << 20)
        #expect(error == nil)
        let encryptor = try CobblestoneEncryptor(key: key, context: context, salt: salt)
        var reencrypted = [UInt8]()
        // Feed in uneven pieces to exercise the buffering.
        var offset = 0
        var step = 1
        while offset < message.count {
            let end = min(offset + step, message.count)
            try message[offset..<end].withUnsafeBytes { try encryptor.update($0) { reencrypted.append(contentsOf: $0) } }
            offset = end
            step = step * 3 + 1
        }
        try encryptor.finish { reencrypted.append(contentsOf: $0) }
        #expect(reencrypted == ciphertext)
    }
}
