import KeyCustody
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Where extract ciphertexts live (DESIGN section 9): files for the embedded default, S3 to scale out. A blob is
/// exactly the Cobblestone ciphertext of one extract. Every call is asynchronous: files are read and written on
/// `BlockingWork`'s threads, S3 through the HTTP client's event loops, never blocking the caller's thread.
public protocol BlobStore: Sendable {
    /// Starts writing a blob. Nothing is visible until `commit`; an upload aborted or released without a commit
    /// leaves nothing behind.
    func create(_ identity: ExtractIdentity) async throws -> any BlobUpload
    /// Opens a committed blob for random-access reads.
    func open(_ identity: ExtractIdentity) async throws -> any CiphertextSource
    /// Deletes a blob; deleting a missing blob is not an error (deletes are retried after crashes).
    func delete(_ identity: ExtractIdentity) async throws
    /// Deletes several blobs, made durable together (a shredding batch).
    func delete(_ identities: [ExtractIdentity]) async throws
}

extension BlobStore {
    public func delete(_ identities: [ExtractIdentity]) async throws {
        for identity in identities { try await delete(identity) }
    }
}

/// A blob being written: buffers of ciphertext in order, then `commit`.
public protocol BlobUpload: AnyObject {
    func write(_ buffer: ByteBuffer) async throws
    /// Makes the blob durable and visible.
    func commit() async throws
    /// Gives the upload up, leaving nothing behind (what releasing it without a commit does too, later).
    func abort() async
}

extension BlobUpload {
    public func write(_ bytes: [UInt8]) async throws { try await write(ByteBuffer(bytes: bytes)) }
}

/// Blobs as files: `ROOT/<force>/<dataset>/<extract>.cob`, written through `AtomicOutputFile` (an unnamed file linked
/// into place after fsync, then the directory fsynced).
public struct FileBlobStore: BlobStore {
    public let root: String

    public init(root: String) throws {
        self.root = root
        try Self.makeDirectory(root)
    }

    /// Creates a directory and its parents with mode 0700 (existing ones are kept).
    public static func makeDirectory(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            let parent = current.isEmpty ? "/" : current
            current += "/\(component)"
            if mkdir(current, 0o700) == 0 {
                // A new directory entry must be durable before anything inside it is committed.
                do { try DurableFile.syncDirectory(parent) } catch {
                    throw VaultError(.io, "cannot sync directory \(parent)")
                }
            } else if errno != EEXIST {
                throw ioError("cannot create directory \(current)")
            }
        }
    }

    public func path(_ identity: ExtractIdentity) -> String {
        "\(root)/\(identity.force)/\(identity.dataset)/\(identity.extract).cob"
    }

    public func create(_ identity: ExtractIdentity) async throws -> any BlobUpload {
        let directory = "\(root)/\(identity.force)/\(identity.dataset)", path = path(identity)
        let upload = try await BlockingWork.run {
            try Self.makeDirectory(directory)
            return FileBlobUpload(file: try AtomicOutputFile(path: path, replacing: false))
        }
        return upload
    }

    public func open(_ identity: ExtractIdentity) async throws -> any CiphertextSource {
        let path = path(identity)
        let region = try await BlockingWork.run {
            let file = try InputFile(path: path)
            return FileRegion(file: file, offset: 0, size: file.size)
        }
        return region
    }

    public func delete(_ identities: [ExtractIdentity]) async throws {
        let targets = identities.map(path)
        try await BlockingWork.run {
            var directories = Set<String>()
            for target in targets {
                if unlink(target) == 0 {
                    directories.insert(DurableFile.parentDirectory(of: target))
                } else if errno != ENOENT {
                    throw ioError("cannot delete \(target)")
                }
                // A blob that was never written (an upload cut before its first byte, whose dataset directory may not
                // even exist) is already gone: there is nothing to make durable.
            }
            // One directory sync per directory, not per blob: the unlinks are durable together.
            for directory in directories.sorted() {
                do { try DurableFile.syncDirectory(directory) } catch {
                    throw VaultError(.io, "cannot sync \(directory)")
                }
            }
        }
    }

    public func delete(_ identity: ExtractIdentity) async throws {
        try await delete([identity])
    }
}

/// A file blob being written: the writes and the commit's fsyncs run on `BlockingWork`'s threads, one at a time.
final class FileBlobUpload: BlobUpload, @unchecked Sendable {
    // Touched by one blocking-work call at a time: each call is awaited before the next is made.
    let file: AtomicOutputFile
    init(file: AtomicOutputFile) { self.file = file }

    func write(_ buffer: ByteBuffer) async throws {
        try await BlockingWork.run { try buffer.withUnsafeReadableBytes { try self.file.write($0) } }
    }

    func commit() async throws { try await BlockingWork.run { try self.file.commit() } }

    /// The unnamed file disappears when it is closed (or its temporary name is removed): releasing it is enough.
    func abort() async {}
}
