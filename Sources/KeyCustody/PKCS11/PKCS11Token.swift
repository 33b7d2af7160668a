internal import CPKCS11
import Logging
import Synchronization

/// One token of a PKCS#11 module, found by its label, with a pool of logged-in sessions.
///
/// PKCS#11 sessions are single-threaded, so every operation borrows a session of its own and returns it. When the
/// token reports a lost session, a lost login or a missing device (`CKR_SESSION_HANDLE_INVALID`,
/// `CKR_USER_NOT_LOGGED_IN`, `CKR_TOKEN_NOT_PRESENT`, ...), the pool is dropped, the token is looked up again by label
/// (its slot id may have changed), a new session logs in, and the operation is retried. The PIN stays in secure
/// memory for that re-login; it is never logged or put in an error, and once the token refuses it no further login
/// is attempted.
final class PKCS11Token: @unchecked Sendable {
    let module: PKCS11Module
    let label: String
    private let pin: SecureBytes
    private let logger: Logger

    private struct Pool {
        /// The module generation these sessions belong to.
        var generation = 0
        var slot: CK_SLOT_ID?
        var idle: [CK_SESSION_HANDLE] = []
        /// Object handles by label; handles of token objects stay valid across the sessions of one login.
        var handles: [String: CK_OBJECT_HANDLE] = [:]
    }

    private let pool = Mutex(Pool())
    /// Set when the token refused the PIN: no further login is tried (each wrong attempt brings the token closer to
    /// locking the PIN) until the custody is opened again with a new PIN.
    private let refusedPIN = Mutex<CustodyError?>(nil)
    /// One login at a time, so a pool reset does not send the PIN many times at once.
    private let loginLock = Mutex(())
    /// Sessions kept open between operations; more may be open while many operations run at once.
    static let idleSessionLimit = 16

    /// Finds the token and logs in once, so a wrong PIN or a missing token is reported when the custody opens.
    init(module: PKCS11Module, label: String, pin: SecureBytes, logger: Logger) throws {
        self.module = module
        self.label = label
        self.pin = pin
        self.logger = logger
        try withSession("open") { _ in }
    }

    // MARK: Sessions

    /// Runs `body` with a logged-in read-write session. A lost session is re-established and the operation
    /// retried; if the token still fails, the module is restarted (to find a token that was removed and put back)
    /// and the operation tried a last time. Otherwise the error stands: nothing was changed.
    ///
    /// Every call into the module happens under the module's shared lock; a restart takes it exclusively, so no
    /// call is ever in flight while the module is finalised.
    func withSession<R>(_ operation: String, _ body: (CK_SESSION_HANDLE) throws -> R) throws -> R {
        var attempt = 0
        while true {
            let outcome: Result<R, CustodyError> = try module.sharing { generation in
                let session: CK_SESSION_HANDLE
                do {
                    session = try acquire(generation: generation)
                } catch let error as CustodyError where attempt < 2 && error.code == .tokenUnavailable {
                    return .failure(error)
                }
                do {
                    let result = try body(session)
                    release(session, generation: generation)
                    return .success(result)
                } catch let error as CustodyError where attempt < 2 && PKCS11Error.losesSession(error.code,
                                                                                                  error.underlying) {
                    // The session is void or suspect: close it rather than pool it.
                    if let close = module.functions.pointee.C_CloseSession { _ = close(session) }
                    return .failure(error)
                } catch {
                    release(session, generation: generation)
                    throw error
                }
            }
            switch outcome {
            case .success(let result): return result
            case .failure(let error):
                attempt += 1
                logger.warning(attempt == 1 ? "PKCS#11 session lost; logging in to the token again"
                                   : "PKCS#11 token still failing; restarting the module to look for it again",
                               metadata: ["token": "\(label)", "operation": "\(operation)",
                                          "cause": "\(error.underlying ?? error.code.rawValue)"])
                let generation = module.generation
                reset()
                if attempt == 2 { module.restart(after: generation) }
            }
        }
    }

