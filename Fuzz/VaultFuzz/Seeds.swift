import Dispatch
import KeyCustody
import Vault

#if canImport(Glibc)
import Glibc
#endif

/// Builds inputs in the layout `FuzzInput` reads them, so a seed says exactly what the target will see.
struct SeedBuilder {
    private(set) var bytes: [UInt8] = []

    mutating func byte(_ value: UInt8) { bytes.append(value) }
    mutating func bytes(_ values: [UInt8]) { bytes += values }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        bytes += (0..<T.bitWidth / 8).reversed().map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
    }

    /// The encoding of `FuzzInput.integer(in:)` for `value`.
    mutating func integer(_ value: Int, in range: ClosedRange<Int>) {
        let span = UInt64(range.upperBound - range.lowerBound)
        guard span > 0 else { return }
        let width = span <= 0xFF ? 1 : span <= 0xFFFF ? 2 : span <= 0xFF_FFFF ? 3 : 8
        let raw = UInt64(value - range.lowerBound)
        bytes += (0..<width).reversed().map { UInt8(truncatingIfNeeded: raw >> (8 * $0)) }
    }

    /// The encoding of `FuzzInput.chunk(upTo:)`.
    mutating func chunk(_ values: [UInt8], upTo maximum: Int) {
        integer(values.count, in: 0...maximum)
        bytes += values
    }
}

