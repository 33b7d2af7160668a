import KeyCustody

#if canImport(Glibc)
import Glibc
#endif

/// Where extract ciphertexts live (DESIGN section 9): files for the embedded default, S3 to scale out. A blob is
/// exactly the Cobblestone ciphertext of one extract.
public protocol BlobStore: Sendable {
    /// Starts writing a blob. Nothing is visible until `commit`; an upload released without a commit leaves
    /// nothing behind.
    func create(_ identity: ExtractIdentity) throws -> any BlobUpload
    /// Opens a committed blob for random-access reads.
    func open(_ identity: ExtractIdentity) throws -> any RandomAccessCiphertext
    /// Deletes a blob; deleting a missing blob is not an error (deletes are retried after crashes).
    func delete(_ identity: ExtractIdentity) throws
    /// Deletes several blobs, made durable together (a shredding batch).
    func delete(_ identities: [ExtractIdentity]) throws
}

extension BlobStore {
    public func delete(_ identities: [ExtractIdentity]) throws {
        for identity in identities { try delete(identity) }
    }
}

/// A blob being written.
public protocol BlobUpload: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Makes the blob durable and visible.
    func commit() throws
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

    public func create(_ identity: ExtractIdentity) throws -> any BlobUpload {
        try Self.makeDirectory("\(root)/\(identity.force)/\(identity.dataset)")
        return FileBlobUpload(file: try AtomicOutputFile(path: path(identity), replacing: false))
    }

    public func open(_ identity: ExtractIdentity) throws -> any RandomAccessCiphertext {
        let file = try InputFile(path: path(identity))
        return FileRegion(file: file, offset: 0, size: file.size)
    }

    public func delete(_ identities: [ExtractIdentity]) throws {
        var directories = Set<String>()
        for identity in identities {
            let target = path(identity)
            guard unlink(target) == 0 || errno == ENOENT else { throw ioError("cannot delete \(target)") }
            directories.insert(DurableFile.parentDirectory(of: target))
        }
        // One directory sync per directory, not per blob: the unlinks are durable together.
        for directory in directories.sorted() {
            do { try DurableFile.syncDirectory(directory) } catch { throw VaultError(.io, "cannot sync \(directory)") }
        }
    }

    public func delete(_ identity: ExtractIdentity) throws {
        let target = path(identity)
        guard unlink(target) == 0 || errno == ENOENT else { throw ioError("cannot delete \(target)") }
        do { try DurableFile.syncDirectory(DurableFile.parentDirectory(of: target)) } catch {}
    }
}

final class FileBlobUpload: BlobUpload {
    let file: AtomicOutputFile
    init(file: AtomicOutputFile) { self.file = file }
    func write(_ bytes: UnsafeRawBufferPointer) throws { try file.write(bytes) }
    func commit() throws { try file.commit() }
}