    private func acquire(generation: Int) throws -> CK_SESSION_HANDLE {
        if let refused = refusedPIN.withLock({ $0 }) { throw refused }
        let (idle, known) = pool.withLock { pool -> (CK_SESSION_HANDLE?, CK_SLOT_ID?) in
            // After a module restart every earlier session and handle is void.
            if pool.generation != generation { pool = Pool(generation: generation) }
            return (pool.idle.popLast(), pool.slot)
        }
        if let idle { return idle }
        let slot = try known ?? findSlot()
        pool.withLock { if $0.generation == generation { $0.slot = slot } }
        var session = CK_SESSION_HANDLE(0)
        let open = try module.function(\.C_OpenSession, "C_OpenSession")
        try PKCS11Error.check(open(slot, CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &session),
                              "C_OpenSession", context: "token \(label)")
        do {
            try login(session)
        } catch {
            if let close = module.functions.pointee.C_CloseSession { _ = close(session) }
            throw error
        }
        return session
    }

    private func login(_ session: CK_SESSION_HANDLE) throws {
        let login = try module.function(\.C_Login, "C_Login")
        try loginLock.withLock { _ in
            if let refused = refusedPIN.withLock({ $0 }) { throw refused }
            let rv = pin.withUnsafeBytes { bytes in
                login(session, CK_USER_TYPE(CKU_USER),
                      UnsafeMutablePointer(mutating: bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)),
                      CK_ULONG(bytes.count))
            }
            // The login is per application and token: a second session finds it already done.
            if rv == CK_RV(CKR_USER_ALREADY_LOGGED_IN) { return }
            do {
                try PKCS11Error.check(rv, "C_Login", context: "token \(label)")
            } catch let error as CustodyError where error.code == .wrongPIN || error.code == .pinLocked {
                refusedPIN.withLock { $0 = error }
                throw error
            }
        }
    }

    private func release(_ session: CK_SESSION_HANDLE, generation: Int) {
        let keep = pool.withLock { pool -> Bool in
            guard pool.generation == generation, pool.idle.count < Self.idleSessionLimit else { return false }
            pool.idle.append(session)
            return true
        }
        if !keep, let close = module.functions.pointee.C_CloseSession { _ = close(session) }
    }

    /// Forgets every session, handle and the slot, after the token reported them lost.
    private func reset() {
        _ = try? module.sharing { generation in
            let idle = pool.withLock { pool -> [CK_SESSION_HANDLE] in
                defer { pool = Pool(generation: generation) }
                return pool.generation == generation ? pool.idle : []
            }
            if let close = module.functions.pointee.C_CloseSession {
                for session in idle { _ = close(session) }
            }
        }
    }

    /// The slot holding an initialised token with this label.
    private func findSlot() throws -> CK_SLOT_ID {
        for (slot, info) in try Self.tokens(in: module) where info.label == label {
            return slot
        }
        throw CustodyError(.tokenUnavailable,
                           "no initialised token labelled \"\(label)\" is present in PKCS#11 module \(module.path)")
    }

    struct TokenInfo {
        let label: String
        let initialized: Bool
        let loginRequired: Bool
    }

    /// Every slot with a token present, and what the token says about itself.
    static func tokens(in module: PKCS11Module) throws -> [(CK_SLOT_ID, TokenInfo)] {
        let list = try module.function(\.C_GetSlotList, "C_GetSlotList")
        let tokenInfo = try module.function(\.C_GetTokenInfo, "C_GetTokenInfo")
        var count = CK_ULONG(0)
        try PKCS11Error.check(list(CK_BBOOL(CK_TRUE), nil, &count), "C_GetSlotList")
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        if count > 0 { try PKCS11Error.check(list(CK_BBOOL(CK_TRUE), &slots, &count), "C_GetSlotList") }
        var result: [(CK_SLOT_ID, TokenInfo)] = []
        for slot in slots.prefix(Int(count)) {
            var info = CK_TOKEN_INFO()
            guard tokenInfo(slot, &info) == CK_RV(CKR_OK) else { continue }
            let label = withUnsafeBytes(of: info.label) { raw in
                String(decoding: raw, as: UTF8.self)
            }.trimmingTrailingSpaces()
            result.append((slot, TokenInfo(label: label,
                                           initialized: info.flags & CK_FLAGS(CKF_TOKEN_INITIALIZED) != 0,
                                           loginRequired: info.flags & CK_FLAGS(CKF_LOGIN_REQUIRED) != 0)))
        }
        return result
    }

    // MARK: Objects

    /// The handle of the secret key labelled `label`, from the cache or the token; nil when there is none. A key
    /// found on the token is used only if it was generated there and can never leave it (`checkProtection`), unless
    /// `checkingProtection` is false (to destroy it).
    func findKey(_ label: String, session: CK_SESSION_HANDLE, checkingProtection: Bool = true) throws
        -> CK_OBJECT_HANDLE?
    {
        if let cached = pool.withLock({ $0.handles[label] }) { return cached }
        let found = try findObjects(session: session, template: Self.secretKeyTemplate(label: label))
        guard found.count <= 1 else {
            throw CustodyError(.keyringInconsistent,
                               "token \(self.label) holds \(found.count) keys labelled \(label); expected one")
        }
        guard let handle = found.first else { return nil }
        guard checkingProtection else { return handle }
        try checkProtection(handle, label: label, session: session)
        pool.withLock { $0.handles[label] = handle }
        return handle
    }

    /// The attributes a key the vault generated on the token has, and an imported or once-exportable key lacks.
    static let protection: [(type: CK_ATTRIBUTE_TYPE, name: String, expected: Bool)] = [
        (CK_ATTRIBUTE_TYPE(CKA_LOCAL), "CKA_LOCAL", true),
        (CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), "CKA_SENSITIVE", true),
        (CK_ATTRIBUTE_TYPE(CKA_ALWAYS_SENSITIVE), "CKA_ALWAYS_SENSITIVE", true),
        (CK_ATTRIBUTE_TYPE(CKA_NEVER_EXTRACTABLE), "CKA_NEVER_EXTRACTABLE", true),
        (CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), "CKA_EXTRACTABLE", false),
    ]

    /// Refuses, and reports, a key object the vault did not generate on the token as one that never leaves it:
    /// someone with the PIN could have imported a key they know under a vault key's label (so that what it wraps,
    /// an archive's key say, stays readable to them after shredding).
    func checkProtection(_ handle: CK_OBJECT_HANDLE, label: String, session: CK_SESSION_HANDLE) throws {
        let values = try flags(Self.protection.map(\.type), of: handle, session: session)
        let wrong = zip(Self.protection, values).filter { $0.1 != $0.0.expected }
            .map { "\($0.0.name) is not \($0.0.expected)" }
        guard !wrong.isEmpty else { return }
        logger.error("refusing a key object the vault did not generate on the token", metadata: [
            "token": "\(self.label)", "key": "\(label)", "attributes": "\(wrong.joined(separator: ", "))",
        ])
        throw CustodyError(.keyObjectUntrusted,
                           "key object \(label) on token \(self.label) was not generated on the token as a key that "
                               + "never leaves it (\(wrong.joined(separator: ", "))): the vault refuses it, since "
                               + "someone may hold a copy; remove it with the token's tools and retry")
    }

    /// Like `findKey`, but a missing key is an error naming it. With `verified`, a cached handle is first checked
    /// to still carry `label`: a token may reuse the handle of an object deleted behind the vault's back, and
    /// wrapping under whatever key now has that handle would bind data to the wrong key.
    func key(_ label: String, session: CK_SESSION_HANDLE, verified: Bool = false) throws -> CK_OBJECT_HANDLE {
        if verified, let cached = pool.withLock({ $0.handles[label] }) {
            let current = try? attribute(CK_ATTRIBUTE_TYPE(CKA_LABEL), of: cached, session: session)
            if current != Array(label.utf8) { forget(label) }
        }
        guard let handle = try findKey(label, session: session) else {
            throw CustodyError(.keyObjectMissing,
                               "key \(label) is recorded by the vault but its object is missing from token "
                                   + "\(self.label): it was deleted outside the vault, and what it wrapped cannot be "
                                   + "unwrapped")
        }
        return handle
    }

    func forget(_ label: String) { pool.withLock { _ = $0.handles.removeValue(forKey: label) } }

    static func secretKeyTemplate(label: String) -> AttributeTemplate {
        var template = AttributeTemplate()
        template.add(CK_ATTRIBUTE_TYPE(CKA_CLASS), ulong: CK_ULONG(CKO_SECRET_KEY))
        template.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
        return template
    }

    func findObjects(session: CK_SESSION_HANDLE, template: AttributeTemplate, limit: Int = 16)
        throws -> [CK_OBJECT_HANDLE]
    {
        let initialize = try module.function(\.C_FindObjectsInit, "C_FindObjectsInit")
        let find = try module.function(\.C_FindObjects, "C_FindObjects")
        let final = try module.function(\.C_FindObjectsFinal, "C_FindObjectsFinal")
        try template.withAttributes { attributes, count in
            try PKCS11Error.check(initialize(session, attributes, count), "C_FindObjectsInit")
        }
        defer { _ = final(session) }
        var handles: [CK_OBJECT_HANDLE] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: limit)
        while true {
            var found = CK_ULONG(0)
            try PKCS11Error.check(find(session, &batch, CK_ULONG(limit), &found), "C_FindObjects")
            handles.append(contentsOf: batch.prefix(Int(found)))
            if Int(found) < limit { return handles }
        }
    }

    /// Generates an AES-256 key on the token that can never leave it: sensitive, not extractable, a token object,
    /// private, for encryption and decryption only.
    func generateKey(label: String, session: CK_SESSION_HANDLE) throws -> CK_OBJECT_HANDLE {
        let generate = try module.function(\.C_GenerateKey, "C_GenerateKey")
        var template = Self.aesKeyTemplate(label: label, tokenObject: true)
        template.add(CK_ATTRIBUTE_TYPE(CKA_VALUE_LEN), ulong: 32)
        template.add(CK_ATTRIBUTE_TYPE(CKA_PRIVATE), bool: true)
        template.add(CK_ATTRIBUTE_TYPE(CKA_SENSITIVE), bool: true)
        template.add(CK_ATTRIBUTE_TYPE(CKA_EXTRACTABLE), bool: false)
        template.add(CK_ATTRIBUTE_TYPE(CKA_WRAP), bool: false)
        template.add(CK_ATTRIBUTE_TYPE(CKA_UNWRAP), bool: false)
        template.add(CK_ATTRIBUTE_TYPE(CKA_SIGN), bool: false)
        template.add(CK_ATTRIBUTE_TYPE(CKA_VERIFY), bool: false)
        template.add(CK_ATTRIBUTE_TYPE(CKA_DERIVE), bool: false)
        var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_AES_KEY_GEN), pParameter: nil, ulParameterLen: 0)
        var handle = CK_OBJECT_HANDLE(0)
        try template.withAttributes { attributes, count in
            try PKCS11Error.check(generate(session, &mechanism, attributes, count, &handle), "C_GenerateKey",
                                  context: label)
        }
        pool.withLock { $0.handles[label] = handle }
        return handle
    }

    /// An AES key for encryption and decryption: a token object labelled `label`, or (`label` nil) a session object.
    static func aesKeyTemplate(label: String?, tokenObject: Bool) -> AttributeTemplate {
        var template = AttributeTemplate()
        template.add(CK_ATTRIBUTE_TYPE(CKA_CLASS), ulong: CK_ULONG(CKO_SECRET_KEY))
        template.add(CK_ATTRIBUTE_TYPE(CKA_KEY_TYPE), ulong: CK_ULONG(CKK_AES))
        if let label {
            template.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
            template.add(CK_ATTRIBUTE_TYPE(CKA_ID), bytes: Array(label.utf8))
        }
        template.add(CK_ATTRIBUTE_TYPE(CKA_TOKEN), bool: tokenObject)
        template.add(CK_ATTRIBUTE_TYPE(CKA_ENCRYPT), bool: true)
        template.add(CK_ATTRIBUTE_TYPE(CKA_DECRYPT), bool: true)
        return template
    }

    /// Imports `value` as an AES key object (`C_CreateObject`) with `template`'s attributes besides the value.
    func importKey(_ value: [UInt8], template: AttributeTemplate, session: CK_SESSION_HANDLE) throws -> CK_OBJECT_HANDLE {
        let create = try module.function(\.C_CreateObject, "C_CreateObject")
        var template = template
        template.add(CK_ATTRIBUTE_TYPE(CKA_VALUE), bytes: value)
        var handle = CK_OBJECT_HANDLE(0)
        try template.withAttributes { attributes, count in
            try PKCS11Error.check(create(session, attributes, count, &handle), "C_CreateObject")
        }
        return handle
    }

    func destroyObject(_ handle: CK_OBJECT_HANDLE, session: CK_SESSION_HANDLE) throws {
        let destroy = try module.function(\.C_DestroyObject, "C_DestroyObject")
        try PKCS11Error.check(destroy(session, handle), "C_DestroyObject")
    }

    /// The value of one attribute, or nil when the object does not have it.
    func attribute(_ type: CK_ATTRIBUTE_TYPE, of handle: CK_OBJECT_HANDLE, session: CK_SESSION_HANDLE)
        throws -> [UInt8]?
    {
        let get = try module.function(\.C_GetAttributeValue, "C_GetAttributeValue")
        var attribute = CK_ATTRIBUTE(type: type, pValue: nil, ulValueLen: 0)
        let rv = get(session, handle, &attribute, 1)
        if rv == CK_RV(CKR_ATTRIBUTE_TYPE_INVALID) || attribute.ulValueLen == CK_ULONG.max { return nil }
        try PKCS11Error.check(rv, "C_GetAttributeValue")
        var value = [UInt8](repeating: 0, count: Int(attribute.ulValueLen))
        try value.withUnsafeMutableBytes { buffer in
            attribute.pValue = buffer.baseAddress
            try PKCS11Error.check(get(session, handle, &attribute, 1), "C_GetAttributeValue")
        }
        return Array(value.prefix(Int(attribute.ulValueLen)))
    }

    /// Boolean attributes of an object in one call; nil for one the object does not have or will not reveal.
    func flags(_ types: [CK_ATTRIBUTE_TYPE], of handle: CK_OBJECT_HANDLE, session: CK_SESSION_HANDLE)
        throws -> [Bool?]
    {
        let get = try module.function(\.C_GetAttributeValue, "C_GetAttributeValue")
        var values = [CK_BBOOL](repeating: 0, count: types.count)
        return try values.withUnsafeMutableBufferPointer { buffer in
            var attributes = types.indices.map { index in
                CK_ATTRIBUTE(type: types[index], pValue: UnsafeMutableRawPointer(buffer.baseAddress! + index),
                             ulValueLen: CK_ULONG(MemoryLayout<CK_BBOOL>.size))
            }
            let rv = get(session, handle, &attributes, CK_ULONG(attributes.count))
            // Those two still fill in every attribute they can, and mark the others unavailable.
            if rv != CK_RV(CKR_ATTRIBUTE_TYPE_INVALID), rv != CK_RV(CKR_ATTRIBUTE_SENSITIVE) {
                try PKCS11Error.check(rv, "C_GetAttributeValue")
            }
            return attributes.indices.map { index in
                attributes[index].ulValueLen == CK_ULONG.max ? nil : buffer[index] != 0
            }
        }
    }

    /// The values of every data object labelled `label` (records the vault owns), with their handles.
    func readData(label: String, application: String, session: CK_SESSION_HANDLE)
        throws -> [(handle: CK_OBJECT_HANDLE, value: [UInt8])]
    {
        try findObjects(session: session, template: Self.dataTemplate(label: label, application: application))
            .map { handle in (handle, try attribute(CK_ATTRIBUTE_TYPE(CKA_VALUE), of: handle, session: session) ?? []) }
    }

    /// Stores a new data object labelled `label` (tokens commonly refuse to change a data object's value, so a new
    /// record is written and the caller removes the older ones afterwards).
    func createData(_ value: [UInt8], label: String, application: String, session: CK_SESSION_HANDLE) throws {
        let create = try module.function(\.C_CreateObject, "C_CreateObject")
        var full = Self.dataTemplate(label: label, application: application)
        full.add(CK_ATTRIBUTE_TYPE(CKA_TOKEN), bool: true)
        full.add(CK_ATTRIBUTE_TYPE(CKA_PRIVATE), bool: true)
        full.add(CK_ATTRIBUTE_TYPE(CKA_VALUE), bytes: value)
        var handle = CK_OBJECT_HANDLE(0)
        try full.withAttributes { attributes, count in
            try PKCS11Error.check(create(session, attributes, count, &handle), "C_CreateObject", context: label)
        }
    }

    static func dataTemplate(label: String, application: String) -> AttributeTemplate {
        var template = AttributeTemplate()
        template.add(CK_ATTRIBUTE_TYPE(CKA_CLASS), ulong: CK_ULONG(CKO_DATA))
        template.add(CK_ATTRIBUTE_TYPE(CKA_LABEL), bytes: Array(label.utf8))
        template.add(CK_ATTRIBUTE_TYPE(CKA_APPLICATION), bytes: Array(application.utf8))
        return template
    }

    // MARK: AES-256-GCM (DESIGN 5.2)

    /// `C_Encrypt` with `CKM_AES_GCM`: the caller's 12-byte IV, the AAD, a 128-bit tag. Returns ciphertext || tag.
    func encrypt(key: CK_OBJECT_HANDLE, iv: [UInt8], aad: [UInt8], plaintext: SecureBytes,
                 session: CK_SESSION_HANDLE) throws -> [UInt8]
    {
        let initialize = try module.function(\.C_EncryptInit, "C_EncryptInit")
        let encrypt = try module.function(\.C_Encrypt, "C_Encrypt")
        return try withGCM(iv: iv, aad: aad) { mechanism in
            try PKCS11Error.check(initialize(session, mechanism, key), "C_EncryptInit")
            var output = [UInt8](repeating: 0, count: plaintext.count + 16)
            var length = CK_ULONG(output.count)
            try plaintext.withUnsafeBytes { input in
                try PKCS11Error.check(encrypt(session, UnsafeMutablePointer(mutating: input.baseAddress!
                                                  .assumingMemoryBound(to: UInt8.self)),
                                              CK_ULONG(input.count), &output, &length), "C_Encrypt")
            }
            guard Int(length) == plaintext.count + 16 else {
                throw CustodyError(.hsmFailure, "C_Encrypt returned \(length) bytes for AES-GCM; expected "
                                    + "\(plaintext.count + 16)")
            }
            return output
        }
    }

    /// `C_Decrypt` with `CKM_AES_GCM`; the plaintext goes straight into secure memory.
    func decrypt(key: CK_OBJECT_HANDLE, iv: [UInt8], aad: [UInt8], ciphertext: [UInt8],
                 session: CK_SESSION_HANDLE) throws -> SecureBytes
    {
        let initialize = try module.function(\.C_DecryptInit, "C_DecryptInit")
        let decrypt = try module.function(\.C_Decrypt, "C_Decrypt")
        return try withGCM(iv: iv, aad: aad) { mechanism in
            try PKCS11Error.check(initialize(session, mechanism, key), "C_DecryptInit")
            var produced = 0
            var input = ciphertext
            let buffer = try SecureBytes(count: ciphertext.count) { output in
                var length = CK_ULONG(output.count)
                let rv = decrypt(session, &input, CK_ULONG(input.count),
                                 output.baseAddress!.assumingMemoryBound(to: UInt8.self), &length)
                // Tokens report a GCM tag mismatch differently: CKR_ENCRYPTED_DATA_INVALID by the standard, but
                // SoftHSM2 and others answer CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED. The operation was started
                // successfully just before, so these mean the data did not authenticate.
                if rv == CK_RV(CKR_GENERAL_ERROR) || rv == CK_RV(CKR_FUNCTION_FAILED) {
                    let name = PKCS11Error.name(rv)
                    throw CustodyError(.contextMismatch, "C_Decrypt: the wrapped key does not authenticate (\(name))",
                                       underlying: "pkcs11:\(name)")
                }
                try PKCS11Error.check(rv, "C_Decrypt")
                produced = Int(length)
            }
            guard produced == ciphertext.count - 16 else {
                throw CustodyError(.hsmFailure, "C_Decrypt returned \(produced) bytes for AES-GCM; expected "
                                    + "\(ciphertext.count - 16)")
            }
            return buffer.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(produced))) }
        }
    }

    private func withGCM<R>(iv: [UInt8], aad: [UInt8], _ body: (UnsafeMutablePointer<CK_MECHANISM>) throws -> R)
        throws -> R
    {
        var iv = iv
        var aad = aad
        return try iv.withUnsafeMutableBufferPointer { ivBuffer in
            try aad.withUnsafeMutableBufferPointer { aadBuffer in
                var parameters = CK_GCM_PARAMS(
                    pIv: ivBuffer.baseAddress, ulIvLen: CK_ULONG(ivBuffer.count), ulIvBits: CK_ULONG(ivBuffer.count * 8),
                    pAAD: aadBuffer.baseAddress, ulAADLen: CK_ULONG(aadBuffer.count), ulTagBits: 128)
                return try withUnsafeMutablePointer(to: &parameters) { pointer in
                    var mechanism = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM),
                                                 pParameter: UnsafeMutableRawPointer(pointer),
                                                 ulParameterLen: CK_ULONG(MemoryLayout<CK_GCM_PARAMS>.size))
                    return try body(&mechanism)
                }
            }
        }
    }
}