/// Seed corpora made by the vault's own code (`VAULT_FUZZ_SEEDS=DIR`): a real keyring, sealed files, wrapped keys,
/// audit exports, certificates, read requests and custody bodies, each valid, in `DIR/<target>/`. Keys are the
/// fixtures' (or a throwaway keyring's): nothing here is a secret.
enum Seeds {
    static func write(to directory: String) throws {
        let work = directory + "/.work"
        try makeDirectory(directory)
        try makeDirectory(work)
        defer { removeTree(work) }
        var seeds: [String: [(String, [UInt8])]] = [:]
        func add(_ target: String, _ name: String, _ bytes: [UInt8]) {
            seeds[target, default: []].append((name, bytes))
        }

        // A keyring with every kind and state of key, at the cheapest Argon2id limits libsodium allows.
        let passphrase = secure(Array("fuzz-seed-passphrase-not-a-secret".utf8))
        let cheap = Argon2id.Parameters(opslimit: 1, memlimit: 8192)
        let keyringPath = work + "/wmp.keyring"
        let custody = try KeyringCustody.create(at: keyringPath, force: Fixtures.force, passphrase: passphrase,
                                                parameters: cheap, logger: Fixtures.logger)
        let identity = ExtractIdentity(force: Fixtures.force, dataset: Fixtures.dataset, extract: Fixtures.extract)
        let first = try blocking { try await custody.generateDataKey(for: identity) }
        _ = try blocking { try await custody.rotate() }
        let archive = try blocking { try await custody.createArchiveKey(for: Fixtures.extract) }
        let rewrap = Justification(principal: "vaultd", purpose: .rewrap, requestID: "seed")
        let archived = try blocking {
            try await custody.rewrap(first.wrapped, context: identity, to: archive, justification: rewrap)
        }
        try blocking { try await custody.retire(.master(force: Fixtures.force, version: 1)) }
        _ = try blocking { try await custody.rotate() }
        try blocking { try await custody.destroy(.master(force: Fixtures.force, version: 1)) }
        let current = try blocking { try await custody.generateDataKey(for: identity) }
        let keyringBytes = try readFile(keyringPath)
        add("keyring", "keyring", keyringBytes)
        add("json", "keyring", [0] + keyringBytes)

        // Its decrypted contents, as the keyring-contents target seals them again.
        let outer = try JSONFields(try JSONParser.parse(keyringBytes), context: "keyring")
        let sealed = try outer.base64("sealed")
        let sealingKey = try Argon2id.deriveKey(passphrase: passphrase, salt: try outer.object("kdf").base64("salt"),
                                                parameters: cheap)
        let contents = try XChaCha20Poly1305.open(
            key: sealingKey, nonce: Array(sealed.prefix(XChaCha20Poly1305.nonceByteCount)),
            sealed: Array(sealed.dropFirst(XChaCha20Poly1305.nonceByteCount)),
            aad: Array("vault-keyring-v1:\(Fixtures.force)".utf8)
        ).withUnsafeBytes { Array($0) }
        add("keyring-contents", "keys", [0, 0x10, 0x21, 0x42, 0x83] + contents)
        add("keyring-contents", "keys-handed-over", [1, 0x03, 0x12, 0x20, 0x31] + contents)
        add("json", "keyring-contents", [1] + contents)

        // Wrapped keys under a master key and an archive key.
        for (name, wrapped) in [("master", current.wrapped), ("archive", archived), ("first", first.wrapped)] {
            add("wrapped-key", name, [0] + Array(wrapped.canonicalText.utf8))
            add("json", "wrapped-\(name)", [0] + Array(wrapped.canonicalText.utf8))
        }
        add("wrapped-key", "archive-retrieval", [1] + Array(archived.canonicalText.utf8))

        // Sealed files of a few sizes around the chunk size.
        for size in [0, 1, 100, Cobblestone.chunkByteCount - 1, Cobblestone.chunkByteCount] {
            let plain = work + "/plain-\(size)", sealed = work + "/sealed-\(size).vault"
            try writeFile(plain, (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            _ = try blocking {
                try await SealedFile.seal(inputPath: plain, outputPath: sealed, dataset: Fixtures.dataset,
                                          custody: custody, extract: ExtractID.generate())
            }
            let file = try readFile(sealed)
            add("sealed-file", "sealed-\(size)", file)
            if size == 100, let newline = file.firstIndex(of: 0x0A) {
                add("json", "sealed-header", [0] + Array(file[..<newline]))
            }
        }

        // Cobblestone: the vault's own ciphertexts in raw layout, and tamper-mode inputs.
        let key = [UInt8](repeating: 0x11, count: 32)
        let context = identity.payloadContext
        for size in [0, 1, 16_383, 16_384, 16_385, 40_000] {
            let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0) }
            var random = SplitMix(seed: UInt64(size))
            let ciphertext = CobblestoneTarget.encrypt(key: secure(key), context: context, plaintext: plaintext,
                                                       random: &random)
            var raw = SeedBuilder()
            raw.byte(0)
            raw.bytes(key)
            raw.chunk(context, upTo: 96)
            raw.integer(UInt64(size))
            raw.bytes(ciphertext)
            add("cobblestone", "raw-\(size)", raw.bytes)
        }
        for (index, alteration) in CobblestoneTarget.Alteration.allCases.enumerated() {
            var tamper = SeedBuilder()
            tamper.byte(1)
            tamper.bytes(key)
            tamper.chunk(context, upTo: 96)
            tamper.integer([0, 100, 16_384, 16_500, 33_000, 40_000, 49_152, 65_000][index % 8],
                           in: 0...(4 * Cobblestone.chunkByteCount + 1000))
            tamper.byte(alteration.rawValue)
            tamper.integer(UInt32(index * 7919))
            tamper.byte(UInt8(truncatingIfNeeded: index * 37))
            tamper.integer(UInt64(index))
            tamper.bytes(Array("police data vault".utf8))
            add("cobblestone", "tamper-\(alteration)", tamper.bytes)
        }

        // Audit exports, signed with the fixture keys: a whole chain, a partial one anchored by a checkpoint,
        // one with witness cosignatures, and one checked against a head verified before.
        let export = try auditExport(records: 6, from: 1, cosign: true)
        add("audit-export", "whole", [0] + export.lines)
        add("audit-export", "whole-witnessed", [2] + export.lines)
        add("audit-export", "resigned", [1] + export.lines)
        add("audit-export", "since-head", [4] + Array("\(export.head)\n".utf8) + export.lines)
        add("audit-export", "partial", [0] + (try auditExport(records: 4, from: 5, cosign: false)).lines)
        add("audit-export", "empty", [0] + (try auditExport(records: 0, from: 3, cosign: false)).lines)
        add("json", "audit-record", [0] + export.firstRecord)

        // Destruction certificates, complete and pending, and a re-issue.
        let ticket = ShredTicket(
            record: ExtractRecord(identity: identity, state: .archived, wrappedKey: archived, plaintextSize: 100,
                                  ciphertextSize: 172, ciphertextSHA256: [UInt8](repeating: 0xAB, count: 32),
                                  source: .sealed, uploadedBy: "ingest-wmp", createdAt: 1_767_225_600,
                                  committedAt: 1_767_225_700, archivedAt: 1_769_904_000, expiresAt: 1_777_680_000),
            reason: .early, note: "duplicate upload", requestedBy: "custodian-wmp", startedAt: 1_770_000_000)
        let lineage = [
            LineageEntry(kek: .master(force: Fixtures.force, version: 1), since: 1_767_225_700, until: 1_769_904_000),
            LineageEntry(kek: archive, since: 1_769_904_000, until: nil),
        ]
        let pending = try DestructionCertificate.issue(
            ticket: ticket, shreddedAt: 1_770_000_100, keksDestroyed: [archive], lineage: lineage,
            keyStates: [archive: .destroyed, .master(force: Fixtures.force, version: 1): .retired],
            signer: Fixtures.auditSigner, now: 1_770_000_100)
        let complete = try pending.reissued(keyStates: [archive: .destroyed,
                                                    .master(force: Fixtures.force, version: 1): .destroyed],
                                        signer: Fixtures.auditSigner, now: 1_770_100_000)
        add("destruction-certificate", "pending", [0, 0x1B, 0x2E, 0, 0] + pending.bytes)
        add("destruction-certificate", "complete", [0, 0, 0, 0, 0] + complete.bytes)
        add("destruction-certificate", "resigned", [1, 0xFF, 0, 0, 0] + pending.bytes)
        add("json", "certificate", [0] + pending.bytes.dropLast())

        // Signed read requests: envelope, header value, the principal's key file.
        let request = ReadRequest(force: Fixtures.force, dataset: Fixtures.dataset, principal: "analyst-wmp",
                                  purpose: .useCaseRead, useCase: "serious-violence", issued: 1_780_000_000,
                                  nonce: [UInt8](repeating: 9, count: 16))
        let signed = SignedReadRequest(signing: request, with: Fixtures.principalKey)
        var byExtract = request
        byExtract.extract = Fixtures.extract.rawValue
        byExtract.purpose = .archiveRetrieval
        add("read-request", "envelope", [0] + signed.envelope.canonicalBytes())
        let signedByExtract = SignedReadRequest(signing: byExtract, with: Fixtures.principalKey)
        add("read-request", "envelope-resigned", [0x80] + signedByExtract.envelope.canonicalBytes())
        add("read-request", "header", [1] + Array(signed.headerValue.utf8))
        let principalKey = PrincipalSigningKey(principal: "analyst-wmp", key: Fixtures.principalKey)
        add("read-request", "principal-key", [2] + principalKey.document.withUnsafeBytes { Array($0) })
        add("json", "read-request", [0] + signed.envelope.canonicalBytes())

        // Custody service bodies, as RemoteCustody and the CLI send them, and its answers.
        let justification = Justification(principal: "analyst-wmp", useCase: "serious-violence", purpose: .useCaseRead,
                                          requestID: "req-1", signedRequest: signed)
        let wrappedJSON = current.wrapped.json
        let body: [CustodyTargets.Body: [JSONValue]] = [
            .generate: [.object(["context": CustodyWire.json(identity), "justification": CustodyWire.json(
                Justification(principal: "vaultd", purpose: .upload, requestID: "req-0"))])],
            .unwrap: [.object(["wrapped": wrappedJSON, "context": CustodyWire.json(identity),
                               "justification": CustodyWire.json(justification)])],
            .rewrap: [.object([
                "to": .string(archive.description), "justification": CustodyWire.json(rewrap),
                "items": .array([.object(["wrapped": wrappedJSON, "context": CustodyWire.json(identity)])]),
            ])],
            .archiveKey: [.object(["extract": .string(Fixtures.extract.rawValue)])],
            .retire: [.object(["kek": .string("fmk:wmp:2")])],
            .destroy: [.object(["keks": .array([.string("fmk:wmp:1"), .string(archive.description)])])],
            .useCase: [UseCaseRequest(description: "SV duty", lawfulBasis: "PCSC Act 2022 s.8",
                                      datasets: [Fixtures.dataset], principals: ["analyst-wmp"],
                                      validFrom: 1_767_225_600, validUntil: 1_798_761_600).json],
            .principalKey: [.object(["public_key": .string(Fixtures.principalKey.publicKey.pem)])],
            .approval: [.object(["extract": .string(Fixtures.extract.rawValue), "analyst": .string("analyst-wmp"),
                                 "use_case": .string("serious-violence")])],
            .witness: [WitnessSubmission(oldSize: 0, checkpoint: export.lastCheckpoint,
                                         records: export.records).json],
            .clearAlarms: [.object(["reason": .string("investigated: a test submission")])],
            .signedUseCase: [try SignedUseCase(useCase: UseCase(
                force: Fixtures.force, id: try ResourceID("serious-violence"), description: "SV duty",
                lawfulBasis: "PCSC Act 2022 s.8", datasets: [Fixtures.dataset], principals: ["analyst-wmp"],
                validFrom: 1_767_225_600, validUntil: nil, revokedAt: nil, updatedAt: 1_767_225_600),
                version: 3, signer: Fixtures.witnessSigner).json],
            .cosignature: [try Cosignature(checkpoint: export.lastCheckpoint, cosigned: 1_780_000_100,
                                       signer: Fixtures.witnessSigner).json],
            .documents: [
                PrincipalKeyDocument(principal: "analyst-wmp", key: Fixtures.principalKey.publicKey.fingerprint,
                                     registeredBy: "custodian-wmp", registeredAt: 1_780_000_000).json,
                WitnessAlarmDocument(id: 3, reason: "fork", message: "the log was rewritten", raisedAt: 1_780_000_000,
                                     clearedAt: 1_780_003_600, clearedBy: "custodian-wmp").json,
                ApprovalCountDocument(approvals: 2).json, ClearedAlarmsDocument(cleared: 1).json,
            ],
            .keysAnswer: [.object(["keys": .array(try blocking { try await custody.status() }.map(CustodyWire.json)),
                                   "active": .string("fmk:wmp:3")])],
            .rewrapAnswer: [.object(["results": .array([.object(["wrapped": archived.json]),
                                                        .object(["error": .object(["code": .string("key_destroyed"),
                                                                                   "message": .string("gone")])])])])],
        ]
        for (kind, documents) in body {
            for (index, document) in documents.enumerated() {
                add("custody-request", "\(kind)-\(index)", [kind.rawValue] + document.canonicalBytes())
            }
        }
        add("custody-request", "signedUseCase-resigned", [CustodyTargets.Body.signedUseCase.rawValue | 0x80]
            + (body[.signedUseCase]![0]).canonicalBytes())
        add("custody-request", "principal-pem", [CustodyTargets.Body.principalKey.rawValue]
            + Array(Fixtures.witnessSigner.publicKey.pem.utf8))
        add("custody-request", "since-seq", [CustodyTargets.Body.auditSince.rawValue] + Array("42".utf8))
        add("custody-request", "since-time", [CustodyTargets.Body.auditSince.rawValue]
            + Array("2026-01-31T00:00:00Z".utf8))

        // HTTP ranges against bodies of a few sizes.
        for (size, header) in [(1000, "bytes=0-99"), (40_000, "bytes=16384-32767"), (1000, "bytes=900-"),
                               (1000, "bytes=-500"), (0, "bytes=0-0"), (1 << 40, "bytes=1099511627775-")] {
            var range = SeedBuilder()
            range.integer(UInt64(size))
            range.bytes(Array(header.utf8))
            add("byte-range", header.replacingSlashes, range.bytes)
        }

        // Console forms as browsers send them.
        for (index, body) in ["signin_csrf=ab12&token=vt_0123", "csrf=00ff&confirm=yes",
                              "csrf=1&id=burglary-review&description=Hot+spots+%26+more&lawful_basis=CDA+1998+s.115"
                                + "&datasets=crime&datasets=custody&principals=analyst-1%2C+analyst-2"
                                + "&valid_from=2026-12-07T10%3A00&valid_until=",
                              "a=%E2%9C%93&b=%ZZ&=&&c"].enumerated() {
            add("console-form", "form-\(index)", Array(body.utf8))
        }

        // Configuration files: the documented examples, and the custody file of the checkout when run from it.
        for (index, text) in [serverConfiguration, custodyConfiguration, custodyServiceConfiguration].enumerated() {
            add("config", "example-\(index)", [UInt8(index)] + Array(text.utf8))
        }
        if let keys = try? readFile("Keys.example") { add("config", "keys-example", [1] + keys) }

        // JSON edge cases beside the documents above.
        let edges = ["{\"a\":[1,-2,true,false,null,\"\\u00e9\\ud83d\\ude00\\n\"],\"b\":{}}", "[[[[[[[[]]]]]]]]",
                     "\"\\u0000\\u001f\\\"\\\\\\/\"", "-9223372036854775808", "{\"key\":\"AAAA\"}"]
        for (index, text) in edges.enumerated() {
            add("json", "edge-\(index)", [index == 4 ? 1 : 0] + Array(text.utf8))
        }

        for (target, files) in seeds {
            try makeDirectory(directory + "/" + target)
            for (name, bytes) in files { try writeFile("\(directory)/\(target)/\(name)", bytes) }
        }
    }

