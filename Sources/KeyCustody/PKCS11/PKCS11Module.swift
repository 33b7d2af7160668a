internal import CPKCS11
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A PKCS#11 module (the vendor's `.so`) loaded with `dlopen` and initialised once per process.
///
/// A module may serve several forces (one token each), so modules are shared by path. The module is never
/// finalised or unloaded: other tokens of the same module may still be in use, and `C_Finalize` would end their
/// sessions too.
final class PKCS11Module: @unchecked Sendable {
    let path: String
    /// The module's function list; valid for the life of the process.
    let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>

    private init(path: String, functions: UnsafeMutablePointer<CK_FUNCTION_LIST>) {
        self.path = path
        self.functions = functions
    }

    private struct Restarts {
        var generation = 0
        var last: ContinuousClock.Instant?
    }

    private let restarts = Mutex(Restarts())
    /// Held shared by every call into the module, exclusively by a restart.
    private let calls = ReadWriteLock()

    /// Incremented each time the module is finalised and initialised again; sessions from before are void.
    var generation: Int { restarts.withLock { $0.generation } }

    /// Runs `body` with no other call into the module in flight: for operations that change the module's own slot
    /// list (`C_InitToken`), which modules such as SoftHSM2 do not make safe against concurrent calls.
    func exclusively<R>(_ body: () throws -> R) rethrows -> R {
        try calls.writing(body)
    }

    /// Runs `body` while no restart can happen, with the module generation it runs under.
    func sharing<R>(_ body: (Int) throws -> R) throws -> R {
        try calls.reading { try body(generation) }
    }

    /// Finalises and initialises the module again, the way to make it look for a token that went away and came
    /// back (a module may keep a removed token marked failed until then). Every session of every token of the
    /// module is lost, so it is done at most once every two seconds, and only by the first caller that saw
    /// `generation` fail.
    func restart(after generation: Int) {
        calls.writing {
            restartLocked(after: generation)
        }
    }

    private func restartLocked(after generation: Int) {
        restarts.withLock { state in
            guard state.generation == generation else { return }
            let now = ContinuousClock.now
            if let last = state.last, now - last < .seconds(2) { return }
            state.last = now
            if let finalize = functions.pointee.C_Finalize { _ = finalize(nil) }
            var arguments = CK_C_INITIALIZE_ARGS()
            arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
            if let initialize = functions.pointee.C_Initialize {
                _ = withUnsafeMutablePointer(to: &arguments) { initialize(UnsafeMutableRawPointer($0)) }
            }
            state.generation += 1
        }
    }

    private static let loaded = Mutex<[String: PKCS11Module]>([:])

    /// Loads and initialises the module at `path` (an absolute path), or returns the one already loaded.
    static func load(_ path: String) throws -> PKCS11Module {
        // One module per library, however it is named (a symlink and its target are the same module).
        let path = realpath(path, nil).map { resolved in
            defer { free(resolved) }
            return String(cString: resolved)
        } ?? path
        return try loaded.withLock { modules in
            if let module = modules[path] { return module }
            guard path.hasPrefix("/") else {
                throw CustodyError(.invalidConfiguration, "PKCS#11 module path \(path) must be absolute")
            }
            guard access(path, R_OK) == 0 else {
                throw CustodyError(.moduleUnavailable,
                                   "PKCS#11 module \(path) is missing or unreadable; install the vendor's library "
                                       + "(SoftHSM2: Debian package softhsm2)", underlying: errnoDescription())
            }
            guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
                let reason = dlerror().map { String(cString: $0) } ?? "unknown reason"
                throw CustodyError(.moduleUnavailable, "cannot load PKCS#11 module \(path): \(reason)")
            }
            guard let symbol = dlsym(handle, "C_GetFunctionList") else {
                dlclose(handle)
                throw CustodyError(.moduleUnavailable,
                                   "\(path) is not a PKCS#11 module: it has no C_GetFunctionList")
            }
            typealias GetFunctionList = @convention(c) (
                UnsafeMutablePointer<UnsafeMutablePointer<CK_FUNCTION_LIST>?>?
            ) -> CK_RV
            let getFunctionList = unsafeBitCast(symbol, to: GetFunctionList.self)
            var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
            try PKCS11Error.check(getFunctionList(&list), "C_GetFunctionList", module: path)
            guard let list, let initialize = list.pointee.C_Initialize else {
                throw CustodyError(.moduleUnavailable, "PKCS#11 module \(path) returned no function list")
            }
            // The module may use OS threads and locks: vaultd calls it from several threads at once.
            var arguments = CK_C_INITIALIZE_ARGS()
            arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
            let rv = withUnsafeMutablePointer(to: &arguments) { initialize(UnsafeMutableRawPointer($0)) }
            if rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
                try PKCS11Error.check(rv, "C_Initialize", module: path)
            }
            let module = PKCS11Module(path: path, functions: list)
            modules[path] = module
            return module
        }
    }

    /// Calls a function of the list, turning a missing entry into a clear error instead of a crash.
    func function<F>(_ keyPath: KeyPath<CK_FUNCTION_LIST, F?>, _ name: String) throws -> F {
        guard let function = functions.pointee[keyPath: keyPath] else {
            throw CustodyError(.moduleUnavailable, "PKCS#11 module \(path) does not implement \(name)")
        }
        return function
    }
}

