internal import CSodium

/// libsodium must be initialised once before use; `sodium_init` is idempotent and thread-safe, and the lazy
/// global makes the first caller pay for it.
enum Sodium {
    static let ready: Void = {
        guard sodium_init() >= 0 else { fatalError("libsodium failed to initialise") }
    }()
}
