#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `errno` as a cause string: "errno:13 (Permission denied)".
public func errnoDescription(_ code: Int32 = errno) -> String {
    "errno:\(code) (\(String(cString: strerror(code))))"
}

/// Durable, atomic file replacement: the write goes to a temporary file in the same directory, is fsynced, renamed
/// over the target, and the directory is fsynced. A crash leaves the old file or the new one, never a torn one.
public enum DurableFile {
    /// Writes `bytes` to `path`. With `replacing: false` the call fails if `path` exists (checked atomically by
    /// `link`), so a new file never clobbers an existing one.
    public static func write(
        _ bytes: UnsafeRawBufferPointer, to path: String, permissions: mode_t = 0o600, replacing: Bool = true
    ) throws {
        let directory = parentDirectory(of: path)
        let temporary = temporaryPath(for: path)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions)
        guard fd >= 0 else {
            throw CustodyError(.io, "cannot create a temporary file beside \(path)", underlying: errnoDescription())
        }
        var committed = false
        defer {
            if !committed { unlink(temporary) }
        }
        do {
            defer { close(fd) }
            try writeAll(fd: fd, bytes, path: temporary)
            guard fsync(fd) == 0 else { throw CustodyError(.io, "fsync of \(temporary) failed", underlying: errnoDescription()) }
        }
        if replacing {
            guard rename(temporary, path) == 0 else {
                throw CustodyError(.io, "cannot rename the new file into \(path)", underlying: errnoDescription())
            }
        } else {
            guard link(temporary, path) == 0 else {
                let code = errno
                if code == EEXIST { throw CustodyError(.alreadyExists, "\(path) already exists; not overwriting it") }
                throw CustodyError(.io, "cannot create \(path)", underlying: errnoDescription(code))
            }
            unlink(temporary)
        }
        committed = true
        do {
            try syncDirectory(directory)
        } catch let error as CustodyError {
            throw CustodyError(.notDurable, "\(path) was replaced, but \(error.message)", underlying: error.underlying)
        }
    }

    public static func write(_ bytes: [UInt8], to path: String, permissions: mode_t = 0o600, replacing: Bool = true)
        throws
    {
        try bytes.withUnsafeBytes { try write($0, to: path, permissions: permissions, replacing: replacing) }
    }

    /// fsyncs a directory so a rename or unlink in it is durable.
    public static func syncDirectory(_ directory: String) throws {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw CustodyError(.io, "cannot open directory \(directory)", underlying: errnoDescription()) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw CustodyError(.io, "fsync of directory \(directory) failed", underlying: errnoDescription()) }
    }

    public static func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress!.advanced(by: offset), bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                throw CustodyError(.io, "write to \(path) failed", underlying: errnoDescription())
            }
            offset += written
        }
    }

    /// Reads a small secret file (a passphrase, a PIN) straight into secure memory. Trailing CR/LF are dropped.
    public static func readSecret(_ path: String, limit: Int = 4096) throws -> SecureBytes {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CustodyError(.io, "cannot open \(path)", underlying: errnoDescription()) }
        defer { close(fd) }
        var length = 0
        let buffer = try SecureBytes(count: limit + 1) { out in
            while length <= limit {
                let count = Glibc.read(fd, out.baseAddress!.advanced(by: length), limit + 1 - length)
                if count < 0 {
                    if errno == EINTR { continue }
                    throw CustodyError(.io, "cannot read \(path)", underlying: errnoDescription())
                }
                if count == 0 { break }
                length += count
            }
        }
        guard length <= limit else { throw CustodyError(.io, "\(path) is larger than \(limit) bytes") }
        return buffer.withUnsafeBytes { bytes in
            while length > 0, bytes[length - 1] == 0x0A || bytes[length - 1] == 0x0D { length -= 1 }
            return SecureBytes(copying: UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
        }
    }

    /// Reads a whole small file (a keyring, a configuration), refusing files larger than `limit`.
    public static func read(_ path: String, limit: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { throw CustodyError(.io, "\(path) does not exist", underlying: errnoDescription(code)) }
            throw CustodyError(.io, "cannot open \(path)", underlying: errnoDescription(code))
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CustodyError(.io, "cannot read \(path)", underlying: errnoDescription())
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            guard bytes.count <= limit else { throw CustodyError(.io, "\(path) is larger than \(limit) bytes") }
        }
        return bytes
    }

    public static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let parent = String(path[..<slash])
        return parent.isEmpty ? "/" : parent
    }

    /// `path` against the current directory, unless it is absolute already.
    public static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getcwd(&buffer, buffer.count) != nil else { return path }
        return String(cString: buffer) + "/" + path
    }

    static func temporaryPath(for path: String) -> String {
        let directory = parentDirectory(of: path)
        let name = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
        return "\(directory)/.\(name).tmp-\(getpid())-\(Hex.encode(SecureRandom.bytes(count: 6)))"
    }
}

