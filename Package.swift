// swift-tools-version:6.1
// The whole project: `builder` (Hub -> OCI image -> registry -> Cloud Run) and `inference-server`.
// Builder-side and server-side modules share nothing, so the server image never needs libarchive or libcurl.
import PackageDescription

let package = Package(
    name: "gemma-run",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "builder", targets: ["builder"]),
        .executable(name: "inference-server", targets: ["inference-server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The HTTP server (SwiftNIO). Default traits off: no swift-configuration, fewer modules to build.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // System libraries (Debian packages named in `providers`). No Swift in these.
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive", providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        // Builder side.
        .target(name: "Hashing", dependencies: ["COpenSSL"]),
        .target(name: "OCI", dependencies: ["Hashing", "CArchive", "CZlib", "CZstd"]),
        .target(name: "ELF"),
        .target(name: "HTTP", dependencies: ["CCurl"]),
        .target(name: "Registry", dependencies: ["HTTP", "OCI", "Hashing"]),
        .target(name: "HuggingFace", dependencies: ["HTTP", "Hashing"]),
        .target(name: "GoogleCloud", dependencies: ["HTTP", "COpenSSL"]),
        .target(name: "BuilderKit", dependencies: ["OCI", "ELF", "Hashing", "HTTP", "Registry", "HuggingFace", "GoogleCloud", "CUDA"]),
        .executableTarget(
            name: "builder",
            dependencies: ["BuilderKit", "OCI", "Registry", "HuggingFace", "GoogleCloud", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // Server side.
        // Optimized even in debug builds: parsing the 33 MB tokenizer.json takes seconds at -Onone,
        // and the server's /health waits for it.
        .target(name: "Tokenizer", swiftSettings: [.unsafeFlags(["-O"])]),
        // The engine. Optimized even in debug builds (real weights are unusable at -Onone, about
        // 300x slower) and for AVX2/FMA/F16C, which SIMD code needs to run at memory speed.
        .target(name: "CPrefetch"),
        // Products with AVX-512 VNNI (int8) and AVX-512 BF16, which Swift cannot reach: optimized in
        // debug builds too, for haswell like the engine; the AVX-512 functions carry their own target
        // and are called only on CPUs that have it.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O2", "-march=haswell"])]),
        .target(
            name: "Inference", dependencies: ["Tokenizer", "CPrefetch", "CKernels"],
            swiftSettings: [.unsafeFlags(["-O", "-target-cpu", "haswell"])]
        ),
        // The OpenAI API over the engine: routes, request decoding, SSE, the batching scheduler, metrics.
        .target(name: "CUDA", dependencies: ["Hashing"]),
        // The engine's GPU backend: the CUDA module's driver, NVRTC and cuBLAS under Inference's
        // ComputeBackend. Kept apart from CUDA so the builder side (which uses CUDA's library
        // search for `build --gpu`) never links the engine.
        .target(name: "CUDABackend", dependencies: ["CUDA", "Inference"]),
        .target(
            name: "InferenceServer",
            dependencies: [
                "Inference", "Tokenizer", "CUDABackend", .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "inference-server",
            dependencies: [
                "Inference", "Tokenizer", "InferenceServer", "CUDA", "CUDABackend",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Helpers shared by the test targets: temporary folders, running real tools, reading tars.
        .target(name: "TestSupport", dependencies: ["Hashing", "OCI"], path: "Tests/TestSupport"),
        .testTarget(name: "HuggingFaceTests", dependencies: ["HuggingFace", "HTTP", "TestSupport"]),
        .testTarget(name: "RegistryTests", dependencies: ["Registry", "HTTP", "OCI", "TestSupport"]),
        .testTarget(name: "HashingTests", dependencies: ["Hashing"]),
        .testTarget(name: "OCITests", dependencies: ["OCI", "Hashing", "TestSupport"]),
        .testTarget(name: "ELFTests", dependencies: ["ELF", "TestSupport"]),
        .testTarget(name: "InferenceTests", dependencies: ["Inference", "Tokenizer", "TestSupport"], exclude: ["Fixtures"]),
        .testTarget(name: "GoogleCloudTests", dependencies: ["GoogleCloud", "HTTP", "TestSupport"]),
        .testTarget(name: "InferenceServerTests", dependencies: ["TestSupport"]),
        .testTarget(name: "CUDATests", dependencies: ["CUDA", "TestSupport"]),
        // The emulator (a C++ stand-in for libcuda.so.1) is built by the tests themselves.
        .testTarget(
            name: "CUDABackendTests", dependencies: ["CUDABackend", "CUDA", "Inference", "InferenceServer", "TestSupport"],
            exclude: ["Emulator"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "BuilderKitTests", dependencies: ["BuilderKit", "CUDA", "OCI", "Hashing", "Registry", "HTTP", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
