import KeyCustody
import NIOCore
import Vault

/// Cobblestone-256 (DESIGN 5.1) from both ends.
///
/// Raw mode (first byte even): the input is a key, a context and a ciphertext (the C2SP vectors are seeds of this
/// shape). The streaming decryptor, the synchronous random-access reader and the asynchronous one (vaultd's Range
/// reads from a blob store) must agree: all succeed with the same plaintext or all fail, and every byte a range read
/// returns is a byte the streaming decryptor authenticated at that offset.
///
/// Tamper mode (odd): the input picks a key, a context, a plaintext and one alteration (a flipped bit, a cut, an
/// extension, chunks swapped, duplicated or dropped). The plaintext is encrypted in pieces of random sizes; the
/// unaltered ciphertext must decrypt to it by every reader, an altered one must fail to decrypt in full, and a
/// range read that still succeeds must return the original bytes and never bytes beyond the original length.
///
/// Either way no reader may ask its source for bytes outside the ciphertext.
enum CobblestoneTarget {
    static func run(_ data: [UInt8]) {
        var input = FuzzInput(data)
        let mode = input.byte()
        if mode & 1 == 0 { raw(&input, mode: mode) } else { tamper(&input, mode: mode) }
    }

    // MARK: Raw ciphertexts

    static func raw(_ input: inout FuzzInput, mode: UInt8) {
        // Mostly 32-byte keys; sometimes another length, which every reader must refuse.
        let keyLength = mode & 0x0E == 0x0E ? input.integer(in: 0...40) : Cobblestone.keyByteCount
        let key = secure(input.bytes(keyLength))
        let context = input.chunk(upTo: 96)
        var random = SplitMix(seed: input.integer(UInt64.self))
        let faults = mode & 0x30 == 0x30
        let ciphertext = input.rest()

        let streamed = streamDecrypt(key: key, context: context, ciphertext: ciphertext, random: &random)
        let whole = readAll(key: key, context: context, ciphertext: ciphertext)
        let wholeAsync = readAllAsync(key: key, context: context, ciphertext: ciphertext)
        if keyLength != Cobblestone.keyByteCount, streamed.error == nil || whole != nil || wholeAsync != nil {
            violated("a \(keyLength)-byte key was accepted")
        }
        switch (streamed.error, whole, wholeAsync) {
        case (nil, let whole?, let wholeAsync?):
            guard whole == streamed.plaintext, wholeAsync == streamed.plaintext else {
                violated("the readers decrypt one ciphertext to different plaintexts")
            }
        case (_?, nil, nil):
            break
        default:
            let stream = streamed.error.map { "\($0)" } ?? "ok"
            violated("one reader accepts a ciphertext another refuses (stream: \(stream), "
                        + "reader: \(whole == nil ? "refused" : "ok"), async: \(wholeAsync == nil ? "refused" : "ok"))")
        }
        // What the stream released before any failure is authenticated: range reads may only ever return that.
        readRanges(key: key, context: context, ciphertext: ciphertext, known: streamed.plaintext,
                   knownComplete: streamed.error == nil, originalLength: nil, random: &random, faults: faults)
    }

    // MARK: Encrypt, alter, decrypt

    enum Alteration: UInt8, CaseIterable {
        case none, flipBit, truncate, extend, swapChunks, duplicateChunk, dropChunk, replaceHeader
    }