/// A PKCS#11 attribute template whose values live exactly as long as the call that uses them.
struct AttributeTemplate {
    private var entries: [(CK_ATTRIBUTE_TYPE, [UInt8])] = []

    mutating func add(_ type: CK_ATTRIBUTE_TYPE, bytes: [UInt8]) { entries.append((type, bytes)) }

    mutating func add(_ type: CK_ATTRIBUTE_TYPE, bool: Bool) {
        entries.append((type, [bool ? UInt8(CK_TRUE) : UInt8(CK_FALSE)]))
    }

    mutating func add(_ type: CK_ATTRIBUTE_TYPE, ulong: CK_ULONG) {
        entries.append((type, withUnsafeBytes(of: ulong) { Array($0) }))
    }

    func withAttributes<R>(_ body: (UnsafeMutablePointer<CK_ATTRIBUTE>, CK_ULONG) throws -> R) throws -> R {
        // Each value starts on an 8-byte boundary (CK_ULONG values must be aligned for the module).
        let total = entries.reduce(0) { $0 + ($1.1.count + 7) / 8 * 8 }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 16)
        defer {
            secureZero(storage)
            storage.deallocate()
        }
        var attributes: [CK_ATTRIBUTE] = []
        var offset = 0
        for (type, value) in entries {
            let start = storage.baseAddress! + offset
            if !value.isEmpty { value.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            attributes.append(CK_ATTRIBUTE(type: type, pValue: value.isEmpty ? nil : start,
                                           ulValueLen: CK_ULONG(value.count)))
            offset += (value.count + 7) / 8 * 8
        }
        return try attributes.withUnsafeMutableBufferPointer { try body($0.baseAddress!, CK_ULONG($0.count)) }
    }
}

extension String {
    func trimmingTrailingSpaces() -> String {
        var scalars = Substring(self)
        while scalars.last == " " || scalars.last == "\0" { scalars = scalars.dropLast() }
        return String(scalars)
    }
}
