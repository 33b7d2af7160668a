import KeyCustody
import Synchronization

/// A signed-in console session (DESIGN section 8, the console): who, how they signed in, and the CSRF token every
/// state-changing form of the session carries. Kept in vaultd's memory only; the cookie holds a random id whose
/// SHA-256 is the key here, so neither the cookie nor anything derived from a bearer token is ever stored.
public struct ConsoleSession: Sendable {
    /// How the session was opened, and what is checked again on every request.
    public enum Credential: Sendable, Equatable {
        /// A bearer token pasted once: its stored hash, looked up in the catalog on every request, so revoking the
        /// token (or its expiry) ends the session at the next request, on whichever instance revoked it.
        case token(hash: String, id: String)
        /// The connection's client certificate: every request of the session must come with a certificate of the
        /// same principal (and not revoked by the client CRL), so a cookie alone is not enough.
        case certificate
    }

    public let principal: String
    public let credential: Credential
    /// Compared in constant time with the `csrf` field of every form posted in the session.
    public let csrf: String
    public let createdAt: UnixTime
    public var lastUsed: UnixTime
    /// What the session's last action did, shown once on its next page (and gone with the session).
    var notice: String?

    /// Whether the session still stands at `now`: used within the idle limit and within its lifetime.
    func isLive(at now: UnixTime) -> Bool {
        now < createdAt + ConsoleSessions.lifetime && now < lastUsed + ConsoleSessions.idleLimit
    }
}

/// The sessions of one vaultd instance. A session ends at sign-out, after `idleLimit` without a request, after
/// `lifetime` whatever happens, when its token is revoked or expires, and when vaultd restarts.
public final class ConsoleSessions: Sendable {
    /// A session's longest life: one hour, then the person signs in again.
    public static let lifetime: Int64 = 3600
    /// Fifteen minutes without a request end a session.
    public static let idleLimit: Int64 = 15 * 60
    /// Sessions held at once; beyond it a sign-in is refused until sessions end (memory stays bounded).
    public static let capacity = 10_000
    /// The cookie's name: `__Host-` makes browsers refuse it unless it is `Secure`, has `Path=/` and no `Domain`.
    public static let cookie = "__Host-vault_session"

    private let sessions = Mutex<[String: ConsoleSession]>([:])
    let now: @Sendable () -> UnixTime

    public init(now: @escaping @Sendable () -> UnixTime = currentUnixTime) {
        self.now = now
    }

    /// Opens a session for `principal`; the cookie value to send (shown to the browser only).
    func open(principal: String, credential: ConsoleSession.Credential) throws -> String {
        let id = "vs_" + Hex.encode(SecureRandom.bytes(count: 32))
        let time = now()
        let session = ConsoleSession(principal: principal, credential: credential,
                                     csrf: Hex.encode(SecureRandom.bytes(count: 32)), createdAt: time, lastUsed: time)
        try sessions.withLock { sessions in
            if sessions.count >= Self.capacity { sessions = sessions.filter { $0.value.isLive(at: time) } }
            guard sessions.count < Self.capacity else {
                throw APIError(status: .serviceUnavailable, code: "too_many_sessions",
                               message: "too many console sessions are open on this instance; try again later")
            }
            sessions[Self.key(id)] = session
        }
        return id
    }

    /// The live session of cookie value `id`, or nil: unknown, ended or expired (then forgotten). `touch`: a request
    /// of the person, which keeps the session from idling out (a page's own background poll does not).
    func session(_ id: String, touch: Bool = true) -> ConsoleSession? {
        guard id.hasPrefix("vs_"), id.utf8.count == 67 else { return nil }
        let key = Self.key(id)
        let time = now()
        return sessions.withLock { sessions in
            guard var session = sessions[key] else { return nil }
            guard session.isLive(at: time) else {
                sessions[key] = nil
                return nil
            }
            if touch {
                session.lastUsed = time
                sessions[key] = session
            }
            return session
        }
    }

    /// Ends the session of cookie value `id` (sign-out, or its credential no longer holds).
    func close(_ id: String) {
        let key = Self.key(id)
        _ = sessions.withLock { $0.removeValue(forKey: key) }
    }

    func setNotice(_ id: String, _ text: String) {
        let key = Self.key(id)
        sessions.withLock { $0[key]?.notice = text }
    }

    func takeNotice(_ id: String) -> String? {
        let key = Self.key(id)
        return sessions.withLock { sessions in
            defer { sessions[key]?.notice = nil }
            return sessions[key]?.notice
        }
    }

    /// Sessions open now (for tests and metrics).
    public var count: Int {
        let time = now()
        return sessions.withLock { $0.values.filter { $0.isLive(at: time) }.count }
    }

    private static func key(_ id: String) -> String { Hex.encode(Digest.hash(.sha256, Array(id.utf8))) }
}