/// `CK_RV` values: names for messages, and which custody error each one is.
enum PKCS11Error {
    /// Throws a custody error for anything but `CKR_OK`, keeping the return value in `underlying`.
    static func check(_ rv: CK_RV, _ function: String, module: String? = nil, context: String = "") throws {
        guard rv != CK_RV(CKR_OK) else { return }
        throw error(rv, function, context: context)
    }

    static func error(_ rv: CK_RV, _ function: String, context: String = "") -> CustodyError {
        let name = name(rv)
        let subject = context.isEmpty ? function : "\(function) (\(context))"
        let code: CustodyError.Code
        let meaning: String
        switch Int(rv) {
        case Int(CKR_PIN_INCORRECT):
            (code, meaning) = (.wrongPIN, "the token refused the PIN")
        case Int(CKR_PIN_LOCKED), Int(CKR_PIN_EXPIRED):
            (code, meaning) = (.pinLocked, "the token's user PIN is locked or expired; its security officer must reset it")
        case Int(CKR_PIN_LEN_RANGE), Int(CKR_PIN_INVALID):
            (code, meaning) = (.wrongPIN, "the PIN has a length or characters the token does not accept")
        case Int(CKR_USER_PIN_NOT_INITIALIZED):
            (code, meaning) = (.tokenUnavailable, "the token's user PIN was never set")
        case Int(CKR_TOKEN_NOT_PRESENT), Int(CKR_DEVICE_REMOVED), Int(CKR_TOKEN_NOT_RECOGNIZED),
             Int(CKR_SLOT_ID_INVALID), Int(CKR_DEVICE_ERROR), Int(CKR_SESSION_COUNT),
             Int(CKR_CRYPTOKI_NOT_INITIALIZED):
            (code, meaning) = (.tokenUnavailable, "the token is not available")
        case Int(CKR_SESSION_HANDLE_INVALID), Int(CKR_SESSION_CLOSED), Int(CKR_USER_NOT_LOGGED_IN):
            (code, meaning) = (.tokenUnavailable, "the session with the token was lost")
        case Int(CKR_OBJECT_HANDLE_INVALID), Int(CKR_KEY_HANDLE_INVALID):
            (code, meaning) = (.keyObjectMissing, "the key object is no longer on the token")
        case Int(CKR_ENCRYPTED_DATA_INVALID), Int(CKR_ENCRYPTED_DATA_LEN_RANGE):
            (code, meaning) = (.contextMismatch, "the wrapped key does not authenticate")
        case Int(CKR_MECHANISM_INVALID), Int(CKR_MECHANISM_PARAM_INVALID), Int(CKR_KEY_TYPE_INCONSISTENT),
             Int(CKR_KEY_SIZE_RANGE):
            (code, meaning) = (.unsupportedBackend, "the token does not support AES-256-GCM as DESIGN 5.2 needs it")
        case Int(CKR_KEY_FUNCTION_NOT_PERMITTED), Int(CKR_ACTION_PROHIBITED):
            (code, meaning) = (.keyStateConflict, "the token does not allow this key to do that")
        case Int(CKR_DEVICE_MEMORY):
            (code, meaning) = (.hsmFailure, "the token is out of memory for objects (full)")
        case Int(CKR_TOKEN_WRITE_PROTECTED):
            (code, meaning) = (.readOnly, "the token is write-protected")
        default:
            (code, meaning) = (.hsmFailure, "the token failed")
        }
        return CustodyError(code, "\(subject): \(meaning) (\(name))", underlying: "pkcs11:\(name)")
    }