    /// An export of `records` records from seq `from` (with the checkpoint before it when `from > 1`), checkpoints
    /// every three records and at the end, cosigned when `cosign`, and the signed seal.
    static func auditExport(records count: Int, from: Int64, cosign: Bool) throws
        -> (lines: [UInt8], head: String, firstRecord: [UInt8], records: [[UInt8]], lastCheckpoint: AuditCheckpoint)
    {
        let signer = Fixtures.auditSigner
        let force = Fixtures.force
        var lines: [[UInt8]] = []
        var chain: [AuditRecord] = []
        var prev = AuditRecord.genesis
        var time: UnixTime = 1_780_000_000
        // The records before the export, to anchor a partial one.
        for seq in Int64(1)..<from {
            let record = AuditRecord(entry: entry(seq), seq: seq, time: time, prev: prev)
            prev = record.hash
            time += 60
            chain.append(record)
        }
        let header = AuditExportHeader(force: force, firstSeq: from, lastSeq: from + Int64(count) - 1,
                                       exportedAt: 1_790_000_000, keyFingerprint: signer.publicKey.fingerprint)
        lines.append(header.json.canonicalBytes())
        var lastCheckpoint = try signer.checkpoint(force: force, seq: max(1, from - 1), hash: prev, time: time)
        if from > 1 { lines.append(lastCheckpoint.json.canonicalBytes()) }
        let firstPrev = prev
        var exported: [[UInt8]] = []
        for index in 0..<count {
            let seq = from + Int64(index)
            let record = AuditRecord(entry: entry(seq), seq: seq, time: time, prev: prev)
            prev = record.hash
            time += 60
            lines.append(record.line)
            exported.append(record.line)
            if index % 3 == 2 || index == count - 1 {
                lastCheckpoint = try signer.checkpoint(force: force, seq: seq, hash: record.hash, time: time)
                lines.append(lastCheckpoint.json.canonicalBytes())
                if cosign {
                    lines.append(try Cosignature(checkpoint: lastCheckpoint, cosigned: time + 5,
                                             signer: Fixtures.witnessSigner).json.canonicalBytes())
                }
            }
        }
        let seal = try signer.seal(force: force, firstSeq: from, lastSeq: from + Int64(count) - 1, firstPrev: firstPrev,
                               lastHash: prev, time: 1_790_000_000)
        lines.append(seal.json.canonicalBytes())
        return (lines.flatMap { $0 + [0x0A] }, "\(from + Int64(count) - 1):\(prev)", exported.first ?? [],
                exported, lastCheckpoint)
    }

