@_exported import Vault

/// The tests use the library's throwaway PKI and port finder.
public typealias DevPKI = DevelopmentPKI