    static func tamper(_ input: inout FuzzInput, mode: UInt8) {
        let key = secure(input.bytes(Cobblestone.keyByteCount))
        let context = input.chunk(upTo: 96)
        let length = input.integer(in: 0...(4 * Cobblestone.chunkByteCount + 1000))
        let alteration = Alteration(rawValue: input.byte() % UInt8(Alteration.allCases.count))!
        let position = Int(input.integer(UInt32.self))
        let value = input.byte()
        var random = SplitMix(seed: input.integer(UInt64.self))
        let faults = mode & 0x30 == 0x30
        // The plaintext: the rest of the input, repeated (or a counter when there is none).
        let pattern = input.rest()
        let plaintext = (0..<length).map {
            pattern.isEmpty ? UInt8(truncatingIfNeeded: $0) : pattern[$0 % pattern.count]
        }

        let ciphertext = encrypt(key: key, context: context, plaintext: plaintext, random: &random)
        guard UInt64(ciphertext.count) == Cobblestone.ciphertextSize(plaintextSize: UInt64(length)),
            (try? Cobblestone.plaintextSize(ciphertextSize: UInt64(ciphertext.count))) == UInt64(length)
        else { violated("ciphertextSize and plaintextSize disagree with the encryptor for \(length) bytes") }

        let altered = alter(ciphertext, alteration, position: position, value: value)
        let intact = altered == ciphertext
        let streamed = streamDecrypt(key: key, context: context, ciphertext: altered, random: &random)
        let whole = readAll(key: key, context: context, ciphertext: altered)
        let wholeAsync = readAllAsync(key: key, context: context, ciphertext: altered)
        if intact {
            guard streamed.error == nil, streamed.plaintext == plaintext else {
                violated("a fresh \(length)-byte ciphertext fails to stream: \(String(describing: streamed.error))")
            }
            guard whole == plaintext, wholeAsync == plaintext else {
                violated("a fresh ciphertext of \(length) bytes does not decrypt by random access")
            }
        } else {
            guard streamed.error != nil else { violated("an altered ciphertext (\(alteration)) decrypted in full") }
            guard whole == nil, wholeAsync == nil else {
                violated("an altered ciphertext (\(alteration)) decrypted in full by random access")
            }
            guard Array(plaintext.prefix(streamed.plaintext.count)) == streamed.plaintext else {
                violated("the stream released bytes of an altered ciphertext that are not the plaintext's")
            }
        }
        // Another context (force, dataset or extract) or key never opens it.
        var otherContext = context
        otherContext.append(value)
        guard streamDecrypt(key: key, context: otherContext, ciphertext: ciphertext, random: &random).error != nil,
            readAll(key: key, context: otherContext, ciphertext: ciphertext) == nil
        else { violated("a ciphertext opened under another context") }
        readRanges(key: key, context: context, ciphertext: altered, known: plaintext, knownComplete: intact,
                   originalLength: length, random: &random, faults: faults)
    }

    static func alter(_ ciphertext: [UInt8], _ alteration: Alteration, position: Int, value: UInt8) -> [UInt8] {
        var bytes = ciphertext
        let header = Cobblestone.headerByteCount
        let chunk = Cobblestone.encryptedChunkByteCount
        let fullChunks = (bytes.count - header) / chunk
        switch alteration {
        case .none:
            break
        case .flipBit:
            bytes[position % bytes.count] ^= 1 << (value % 8)
        case .truncate:
            bytes.removeLast(1 + position % bytes.count)
        case .extend:
            bytes += [UInt8](repeating: value, count: 1 + position % (chunk + 40))
        case .swapChunks:
            guard fullChunks >= 1 else { return alter(ciphertext, .flipBit, position: position, value: value) }
            // Swap a full chunk with another full chunk, or with the start of the final one.
            let a = position % fullChunks, b = (a + 1 + Int(value) % max(1, fullChunks)) % (fullChunks + 1)
            let span = min(chunk, bytes.count - header - b * chunk)
            guard a != b, span > 0 else { return alter(ciphertext, .truncate, position: position, value: value) }
            for i in 0..<span { bytes.swapAt(header + a * chunk + i, header + b * chunk + i) }
        case .duplicateChunk:
            guard fullChunks >= 1 else { return alter(ciphertext, .extend, position: position, value: value) }
            let a = position % fullChunks
            let copy = Array(bytes[header + a * chunk..<header + (a + 1) * chunk])
            bytes.insert(contentsOf: copy, at: header + (Int(value) % (fullChunks + 1)) * chunk)
        case .dropChunk:
            guard fullChunks >= 1 else { return alter(ciphertext, .truncate, position: position, value: value) }
            let a = position % fullChunks
            bytes.removeSubrange(header + a * chunk..<header + (a + 1) * chunk)
        case .replaceHeader:
            bytes[position % header] ^= value | 1
        }
        return bytes
    }

