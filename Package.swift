// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "police-data-vault",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KeyCustody", targets: ["KeyCustody"]),
        .library(name: "Vault", targets: ["Vault"]),
        .executable(name: "vault", targets: ["vault"]),
        .executable(name: "vaultd", targets: ["vaultd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        // Latency percentiles in `vault bench` (HDR histograms, not hand-written sorting).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // The console's server-rendered pages (logic-less templates, HTML-escaped by default).
        .package(url: "https://github.com/hummingbird-project/swift-mustache", from: "2.1.1"),
    ],
    targets: [
        // System libraries: the only sources of cryptography (DESIGN section 2).
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSLCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // The standard PKCS#11 header (p11-kit's); modules themselves are loaded at run time with dlopen.
        .systemLibrary(
            name: "CPKCS11",
            pkgConfig: "p11-kit-1",
            providers: [.apt(["libp11-kit-dev"])]
        ),
        // glibc's malloc.h (mallopt), part of libc itself.
        .systemLibrary(name: "CMalloc"),
        // zlib is used by the tests only, to inflate the compressed C2SP vectors.
        .systemLibrary(
            name: "CZlib",
            pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]
        ),

        .target(
            name: "KeyCustody",
            dependencies: [
                "CSodium",
                "COpenSSLCrypto",
                "CPKCS11",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        .target(
            name: "Vault",
            dependencies: [
                "KeyCustody",
                "CMalloc",
                // X.509 revocation lists for client certificates (the rest of the crypto comes through KeyCustody).
                "COpenSSLCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "Mustache", package: "swift-mustache"),
            ],
            // The API's one description, served at /v1/openapi.json; the console's templates, style sheet and script.
            resources: [.embedInCode("Server/API/openapi.json")] + [
                "layout", "sign-in", "home", "error", "overview", "retrievals", "use-cases", "use-case-form", "keys",
                "certificates", "certificate", "audit", "ops",
            ].map { .embedInCode("Server/Console/Templates/\($0).mustache") } + [
                .embedInCode("Server/Console/console.css"), .embedInCode("Server/Console/console.js"),
            ],
            // The kill tests' crash points (CrashPoint.swift) exist only in debug builds, never in a release binary.
            swiftSettings: [.define("VAULT_CRASH_POINTS", .when(configuration: .debug))]
        ),
        .executableTarget(
            name: "vault",
            dependencies: [
                "Vault",
                "KeyCustody",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .executableTarget(
            name: "vaultd",
            dependencies: [
                "Vault",
                "KeyCustody",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),

        .target(name: "VaultTestSupport", dependencies: ["KeyCustody", "Vault"], path: "Tests/VaultTestSupport"),
        .testTarget(name: "KeyCustodyTests", dependencies: ["KeyCustody", "VaultTestSupport", "CPKCS11"]),
        .testTarget(name: "VaultTests", dependencies: [
            "Vault", "KeyCustody", "VaultTestSupport", "CZlib", .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "HummingbirdTesting", package: "hummingbird"),
        ]),
        .testTarget(name: "EndToEndTests", dependencies: ["VaultTestSupport", "KeyCustody", "Vault"]),
    ],
    swiftLanguageModes: [.v6]
)

// `VAULT_FUZZ=1 swift build --scratch-path .build-fuzz --product VaultFuzz` (scripts/fuzz.sh, `make fuzz`): the
// libFuzzer targets of every parser that meets outside bytes, with the vault's own modules instrumented for coverage
// and AddressSanitizer. Without the variable the package is exactly the one above: the normal build and CI never
// build or instrument anything for fuzzing.
if Context.environment["VAULT_FUZZ"] != nil {
    let sanitizers = "-sanitize=fuzzer,address"
    // Optimised (overflow and bounds checks stay; the vault has no `assert`): unoptimised generic code runs the
    // targets 10 times slower.
    for target in package.targets where ["KeyCustody", "Vault"].contains(target.name) {
        target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags([sanitizers, "-O"])]
    }
    package.targets.append(
        .executableTarget(
            name: "VaultFuzz",
            dependencies: [
                "Vault", "KeyCustody", .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Fuzz/VaultFuzz",
            // No top-level code: `VaultFuzz_main` (SwiftPM's name for main) hands over to libFuzzer's driver.
            swiftSettings: [.unsafeFlags([sanitizers, "-O", "-parse-as-library"])],
            linkerSettings: [.unsafeFlags([sanitizers])]
        )
    )
    package.products.append(.executable(name: "VaultFuzz", targets: ["VaultFuzz"]))
}
