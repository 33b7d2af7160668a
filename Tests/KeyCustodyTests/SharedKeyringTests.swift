import Foundation
import KeyCustody
import Testing
import VaultTestSupport

/// Shared mode: several vaultd instances serve one keyring file (DESIGN section 9, scale-out). Each change starts
/// from the file; the others see it; an offline writer is kept out while any instance serves.
@Suite("Keyring custody in shared mode")
struct SharedKeyringTests {
    func openShared(_ directory: TemporaryDirectory) throws -> KeyringCustody {
        try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                expectedForce: try ForceID(force: "wmp"), mode: .shared, logger: testLogger)
    }

    @Test("two instances: a rotation by one is used by the other; archive keys created on both are kept")
    func changesMeet() async throws {
        let directory = try TemporaryDirectory()
        _ = try makeKeyring(directory)  // released at once: the creator goes away
        let a = try openShared(directory)
        let b = try openShared(directory)
        // B unwraps at once a key A wraps under the version A just created (an unknown key is looked for again).
        let rotated = try await a.rotate()
        #expect(rotated.description == "fmk:wmp:2")
        let ctx = try context()
        let dataKey = try await a.generateDataKey(for: ctx)
        #expect(dataKey.wrapped.kek == rotated)
        #expect(try await b.unwrap(dataKey.wrapped, context: ctx, justification: readJustification) == dataKey.key)
        // Within a second B also wraps under the new version.
        try await Task.sleep(for: .milliseconds(1100))
        #expect(try await b.activeMasterKey() == rotated)
        // Changes on both sides are merged, not overwritten: each starts from the file.
        let fromA = try await a.createArchiveKey(for: .generate())
        let fromB = try await b.createArchiveKey(for: .generate())
        let reopened = try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                               logger: testLogger)
        let ids = Set(try await reopened.status().map(\.id))
        #expect(ids.contains(fromA) && ids.contains(fromB) && ids.contains(rotated))
        // A key B destroys can no longer be used by A.
        try await b.destroy(fromA)
        try await Task.sleep(for: .milliseconds(1100))
        #expect(try await a.status().first { $0.id == fromA }?.state == .destroyed)
    }

    @Test("while an instance serves a keyring, an offline writer is refused; afterwards it may write")
    func servingLock() throws {
        let directory = try TemporaryDirectory()
        _ = try makeKeyring(directory)
        var serving: KeyringCustody? = try openShared(directory)
        #expect(serving != nil)
        let refused = #expect(throws: CustodyError.self) {
            try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                    mode: .readWrite, logger: testLogger)
        }
        #expect(refused?.code == .keyringLocked)
        #expect(refused?.message.contains("served by vaultd") == true, "\(String(describing: refused?.message))")
        serving = nil
        _ = try KeyringCustody.open(at: directory.file("wmp.keyring"), passphrase: secret(passphrase),
                                    mode: .readWrite, logger: testLogger)
    }
}