    // MARK: Readers

    static func secure(_ bytes: [UInt8]) -> SecureBytes {
        bytes.withUnsafeBytes { SecureBytes(copying: $0) }
    }

    static func encrypt(key: SecureBytes, context: [UInt8], plaintext: [UInt8], random: inout SplitMix) -> [UInt8] {
        let encryptor: CobblestoneEncryptor
        do { encryptor = try CobblestoneEncryptor(key: key, context: context) } catch {
            violated("a 32-byte key was refused: \(error)")
        }
        var output: [UInt8] = []
        do {
            try feed(plaintext, to: encryptor, output: &output, random: &random)
            guard encryptor.finishOutputSize <= CobblestoneEncryptor.maximumFinishSize else {
                violated("finishOutputSize exceeds maximumFinishSize")
            }
            var out = [UInt8](repeating: 0, count: encryptor.finishOutputSize)
            let expected = out.count
            let written = try out.withUnsafeMutableBytes { try encryptor.finish(into: $0) }
            guard written == expected else { violated("finish wrote \(written) bytes, not \(expected)") }
            output += out
        } catch {
            violated("encryption failed: \(error)")
        }
        guard encryptor.plaintextCount == UInt64(plaintext.count) else { violated("plaintextCount is wrong") }
        return output
    }

    /// Feeds `input` to an encryptor or decryptor in pieces of random sizes, a quarter of them through the closure
    /// form of `update` and the rest through the buffer form, appending what it releases to `output` (which holds
    /// what was released before an error, too).
    static func feed(_ input: [UInt8], to stream: some CobblestoneStream, output: inout [UInt8],
                     random: inout SplitMix) throws
    {
        var offset = 0
        while offset < input.count {
            let count = min(input.count - offset, pieceSize(&random))
            let piece = Array(input[offset..<offset + count])
            if random.below(4) == 0 {
                try piece.withUnsafeBytes { p in try stream.update(p) { output += $0 } }
            } else {
                var out = [UInt8](repeating: 0, count: stream.maximumOutputSize(forInputSize: count))
                let written = try piece.withUnsafeBytes { p in
                    try out.withUnsafeMutableBytes { try stream.update(p, into: $0) }
                }
                output += out[0..<written]
            }
            offset += count
        }
    }

    /// Piece sizes around the interesting boundaries: single bytes, the header, a chunk, several chunks.
    static func pieceSize(_ random: inout SplitMix) -> Int {
        switch random.below(6) {
        case 0: 1 + random.below(8)
        case 1: Cobblestone.headerByteCount - 1 + random.below(3)
        case 2: Cobblestone.chunkByteCount - 1 + random.below(3)
        case 3: Cobblestone.encryptedChunkByteCount - 1 + random.below(3)
        case 4: 1 + random.below(3 * Cobblestone.encryptedChunkByteCount)
        default: 1 + random.below(4096)
        }
    }