    static func entry(_ seq: Int64) -> AuditEntry {
        let actions = ["upload", "read", "use-case.put", "keys.rotate", "archive.read", "shred"]
        let action = actions[Int(seq) % actions.count]
        return AuditEntry(force: Fixtures.force, principal: "analyst-wmp", action: action,
                          target: "wmp/crime-records", dataset: Fixtures.dataset,
                          useCase: action.hasSuffix("read") ? "serious-violence" : nil,
                          outcome: seq % 4 == 3 ? .denied : .allowed, detail: ["bytes": .integer(seq * 1000)],
                          requestID: "req-\(seq)")
    }

    static let serverConfiguration = """
        listen = "127.0.0.1:8443"
        data_dir = "vault-data"
        custody = "Keys.example"
        audit_checkpoint_seconds = 60
        shred_interval_seconds = 3600
        retrieval_grant_hours = 24
        rewrap_batch_size = 2000
        catalog = "postgres://vault@db1:5432/vault"
        instance = "vaultd-a"
        job_lease_seconds = 30
        use_case_sync_seconds = 10

        [blobs]
        url = "s3://vault-blobs/prod"
        endpoint = "https://s3.internal:9000"
        region = "us-east-1"
        credentials_file = "s3.credentials"
        part_size_mib = 16
        upload_concurrency = 4

        [rotation]
        wmp = 90

        [tls]
        certificate = "vault-data/tls/server.pem"
        private_key = "vault-data/tls/server.key"
        client_ca = "vault-data/tls/ca.pem"
        client_crl = "vault-data/tls/ca.crl"

        [[principals]]
        id = "analyst-1"
        analyst = ["wmp"]

        [[principals]]
        id = "ops"
        ops = ["wmp", "gmp"]
        auditor = ["wmp"]

        """

