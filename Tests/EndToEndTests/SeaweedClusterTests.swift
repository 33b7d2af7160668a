import Foundation
import KeyCustody
import Testing
import Vault
import VaultTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// SeaweedFS as a small cluster: one master, two volume servers, a filer and the S3 gateway, with replication `001`
/// (every volume has a copy on the other server of the rack). One volume server is stopped: every blob stored before
/// still reads back byte for byte. SeaweedFS refuses new writes while a `001` volume has only one live server (it
/// will not write a single copy), so an upload then fails with a precise error and leaves nothing behind; once a
/// replacement volume server joins, uploads land again while the stopped one stays down. Runs in the
/// PostgreSQL + S3 pass.
@Suite(.serialized) struct SeaweedClusterTests {
    final class Cluster {
        let directory: TemporaryDirectory
        var processes: [String: Int32] = [:]
        let s3Port: Int
        let masterPort: Int
        let access = "cluster" + Hex.encode(SecureRandom.bytes(count: 4))
        let secret = Hex.encode(SecureRandom.bytes(count: 16))

        init() throws {
            directory = try TemporaryDirectory("vault-seaweed-cluster")
            masterPort = try freeLoopbackPort()
            s3Port = try freeLoopbackPort()
            _ = try directory.write("s3.json", Array("""
                {"identities": [{"name": "vault", "credentials": [{"accessKey": "\(access)", "secretKey": "\(secret)"}],
                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
                """.utf8))
            // SeaweedFS addresses a server's gRPC port as HOST:PORT.GRPCPORT.
            let masterGRPC = try freeLoopbackPort()
            master = "127.0.0.1:\(masterPort).\(masterGRPC)"
            try start("master", ["master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(masterPort)",
                                 "-port.grpc=\(masterGRPC)", "-mdir=\(try dir("master"))",
                                 "-defaultReplication=001", "-volumeSizeLimitMB=64"])
            for name in ["volume-1", "volume-2"] { try startVolumeServer(name) }
            let filerPort = try freeLoopbackPort(), filerGRPC = try freeLoopbackPort()
            try start("filer", ["filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(filerPort)",
                                "-port.grpc=\(filerGRPC)", "-master=\(master)", "-defaultReplicaPlacement=001",
                                "-defaultStoreDir=\(try dir("filer"))"])
            try start("s3", ["s3", "-ip.bind=127.0.0.1", "-port=\(s3Port)", "-port.grpc=\(try freeLoopbackPort())",
                             "-port.iceberg=0", "-port.lance=0", "-filer=127.0.0.1:\(filerPort).\(filerGRPC)",
                             "-config=\(directory.file("s3.json"))"])
        }

        let master: String

        var volumePorts: [String: Int] = [:]

        func startVolumeServer(_ name: String) throws {
            let port = try freeLoopbackPort()
            volumePorts[name] = port
            try start(name, ["volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-port=\(port)",
                             "-port.grpc=\(try freeLoopbackPort())", "-dir=\(try dir(name))", "-max=30",
                             "-mserver=\(master)", "-dataCenter=dc1", "-rack=rack1"])
        }

        func dir(_ name: String) throws -> String {
            let path = directory.file(name)
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            return path
        }

        func start(_ name: String, _ arguments: [String]) throws {
            guard let weed = ProcessInfo.processInfo.environment["VAULT_TEST_WEED"] else {
                throw TestVectors.VectorError(message: "VAULT_TEST_WEED (SeaweedFS's weed binary) is not set")
            }
            processes[name] = try Subprocess.spawn(weed, arguments, environment: ["PATH": "/usr/bin:/bin"],
                                                   logPath: directory.file("\(name).log"))
        }

        func stop(_ name: String) {
            guard let pid = processes.removeValue(forKey: name) else { return }
            _ = Subprocess.stop(pid, signal: SIGKILL)
        }

        deinit { for name in Array(processes.keys) { stop(name) } }