    /// Decrypts in pieces of random sizes; returns what was released and the first error. After an error every
    /// later call must fail too.
    static func streamDecrypt(key: SecureBytes, context: [UInt8], ciphertext: [UInt8], random: inout SplitMix)
        -> (plaintext: [UInt8], error: (any Error)?)
    {
        let decryptor: CobblestoneDecryptor
        do { decryptor = try CobblestoneDecryptor(key: key, context: context) } catch { return ([], error) }
        var output: [UInt8] = []
        do {
            try feed(ciphertext, to: decryptor, output: &output, random: &random)
            let promised = decryptor.finishOutputSize
            guard promised <= CobblestoneDecryptor.maximumFinishSize else {
                violated("finishOutputSize \(promised) exceeds maximumFinishSize")
            }
            var out = [UInt8](repeating: 0, count: promised)
            let written = try out.withUnsafeMutableBytes { try decryptor.finish(into: $0) }
            guard written == promised else { violated("finish wrote \(written) bytes, not \(promised)") }
            output += out
            guard decryptor.plaintextCount == UInt64(output.count) else { violated("plaintextCount is wrong") }
            return (output, nil)
        } catch {
            guard decryptor.plaintextCount == UInt64(output.count) else {
                violated("plaintextCount counts bytes that were not released")
            }
            // A broken stream stays broken: it can never be finished into a valid-looking message.
            let again = try? [UInt8](repeating: 0, count: 16).withUnsafeBytes { p in
                try decryptor.update(p) { _ in }
            }
            var sink = [UInt8](repeating: 0, count: CobblestoneDecryptor.maximumFinishSize)
            let finished = try? sink.withUnsafeMutableBytes { try decryptor.finish(into: $0) }
            guard again == nil, finished == nil else { violated("a failed decryptor accepted more input") }
            return (output, error)
        }
    }

    static func readAll(key: SecureBytes, context: [UInt8], ciphertext: [UInt8]) -> [UInt8]? {
        guard let reader = try? CobblestoneReader(key: key, context: context,
                                                  source: MemoryCiphertext(ciphertext, faults: nil))
        else { return nil }
        var output: [UInt8] = []
        guard (try? reader.readAll { output += $0 }) != nil else { return nil }
        guard UInt64(output.count) == reader.plaintextSize else { violated("readAll returned the wrong byte count") }
        return output
    }

    static func readAllAsync(key: SecureBytes, context: [UInt8], ciphertext: [UInt8]) -> [UInt8]? {
        try? runToCompletion {
            let reader = try await AsyncCobblestoneReader.open(key: key, context: context,
                                                               source: AsyncMemoryCiphertext(ciphertext, faults: nil))
            var output: [UInt8] = []
            try await reader.read(0..<reader.plaintextSize) { output += Array($0.readableBytesView) }
            guard UInt64(output.count) == reader.plaintextSize else { violated("async read returned the wrong count") }
            return output
        }
    }