    /// The standard name of a return value, with its number for values a vendor defined.
    static func name(_ rv: CK_RV) -> String {
        let known: [CK_RV: String] = [
            CK_RV(CKR_OK): "CKR_OK", CK_RV(CKR_HOST_MEMORY): "CKR_HOST_MEMORY",
            CK_RV(CKR_SLOT_ID_INVALID): "CKR_SLOT_ID_INVALID", CK_RV(CKR_GENERAL_ERROR): "CKR_GENERAL_ERROR",
            CK_RV(CKR_FUNCTION_FAILED): "CKR_FUNCTION_FAILED", CK_RV(CKR_ARGUMENTS_BAD): "CKR_ARGUMENTS_BAD",
            CK_RV(CKR_ATTRIBUTE_READ_ONLY): "CKR_ATTRIBUTE_READ_ONLY",
            CK_RV(CKR_ATTRIBUTE_SENSITIVE): "CKR_ATTRIBUTE_SENSITIVE",
            CK_RV(CKR_ATTRIBUTE_TYPE_INVALID): "CKR_ATTRIBUTE_TYPE_INVALID",
            CK_RV(CKR_ATTRIBUTE_VALUE_INVALID): "CKR_ATTRIBUTE_VALUE_INVALID",
            CK_RV(CKR_ACTION_PROHIBITED): "CKR_ACTION_PROHIBITED", CK_RV(CKR_DATA_INVALID): "CKR_DATA_INVALID",
            CK_RV(CKR_DATA_LEN_RANGE): "CKR_DATA_LEN_RANGE", CK_RV(CKR_DEVICE_ERROR): "CKR_DEVICE_ERROR",
            CK_RV(CKR_DEVICE_MEMORY): "CKR_DEVICE_MEMORY", CK_RV(CKR_DEVICE_REMOVED): "CKR_DEVICE_REMOVED",
            CK_RV(CKR_ENCRYPTED_DATA_INVALID): "CKR_ENCRYPTED_DATA_INVALID",
            CK_RV(CKR_ENCRYPTED_DATA_LEN_RANGE): "CKR_ENCRYPTED_DATA_LEN_RANGE",
            CK_RV(CKR_KEY_HANDLE_INVALID): "CKR_KEY_HANDLE_INVALID", CK_RV(CKR_KEY_SIZE_RANGE): "CKR_KEY_SIZE_RANGE",
            CK_RV(CKR_KEY_TYPE_INCONSISTENT): "CKR_KEY_TYPE_INCONSISTENT",
            CK_RV(CKR_KEY_FUNCTION_NOT_PERMITTED): "CKR_KEY_FUNCTION_NOT_PERMITTED",
            CK_RV(CKR_MECHANISM_INVALID): "CKR_MECHANISM_INVALID",
            CK_RV(CKR_MECHANISM_PARAM_INVALID): "CKR_MECHANISM_PARAM_INVALID",
            CK_RV(CKR_OBJECT_HANDLE_INVALID): "CKR_OBJECT_HANDLE_INVALID",
            CK_RV(CKR_OPERATION_ACTIVE): "CKR_OPERATION_ACTIVE",
            CK_RV(CKR_OPERATION_NOT_INITIALIZED): "CKR_OPERATION_NOT_INITIALIZED",
            CK_RV(CKR_PIN_INCORRECT): "CKR_PIN_INCORRECT", CK_RV(CKR_PIN_INVALID): "CKR_PIN_INVALID",
            CK_RV(CKR_PIN_LEN_RANGE): "CKR_PIN_LEN_RANGE", CK_RV(CKR_PIN_EXPIRED): "CKR_PIN_EXPIRED",
            CK_RV(CKR_PIN_LOCKED): "CKR_PIN_LOCKED", CK_RV(CKR_SESSION_CLOSED): "CKR_SESSION_CLOSED",
            CK_RV(CKR_SESSION_COUNT): "CKR_SESSION_COUNT",
            CK_RV(CKR_SESSION_HANDLE_INVALID): "CKR_SESSION_HANDLE_INVALID",
            CK_RV(CKR_SESSION_READ_ONLY): "CKR_SESSION_READ_ONLY",
            CK_RV(CKR_TEMPLATE_INCOMPLETE): "CKR_TEMPLATE_INCOMPLETE",
            CK_RV(CKR_TEMPLATE_INCONSISTENT): "CKR_TEMPLATE_INCONSISTENT",
            CK_RV(CKR_TOKEN_NOT_PRESENT): "CKR_TOKEN_NOT_PRESENT",
            CK_RV(CKR_TOKEN_NOT_RECOGNIZED): "CKR_TOKEN_NOT_RECOGNIZED",
            CK_RV(CKR_TOKEN_WRITE_PROTECTED): "CKR_TOKEN_WRITE_PROTECTED",
            CK_RV(CKR_USER_ALREADY_LOGGED_IN): "CKR_USER_ALREADY_LOGGED_IN",
            CK_RV(CKR_USER_NOT_LOGGED_IN): "CKR_USER_NOT_LOGGED_IN",
            CK_RV(CKR_USER_PIN_NOT_INITIALIZED): "CKR_USER_PIN_NOT_INITIALIZED",
            CK_RV(CKR_USER_TYPE_INVALID): "CKR_USER_TYPE_INVALID",
            CK_RV(CKR_BUFFER_TOO_SMALL): "CKR_BUFFER_TOO_SMALL",
            CK_RV(CKR_CRYPTOKI_NOT_INITIALIZED): "CKR_CRYPTOKI_NOT_INITIALIZED",
            CK_RV(CKR_CRYPTOKI_ALREADY_INITIALIZED): "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        ]
        if let name = known[rv] { return name }
        let hex = String(rv, radix: 16, uppercase: true)
        return "CKR 0x" + String(repeating: "0", count: max(0, 8 - hex.count)) + hex
    }

    /// Return values after which the session (or the whole login) must be re-established before a retry.
    static func losesSession(_ code: CustodyError.Code, _ underlying: String?) -> Bool {
        // A wrapped key that does not authenticate says nothing about the session.
        guard let underlying, code != .contextMismatch else { return false }
        return ["pkcs11:CKR_SESSION_HANDLE_INVALID", "pkcs11:CKR_SESSION_CLOSED", "pkcs11:CKR_USER_NOT_LOGGED_IN",
                "pkcs11:CKR_TOKEN_NOT_PRESENT", "pkcs11:CKR_DEVICE_REMOVED", "pkcs11:CKR_SLOT_ID_INVALID",
                "pkcs11:CKR_OBJECT_HANDLE_INVALID", "pkcs11:CKR_KEY_HANDLE_INVALID", "pkcs11:CKR_DEVICE_ERROR",
                "pkcs11:CKR_TOKEN_NOT_RECOGNIZED", "pkcs11:CKR_CRYPTOKI_NOT_INITIALIZED",
                // SoftHSM2 answers a handle made stale by closed sessions with CKR_GENERAL_ERROR.
                "pkcs11:CKR_GENERAL_ERROR"].contains(underlying)
    }
}

/// A POSIX reader-writer lock: many calls into a module at once, or one restart alone.
final class ReadWriteLock: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)

    init() {
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func reading<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }

    func writing<R>(_ body: () throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body()
    }
}