    static let custodyConfiguration = """
        [forces.wmp]
        backend = "keyring"
        keyring = "keyrings/wmp.keyring"
        passphrase_env = "VAULT_PASSPHRASE_WMP"

        [forces.nyp]
        backend = "pkcs11"
        module = "/usr/lib/softhsm/libsofthsm2.so"
        token = "nyp-vault"
        pin_file = "/run/secrets/nyp-pin"
        keyring = "keyrings/nyp.keyring"
        passphrase_file = "/run/secrets/nyp"

        [forces.gmp]
        backend = "remote"
        url = "https://custody.gmp.example:9443/"
        ca = "gmp/ca.pem"
        client_certificate = "gmp/platform.pem"
        client_key = "gmp/platform.key"
        custody_key = "gmp/custody.pub"

        """

    static let custodyServiceConfiguration = """
        listen = "0.0.0.0:9443"
        data_dir = "custody-data"
        force = "gmp"
        custody = "custody-keys.toml"
        stop_unwraps_on_alarm = true
        sealed_upload_window_hours = 48
        log_sync = "every-request"

        [tls]
        certificate = "tls/custody.pem"
        private_key = "tls/custody.key"
        platform_ca = "tls/platform-ca.pem"

        [[principals]]
        id = "custodian-gmp"
        custodian = ["gmp"]

        [[principals]]
        id = "dpo-gmp"
        auditor = ["gmp"]

        """

