internal import COpenSSLCrypto

/// The CSPRNG: OpenSSL's `RAND_bytes` (seeded from the kernel's `getrandom`).
public enum SecureRandom {
    /// Fills `buffer` with random bytes.
    ///
    /// A failure of the system CSPRNG is not recoverable: continuing with predictable keys or nonces would be worse
    /// than stopping, so the process stops.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        var offset = 0
        while offset < buffer.count {
            let chunk = min(buffer.count - offset, Int(Int32.max))
            guard RAND_bytes(base.advanced(by: offset).assumingMemoryBound(to: UInt8.self), Int32(chunk)) == 1 else {
                fatalError("the CSPRNG (RAND_bytes) failed: \(OpenSSLError.lastErrorDescription())")
            }
            offset += chunk
        }
    }

    /// `count` random bytes. For key material use `SecureBytes.random(count:)` instead.
    public static func bytes(count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { fill($0) }
        return bytes
    }
}

/// Reads and clears OpenSSL's per-thread error queue so the native cause can travel with a `CustodyError`.
enum OpenSSLError {
    static func lastErrorDescription() -> String {
        var code: UInt = 0
        var last: UInt = 0
        repeat {
            code = ERR_get_error()
            if code != 0 { last = code }
        } while code != 0
        if last == 0 { return "openssl:no error queued" }
        return "openssl:0x" + String(last, radix: 16, uppercase: true)
    }

    static func failure(_ what: String, file: String = #fileID, line: Int = #line) -> CustodyError {
        CustodyError(.cryptoLibraryFailure, "\(what) failed", underlying: lastErrorDescription(), file: file, line: line)
    }

    /// Empties the queue after an expected failure (e.g. a tag that did not verify), so it is not reported later.
    static func clear() { ERR_clear_error() }
}
