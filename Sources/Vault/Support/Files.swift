import KeyCustody
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func ioError(_ message: String, code: Int32 = errno) -> VaultError {
    VaultError(.io, message, underlying: errnoDescription(code))
}

/// A file opened for reading, owned by this object (closed on deinit). Positioned reads (`read(at:into:)`, pread)
/// are safe from any thread, so a blob's file is shared with `BlockingWork`'s threads; the sequential `read(into:)`
/// and `seek` are for a single owner.
public final class InputFile: @unchecked Sendable {
    public let path: String
    let fd: Int32
    /// Size at open time.
    public let size: UInt64
    public let isRegularFile: Bool

    public init(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw ioError(code == ENOENT ? "\(path) does not exist" : "cannot open \(path)", code: code)
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            close(fd)
            throw ioError("cannot stat \(path)")
        }
        guard (info.st_mode & S_IFMT) != S_IFDIR else {
            close(fd)
            throw VaultError(.io, "\(path) is a directory")
        }
        self.path = path
        self.fd = fd
        self.size = UInt64(info.st_size)
        self.isRegularFile = (info.st_mode & S_IFMT) == S_IFREG
    }

    deinit { close(fd) }

    /// Reads up to `buffer.count` bytes from the current position; 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let count = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno != EINTR { throw ioError("cannot read \(path)") }
        }
    }

    /// Fills `buffer` from `offset`, or throws if the file ends first.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let count = pread(fd, buffer.baseAddress!.advanced(by: done), buffer.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                throw ioError("cannot read \(path)")
            }
            if count == 0 { throw VaultError(.truncated, "\(path) ended early (truncated while reading?)") }
            done += count
        }
    }

    public func seek(to offset: UInt64) throws {
        guard lseek(fd, off_t(offset), SEEK_SET) >= 0 else { throw ioError("cannot seek in \(path)") }
    }
}

/// A region of a file (e.g. the ciphertext after a sealed file's header), for random-access decryption.
public struct FileRegion: RandomAccessCiphertext, Sendable {
    public let file: InputFile
    public let offset: UInt64
    public let size: UInt64

    public init(file: InputFile, offset: UInt64, size: UInt64) {
        self.file = file
        self.offset = offset
        self.size = size
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset + UInt64(buffer.count) <= size else {
            throw VaultError(.truncated, "read beyond the ciphertext's end")
        }
        try file.read(at: self.offset + offset, into: buffer)
    }
}

extension FileRegion: CiphertextSource {
    /// Reads on `BlockingWork`'s threads.
    public func read(at offset: UInt64, count: Int) async throws -> ByteBuffer {
        try await BlockingWork.run {
            var buffer = ByteBufferAllocator().buffer(capacity: count)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { pointer in
                try read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: pointer.prefix(count)))
                return count
            }
            return buffer
        }
    }
}

/// An output file that appears at its path only when `commit()` succeeds.
///
/// On Linux the data goes to an unnamed file (`O_TMPFILE`) in the target directory, mode 0600, which gets a name
/// only at `commit` (fsync, link into place, fsync the directory): if the process is killed or the machine stops,
/// no partial file (of decrypted personal data, say) is left behind. Where the file system lacks `O_TMPFILE` a
/// hidden temporary name is used instead and removed when the object is released without a commit.
public final class AtomicOutputFile {
    public let path: String
    private let directory: String
    /// Set when a named temporary file is used (no O_TMPFILE support).
    private let temporaryPath: String?
    private var fd: Int32
    private let replacing: Bool
    private var committed = false
    private let buffer: ScratchBuffer
    private var buffered = 0
    public private(set) var bytesWritten: UInt64 = 0

    /// `O_TMPFILE` on Linux (`__O_TMPFILE | O_DIRECTORY`); not exported to Swift because it is a compound macro.
    static let anonymousFileFlag: Int32 = 0o20_000_000 | O_DIRECTORY