/// An exclusive advisory lock (`flock`) on a lock file, held for the object's lifetime. The holder's pid is written
/// into the file so that a refused writer can say who holds it.
public final class ExclusiveFileLock: @unchecked Sendable {
    private let fd: Int32
    public let path: String

    /// Takes the lock without waiting; `what` names the protected resource in the error. `shared`: a shared lock
    /// (several holders; excludes an exclusive one), which records no pid.
    public init(path: String, protecting what: String, shared: Bool = false) throws {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CustodyError(.io, "cannot open lock file \(path)", underlying: errnoDescription()) }
        guard flock(fd, (shared ? LOCK_SH : LOCK_EX) | LOCK_NB) == 0 else {
            let code = errno
            var holder = [UInt8](repeating: 0, count: 32)
            let count = holder.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            close(fd)
            if code == EWOULDBLOCK {
                let pid = count > 0
                    ? String(decoding: holder[0..<count], as: UTF8.self).trimmingCharacters(in: "\n ") : "unknown"
                throw CustodyError(.keyringLocked, "\(what) is locked by another writer (pid \(pid)); "
                    + "while vaultd serves it, use `vault keys ...` through vaultd")
            }
            throw CustodyError(.io, "cannot lock \(path)", underlying: errnoDescription(code))
        }
        self.fd = fd
        self.path = path
        guard !shared else { return }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        _ = fsync(fd)
    }

    /// Closing the descriptor releases the lock; the file stays (removing it would race with a new locker).
    deinit { close(fd) }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let characters = Set(set)
        var slice = Substring(self)
        while let first = slice.first, characters.contains(first) { slice = slice.dropFirst() }
        while let last = slice.last, characters.contains(last) { slice = slice.dropLast() }
        return String(slice)
    }
}

/// RFC 3339 UTC timestamps with second precision, as keyrings and audit records carry them.
public enum Timestamp {
    public static func now() -> String { format(secondsSinceEpoch: Int(time(nil))) }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (UTC, as the vault writes it); nil for anything else.
    public static func parse(_ text: String) -> Int? {
        let utf8 = Array(text.utf8)
        guard utf8.count == 20, utf8[4] == UInt8(ascii: "-"), utf8[7] == UInt8(ascii: "-"),
            utf8[10] == UInt8(ascii: "T"), utf8[13] == UInt8(ascii: ":"), utf8[16] == UInt8(ascii: ":"),
            utf8[19] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int32? {
            var value: Int32 = 0
            for c in utf8[range] {
                guard (48...57).contains(c) else { return nil }
                value = value * 10 + Int32(c - 48)
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 60
        else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        let seconds = timegm(&parts)
        // Round-trip to refuse dates like February 30th that timegm would normalise.
        guard format(secondsSinceEpoch: Int(seconds)) == text else { return nil }
        return Int(seconds)
    }

    public static func format(secondsSinceEpoch seconds: Int) -> String {
        var value = time_t(seconds)
        var parts = tm()
        gmtime_r(&value, &parts)
        func pad(_ n: Int32, _ width: Int) -> String {
            let text = String(n)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))Z"
    }
}

/// What identifies one version of a file: device, inode, size and modification time. A file replaced by a rename or
/// rewritten in place gets another stamp, so a reader notices a change without reading the file.
public struct FileStamp: Equatable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modified: Int64

    /// The file's stamp now, or nil when it cannot be found.
    public init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
    }
}