        func store(attempts: Int = 8) throws -> S3BlobStore {
            var secretBytes = Array(secret.utf8)
            return S3BlobStore(configuration: try S3Configuration(
                url: "s3://cluster-test", endpoint: "http://127.0.0.1:\(s3Port)",
                credentials: S3Credentials(accessKeyID: access, secretAccessKey: SecureBytes(consuming: &secretBytes)),
                partSize: S3Configuration.minimumPartSize, maxAttempts: attempts, backoffMilliseconds: 200))
        }

        /// Waits until the master lists the named volume servers and S3 answers.
        func waitReady(_ names: [String]) async throws {
            for _ in 0..<240 {
                let status = try Binaries.run("/usr/bin/curl", ["-s", "http://127.0.0.1:\(masterPort)/dir/status"])
                let s3 = try Binaries.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}",
                                                            "http://127.0.0.1:\(s3Port)/"])
                if names.allSatisfy({ status.stdout.contains("\"Url\":\"127.0.0.1:\(volumePorts[$0] ?? 0)\"") }),
                    s3.stdout == "403" || s3.stdout == "200"
                {
                    return
                }
                try await Task.sleep(for: .milliseconds(250))
            }
            throw TestVectors.VectorError(message: "the SeaweedFS cluster did not come up: "
                + ((try? String(contentsOfFile: directory.file("master.log"), encoding: .utf8))?.suffix(800) ?? ""))
        }
    }

    func put(_ store: S3BlobStore, _ identity: ExtractIdentity, _ content: [UInt8]) async throws {
        let upload = try await store.create(identity)
        try await upload.write(content)
        try await upload.commit()
    }

    @Test("one volume server of two stopped (replication 001): reads succeed; uploads land with a replacement",
          .enabled(if: TestBackend.servicesPresent, TestBackend.servicesMissing), .timeLimit(.minutes(5)))
    func volumeServerDown() async throws { try await TestBackend.postgresS3.run {
        let cluster = try Cluster()
        try await cluster.waitReady(["volume-1", "volume-2"])
        let store = try cluster.store()
        try await store.createBucket()
        // Give the master a moment to grow the bucket's first volumes on both servers.
        try await Task.sleep(for: .milliseconds(1000))
        let force = try ForceID(force: "wmp"), dataset = try DatasetID(dataset: "crime")
        var stored: [(ExtractIdentity, [UInt8])] = []
        for seed in 0..<6 {
            // Small blobs (one PUT) and multipart ones (12 MiB in 5 MiB parts).
            let identity = ExtractIdentity(force: force, dataset: dataset, extract: .generate())
            let content = testBytes(count: seed % 2 == 0 ? 200_000 : 12 << 20, seed: UInt64(seed))
            try await put(store, identity, content)
            stored.append((identity, content))
        }
        cluster.stop("volume-2")
        for (identity, content) in stored {
            #expect(try await TestStorage.blobBytes(store, identity) == content, "\(identity.extract) after the stop")
        }
        // One live copy of a 001 volume: SeaweedFS will not write, and says so; nothing is left half-written.
        let refused = ExtractIdentity(force: force, dataset: dataset, extract: .generate())
        do {
            try await put(try cluster.store(attempts: 1), refused, testBytes(count: 100_000, seed: 99))
            Issue.record("SeaweedFS accepted a write with one of two replicas down")
        } catch let error as VaultError {
            #expect(error.code == .blobStoreUnavailable, "\(error)")
            #expect(error.message.contains("InternalError") || error.message.contains("HTTP 5"), "\(error.message)")
        }
        #expect(try await TestStorage.blobBytes(store, refused) == nil)
        // A replacement volume server joins (volume-2 stays down): new 001 volumes grow on the two live servers.
        try cluster.startVolumeServer("volume-3")
        try await cluster.waitReady(["volume-1", "volume-3"])
        for seed in 10..<14 {
            let identity = ExtractIdentity(force: force, dataset: dataset, extract: .generate())
            let content = testBytes(count: seed % 2 == 0 ? 300_000 : 11 << 20, seed: UInt64(seed))
            try await put(store, identity, content)
            #expect(try await TestStorage.blobBytes(store, identity) == content, "\(identity.extract) written while down")
        }
        for (identity, content) in stored {
            #expect(try await TestStorage.blobBytes(store, identity) == content, "\(identity.extract) at the end")
        }
    } }
}