    public init(path: String, replacing: Bool, bufferSize: Int = 1 << 20) throws {
        if !replacing, access(path, F_OK) == 0 {
            throw VaultError(.alreadyExists, "\(path) already exists; choose another output or remove it first")
        }
        directory = DurableFile.parentDirectory(of: path)
        var fd = open(directory, Self.anonymousFileFlag | O_WRONLY | O_CLOEXEC, 0o600)
        var temporaryPath: String?
        if fd < 0 {
            guard errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL else {
                throw ioError("cannot create a temporary file in \(directory)")
            }
            let name = Self.temporaryName(for: path)
            fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw ioError("cannot create a temporary file in \(directory)") }
            temporaryPath = name
        }
        self.fd = fd
        self.temporaryPath = temporaryPath
        self.path = path
        self.replacing = replacing
        self.buffer = ScratchBuffer(count: bufferSize)
    }

    static func temporaryName(for path: String) -> String {
        let directory = DurableFile.parentDirectory(of: path)
        let name = path.split(separator: "/").last.map(String.init) ?? path
        return "\(directory)/.\(name).partial-\(getpid())-\(Hex.encode(SecureRandom.bytes(count: 6)))"
    }

    deinit {
        if !committed {
            if fd >= 0 { close(fd) }
            if let temporaryPath { unlink(temporaryPath) }
        }
    }

    /// Appends bytes (buffered).
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        if buffered + bytes.count > buffer.buffer.count { try flush() }
        if bytes.count >= buffer.buffer.count {
            try writeDirect(bytes)
        } else if bytes.count > 0 {
            buffer.pointer.advanced(by: buffered).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            buffered += bytes.count
        }
        bytesWritten += UInt64(bytes.count)
    }

    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    /// Overwrites bytes already written (after a flush), e.g. a hash placeholder in a header.
    public func overwrite(at offset: UInt64, with bytes: [UInt8]) throws {
        try flush()
        let count = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard count == bytes.count else { throw ioError("cannot write the output for \(path)") }
    }

    public func flush() throws {
        guard buffered > 0 else { return }
        try writeDirect(UnsafeRawBufferPointer(rebasing: buffer.buffer[0..<buffered]))
        buffered = 0
    }

    private func writeDirect(_ bytes: UnsafeRawBufferPointer) throws {
        do {
            try DurableFile.writeAll(fd: fd, bytes, path: temporaryPath ?? "the output for \(path)")
        } catch let error as CustodyError {
            throw VaultError(.io, error.message, underlying: error.underlying, cause: error)
        }
    }

    /// Makes the file durable and visible at `path`.
    public func commit() throws {
        try flush()
        guard fsync(fd) == 0 else { throw ioError("fsync of the output for \(path) failed") }
        // Give the data a name: the unnamed file is linked through /proc, a named temporary is used as it is.
        let source: String
        if let temporaryPath {
            source = temporaryPath
        } else if replacing {
            source = Self.temporaryName(for: path)
            guard linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, source, AT_SYMLINK_FOLLOW) == 0 else {
                throw ioError("cannot name the output for \(path)")
            }
        } else {
            guard linkat(AT_FDCWD, "/proc/self/fd/\(fd)", AT_FDCWD, path, AT_SYMLINK_FOLLOW) == 0 else {
                let code = errno
                if code == EEXIST { throw VaultError(.alreadyExists, "\(path) appeared while writing; not overwriting it") }
                throw ioError("cannot create \(path)", code: code)
            }
            try finishCommit()
            return
        }
        if replacing {
            guard rename(source, path) == 0 else {
                let code = errno
                unlink(source)
                throw ioError("cannot move the output into \(path)", code: code)
            }
        } else {
            guard link(source, path) == 0 else {
                let code = errno
                if code == EEXIST { throw VaultError(.alreadyExists, "\(path) appeared while writing; not overwriting it") }
                throw ioError("cannot create \(path)", code: code)
            }
            unlink(source)
        }
        try finishCommit()
    }

    private func finishCommit() throws {
        committed = true
        close(fd)
        fd = -1
        do { try DurableFile.syncDirectory(directory) } catch let error as CustodyError {
            throw VaultError(.io, "\(path) was written, but \(error.message)", underlying: error.underlying,
                             cause: error)
        }
    }
}