    // MARK: Files and async set-up

    static func secure(_ bytes: [UInt8]) -> SecureBytes { bytes.withUnsafeBytes { SecureBytes(copying: $0) } }

    /// Waits for async set-up code (keyring and sealing calls) on this thread.
    static func blocking<T>(_ body: @escaping () async throws -> T) throws -> T {
        let box = ResultBox<T>()
        let done = DispatchSemaphore(value: 0)
        let operation = UnsafeSendable(body)
        Task {
            do { box.result = .success(try await operation.value()) } catch { box.result = .failure(error) }
            done.signal()
        }
        done.wait()
        return try box.result!.get()
    }

    static func makeDirectory(_ path: String) throws {
        guard mkdir(path, 0o755) == 0 || errno == EEXIST else { throw FuzzError("cannot create \(path)") }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw FuzzError("cannot create \(path)") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw FuzzError("short write to \(path)") }
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        let file = try InputFile(path: path)
        var bytes = [UInt8](repeating: 0, count: Int(file.size))
        if !bytes.isEmpty { try bytes.withUnsafeMutableBytes { try file.read(at: 0, into: $0) } }
        return bytes
    }

    static func removeTree(_ path: String) {
        guard let directory = opendir(path) else { return }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != ".", name != ".." { unlink(path + "/" + name) }
        }
        closedir(directory)
        rmdir(path)
    }
}

extension String {
    /// A seed file name for a header text.
    var replacingSlashes: String {
        String(map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" })
    }
}
