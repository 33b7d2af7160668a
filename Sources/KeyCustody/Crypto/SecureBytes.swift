internal import CSodium
import Synchronization

/// Key material: a fixed-size buffer in guarded, locked memory that is wiped when released.
///
/// Key-sized values (up to 64 bytes: every KEK, EK and derived key) live in slots of `SecureArena`, slabs from
/// `sodium_malloc` (guard pages around the slab, `mlock`ed where the system allows it), wiped with `sodium_memzero`
/// when released. Larger values get their own `sodium_malloc` allocation, zeroed by `sodium_free`. The bytes are reachable only through `withUnsafeBytes`; the description never shows them and `==`
/// runs in constant time. Contents are written once, by the initialiser, so a value can be shared freely.
public final class SecureBytes: @unchecked Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible
{
    private let pointer: UnsafeMutableRawPointer
    /// Number of bytes held.
    public let count: Int

    /// Allocates `count` bytes and lets `initializer` fill them. If the initializer throws, the memory is wiped.
    public init(count: Int, initializer: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        precondition(count >= 0, "negative SecureBytes size")
        _ = Sodium.ready
        let raw: UnsafeMutableRawPointer
        if count <= SecureArena.slotSize {
            raw = SecureArena.shared.allocate()
        } else {
            guard let allocated = sodium_malloc(count) else {
                fatalError("sodium_malloc failed: out of memory for key material")
            }
            sodium_memzero(allocated, count)
            raw = allocated
        }
        self.pointer = raw
        self.count = count
        try initializer(UnsafeMutableRawBufferPointer(start: raw, count: count))
    }

    /// A copy of `bytes` in secure memory. The caller remains responsible for wiping its own copy.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count) { destination in
            if let base = bytes.baseAddress { destination.baseAddress!.copyMemory(from: base, byteCount: bytes.count) }
        }
    }

    /// A copy of `bytes` in secure memory; the array is wiped afterwards.
    public convenience init(consuming bytes: inout [UInt8]) {
        self.init(count: bytes.count) { destination in
            bytes.withUnsafeBytes { source in
                if let base = source.baseAddress { destination.baseAddress!.copyMemory(from: base, byteCount: source.count) }
            }
        }
        bytes.withUnsafeMutableBytes { sodium_memzero($0.baseAddress, $0.count) }
        bytes.removeAll()
    }

    /// `count` bytes from the CSPRNG.
    public static func random(count: Int) -> SecureBytes {
        SecureBytes(count: count) { SecureRandom.fill($0) }
    }

    deinit {
        if count <= SecureArena.slotSize {
            SecureArena.shared.release(pointer)
        } else {
            sodium_free(pointer)
        }
    }

    /// Runs `body` with read access to the key bytes. Do not let the pointer escape.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    public var description: String { "SecureBytes(\(count) bytes, redacted)" }
    public var debugDescription: String { description }

    /// Constant-time comparison: the time taken does not depend on where the contents differ.
    public static func == (lhs: SecureBytes, rhs: SecureBytes) -> Bool {
        guard lhs.count == rhs.count else { return false }
        if lhs.count == 0 { return true }
        return sodium_memcmp(lhs.pointer, rhs.pointer, lhs.count) == 0
    }
}

/// Constant-time equality of two byte buffers of the same length (false for different lengths).
public func constantTimeEquals(_ lhs: UnsafeRawBufferPointer, _ rhs: UnsafeRawBufferPointer) -> Bool {
    guard lhs.count == rhs.count else { return false }
    if lhs.count == 0 { return true }
    _ = Sodium.ready
    return sodium_memcmp(lhs.baseAddress!, rhs.baseAddress!, lhs.count) == 0
}

/// Constant-time equality of two byte arrays.
public func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    lhs.withUnsafeBytes { l in rhs.withUnsafeBytes { r in constantTimeEquals(l, r) } }
}

/// Overwrites `buffer` with zeros in a way the compiler cannot elide.
public func secureZero(_ buffer: UnsafeMutableRawBufferPointer) {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return }
    _ = Sodium.ready
    sodium_memzero(base, buffer.count)
}

/// Overwrites an array's bytes with zeros and empties it.
public func secureZero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { secureZero($0) }
    bytes.removeAll()
}

/// Locked memory for key-sized secrets without a system call per key.
///
/// `sodium_malloc` costs several system calls (mmap, mprotect, mlock and their reverses); an unwrap that allocates
/// one extract key would spend most of its time there. The arena takes 64 KiB slabs from `sodium_malloc` once and
/// hands out 64-byte slots; a released slot is wiped before it is reused. Slabs are kept for the process lifetime,
/// so the arena's size is the peak number of live keys × 64 bytes.
final class SecureArena: Sendable {
    static let slotSize = 64
    static let slabSize = 64 * 1024
    static let shared = SecureArena()

    private struct State: ~Copyable {
        /// Free slot addresses (as integers, which are Sendable).
        var free: [UInt] = []
    }

    private let state = Mutex(State())

    func allocate() -> UnsafeMutableRawPointer {
        state.withLock { state in
            if state.free.isEmpty {
                guard let slab = sodium_malloc(Self.slabSize) else {
                    fatalError("sodium_malloc failed: out of memory for key material")
                }
                sodium_memzero(slab, Self.slabSize)
                for offset in stride(from: Self.slabSize - Self.slotSize, through: 0, by: -Self.slotSize) {
                    state.free.append(UInt(bitPattern: slab.advanced(by: offset)))
                }
            }
            return UnsafeMutableRawPointer(bitPattern: state.free.removeLast())!
        }
    }

    func release(_ slot: UnsafeMutableRawPointer) {
        sodium_memzero(slot, Self.slotSize)
        state.withLock { $0.free.append(UInt(bitPattern: slot)) }
    }
}
