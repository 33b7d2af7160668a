internal import COpenSSLCrypto
internal import CSodium

/// Standard base64 with padding (RFC 4648 section 4), as every vault format uses; strict on decode.
public enum Base64 {
    public static func encodedLength(_ byteCount: Int) -> Int { (byteCount + 2) / 3 * 4 }

    /// Base64 of bytes that are not secret (a sealed keyring, a signature): OpenSSL's table-driven encoder, several
    /// times faster than libsodium's constant-time one, which `encode(secret:)` keeps for key material.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        let length = encodedLength(bytes.count)
        guard length > 0 else { return "" }
        // Straight into the string's storage (base64 is ASCII); the NUL OpenSSL writes lands past the count.
        return String(unsafeUninitializedCapacity: length + 1) { output in
            var written = 0
            var offset = 0
            // EVP_EncodeBlock takes an int length: whole blocks of 3 bytes, a gigabyte at a time at most.
            while offset < bytes.count {
                let count = min(bytes.count - offset, 3 << 28)
                written += Int(EVP_EncodeBlock(output.baseAddress! + written,
                                               bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) + offset,
                                               Int32(count)))
                offset += count
            }
            return written
        }
    }

    public static func encode(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { encode($0) } }

    /// Writes the base64 of secret bytes straight into a sink, through a wiped scratch buffer.
    static func encode<Sink: JSONSink>(secret: SecureBytes, to sink: inout Sink) {
        _ = Sodium.ready
        let length = encodedLength(secret.count)
        let scratch = SecureBytes(count: length + 1) { out in
            secret.withUnsafeBytes { bin in
                _ = sodium_bin2base64(out.baseAddress!.assumingMemoryBound(to: CChar.self), out.count,
                                      bin.baseAddress?.assumingMemoryBound(to: UInt8.self), bin.count,
                                      sodium_base64_VARIANT_ORIGINAL)
            }
        }
        scratch.withUnsafeBytes { sink.append(UnsafeRawBufferPointer(rebasing: $0.prefix(length))) }
    }

    /// Decodes canonical padded base64; nil if the text is not exactly that.
    public static func decode(_ text: String) -> [UInt8]? {
        var text = text
        return text.withUTF8 { utf8 -> [UInt8]? in
            let raw = UnsafeRawBufferPointer(utf8)
            guard let length = decodedLength(raw) else { return nil }
            var output = [UInt8](repeating: 0, count: max(length, 1))
            let ok = output.withUnsafeMutableBytes { decode(raw, into: $0) == length }
            return ok ? Array(output.prefix(length)) : nil
        }
    }

    /// The base64 of secret bytes in secure memory (`encodedLength(secret.count)` bytes, then a NUL).
    public static func encodeSecret(_ secret: SecureBytes) -> SecureBytes {
        _ = Sodium.ready
        let length = encodedLength(secret.count)
        return SecureBytes(count: length + 1) { out in
            secret.withUnsafeBytes { bin in
                _ = sodium_bin2base64(out.baseAddress!.assumingMemoryBound(to: CChar.self), out.count,
                                      bin.baseAddress?.assumingMemoryBound(to: UInt8.self), bin.count,
                                      sodium_base64_VARIANT_ORIGINAL)
            }
        }
    }

    /// Decodes base64 text straight into secure memory, for key fields.
    public static func decodeSecret(_ text: UnsafeRawBufferPointer) -> SecureBytes? {
        guard let length = decodedLength(text) else { return nil }
        var ok = false
        let secret = SecureBytes(count: length) { out in ok = decode(text, into: out) == length }
        return ok ? secret : nil
    }

    private static func decodedLength(_ text: UnsafeRawBufferPointer) -> Int? {
        guard text.count % 4 == 0 else { return nil }
        if text.isEmpty { return 0 }
        var padding = 0
        if text[text.count - 1] == UInt8(ascii: "=") { padding += 1 }
        if text[text.count - 2] == UInt8(ascii: "=") { padding += 1 }
        return text.count / 4 * 3 - padding
    }

    /// Returns the number of bytes decoded, or nil if the input is not strict padded base64.
    private static func decode(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        _ = Sodium.ready
        if text.isEmpty { return 0 }
        var written = 0
        var end: UnsafePointer<CChar>? = nil
        let base = text.baseAddress!.assumingMemoryBound(to: CChar.self)
        let status = sodium_base642bin(output.baseAddress!.assumingMemoryBound(to: UInt8.self), output.count,
                                       base, text.count, nil, &written, &end, sodium_base64_VARIANT_ORIGINAL)
        guard status == 0, end == base.advanced(by: text.count) else { return nil }
        // Reject non-canonical encodings (stray bits in the last symbol), so one value has one spelling.
        var reencoded = [CChar](repeating: 0, count: text.count + 1)
        _ = sodium_bin2base64(&reencoded, reencoded.count, output.baseAddress!.assumingMemoryBound(to: UInt8.self),
                              written, sodium_base64_VARIANT_ORIGINAL)
        let canonical = reencoded.withUnsafeBytes { r in
            constantTimeEquals(UnsafeRawBufferPointer(rebasing: r.prefix(text.count)), text)
        }
        reencoded.withUnsafeMutableBytes { secureZero($0) }
        return canonical ? written : nil
    }
}

/// Lower-case hexadecimal.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var output = [UInt8]()
        for byte in bytes {
            output.append(digits[Int(byte >> 4)])
            output.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: output, as: UTF8.self)
    }

    /// Decodes hex (either case); nil for odd length or a non-hex character.
    public static func decode(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var output = [UInt8]()
        output.reserveCapacity(utf8.count / 2)
        var index = 0
        while index < utf8.count {
            guard let high = value(utf8[index]), let low = value(utf8[index + 1]) else { return nil }
            output.append(high << 4 | low)
            index += 2
        }
        return output
    }

    private static func value(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