    /// Reads ranges around chunk boundaries and at random with both random-access readers. `known` holds plaintext
    /// bytes known to be authentic from offset 0 (all of them when `knownComplete`); `originalLength` is the length
    /// before an alteration, beyond which no read may return anything.
    static func readRanges(
        key: SecureBytes, context: [UInt8], ciphertext: [UInt8], known: [UInt8], knownComplete: Bool,
        originalLength: Int?, random: inout SplitMix, faults: Bool
    ) {
        let size = UInt64((try? Cobblestone.plaintextSize(ciphertextSize: UInt64(ciphertext.count))) ?? 0)
        var ranges: [Range<UInt64>] = [0..<0, size..<size, 0..<size, size..<size + 1]
        let chunk = UInt64(Cobblestone.chunkByteCount)
        for _ in 0..<4 {
            let a = UInt64(random.below(Int(size) + 2))
            let b = a + UInt64(random.below(Int(size) + 2))
            ranges.append(a..<b)
            let edge = UInt64(random.below(Int(size / chunk) + 1)) * chunk
            ranges.append(edge..<min(max(edge, size), edge + 1 + UInt64(random.below(3))))
            if edge > 0 { ranges.append(edge - 1..<min(size, edge + 1)) }
        }
        let syncSource = MemoryCiphertext(ciphertext, faults: faults ? random.next() : nil)
        let asyncSource = AsyncMemoryCiphertext(ciphertext, faults: faults ? random.next() : nil)
        let reader = try? CobblestoneReader(key: key, context: context, source: syncSource)
        let asyncReader = try? runToCompletion {
            try await AsyncCobblestoneReader.open(key: key, context: context, source: asyncSource)
        }
        guard !faults else {
            // A failing store: errors are expected; what matters is that nothing crashes or reads out of bounds.
            for range in ranges {
                try? reader?.read(range) { _ in }
                _ = try? runToCompletion { try await asyncReader?.read(range) { _ in } }
            }
            return
        }
        guard (reader == nil) == (asyncReader == nil) else {
            violated("one random-access reader opened, not the other")
        }
        guard let reader, let asyncReader else { return }
        guard reader.plaintextSize == size, asyncReader.plaintextSize == size else {
            violated("a reader's plaintextSize disagrees with Cobblestone.plaintextSize")
        }
        for range in ranges {
            var output: [UInt8] = []
            let ok = (try? reader.read(range) { output += $0 }) != nil
            var asyncOutput: [UInt8] = []
            let asyncOK = (try? runToCompletion {
                try await asyncReader.read(range) { asyncOutput += Array($0.readableBytesView) }
            }) != nil
            guard ok == asyncOK, !ok || output == asyncOutput else {
                violated("the readers disagree on range \(range): sync \(ok), async \(asyncOK)")
            }
            guard ok else {
                if range.upperBound <= size, knownComplete {
                    violated("range \(range) of an authentic \(size)-byte message failed")
                }
                continue
            }
            guard range.upperBound <= size, UInt64(output.count) == UInt64(range.count) else {
                violated("range \(range) of \(size) bytes returned \(output.count) bytes")
            }
            if let originalLength, range.upperBound > UInt64(originalLength), !range.isEmpty {
                violated("range \(range) returned bytes beyond the original \(originalLength)")
            }
            let knownEnd = min(range.upperBound, UInt64(known.count))
            if range.lowerBound < knownEnd {
                let slice = Array(known[Int(range.lowerBound)..<Int(knownEnd)])
                guard Array(output.prefix(slice.count)) == slice else {
                    violated("range \(range) returned bytes that differ from the authenticated plaintext")
                }
            } else if knownComplete, !range.isEmpty {
                violated("range \(range) succeeded beyond the authenticated \(known.count) bytes")
            }
        }
    }
}

/// A ciphertext in memory. Any read outside it is a reader bug; with `faults`, some reads fail as a disk would.
final class MemoryCiphertext: RandomAccessCiphertext {
    let bytes: [UInt8]
    private var random: SplitMix?

    init(_ bytes: [UInt8], faults: UInt64?) {
        self.bytes = bytes
        random = faults.map { SplitMix(seed: $0) }
    }

    var size: UInt64 { UInt64(bytes.count) }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset <= size, UInt64(buffer.count) <= size - offset else {
            violated("a reader asked for \(buffer.count) bytes at \(offset) of a \(size)-byte ciphertext")
        }
        if random?.below(5) == 0 { throw FuzzError("injected read failure") }
        guard buffer.count > 0 else { return }
        bytes.withUnsafeBytes {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset) + buffer.count]))
        }
    }
}

/// The same for the asynchronous reader; with `faults`, some reads fail or come back short, as a blob store's might.
final class AsyncMemoryCiphertext: CiphertextSource, @unchecked Sendable {
    let bytes: [UInt8]
    private var random: SplitMix?

    init(_ bytes: [UInt8], faults: UInt64?) {
        self.bytes = bytes
        random = faults.map { SplitMix(seed: $0) }
    }

    var size: UInt64 { UInt64(bytes.count) }

    func read(at offset: UInt64, count: Int) async throws -> ByteBuffer {
        guard count >= 0, offset <= size, UInt64(count) <= size - offset else {
            violated("a reader asked for \(count) bytes at \(offset) of a \(size)-byte ciphertext")
        }
        var count = count
        switch random?.below(6) {
        case 0: throw FuzzError("injected read failure")
        case 1: count = random!.below(count + 1)
        default: break
        }
        return ByteBuffer(bytes: bytes[Int(offset)..<Int(offset) + count])
    }
}
