import OCI

/// Everything `builder build` takes, after parsing.
public struct BuildRequest: Sendable {
    public enum Base: Sendable, Equatable {
        case scratch
        case layout(String)
        /// An image in a registry, pulled (and verified) before the build.
        case registry(String)

        /// `scratch`, `oci:DIR`, or a registry reference such as `debian:bookworm-slim`.
        public init(parsing s: String) {
            if s == "scratch" {
                self = .scratch
            } else if s.hasPrefix("oci:"), s.count > 4 {
                self = .layout(String(s.dropFirst(4)))
            } else {
                self = .registry(s.hasPrefix("docker://") ? String(s.dropFirst(9)) : s)
            }
        }
    }

    public enum Output: Sendable, Equatable {
        case layout(String)
        case archive(String)

        /// Parses `oci:DIR` or `oci-archive:FILE`.
        public init(parsing s: String) throws {
            if s.hasPrefix("oci:"), s.count > 4 {
                self = .layout(String(s.dropFirst(4)))
            } else if s.hasPrefix("oci-archive:"), s.count > 12 {
                self = .archive(String(s.dropFirst(12)))
            } else {
                throw BuilderError.invalidOption("--output must be oci:DIR or oci-archive:FILE, not '\(s)'")
            }
        }
    }

    public var model: String
    public var server: String
    public var base: Base = .scratch
    public var env: [(String, String)] = []
    public var labels: [(String, String)] = []
    public var port: Int = 8080
    public var output: Output
    public var tag: String = "latest"
    /// Seconds since the epoch for every mtime and `created`; SOURCE_DATE_EPOCH or 0.
    public var sourceDateEpoch: Int64 = 0
    public var weightCompression: LayerCompression = .none
    public var compression: LayerCompression = .gzip
    public var platform: Platform = .linuxAMD64
    /// Where in the image the model goes.
    public var modelDirectory: String = "/model"
    /// The host's libnvrtc.so.12, for a GPU image (`GPURuntime`); nil for a CPU-only image.
    public var nvrtc: String?

    public init(model: String, server: String, output: Output) {
        self.model = model
        self.server = server
        self.output = output
    }

    /// Parses `KEY=VALUE` as `--env` and `--label` take it.
    public static func keyValue(_ s: String, option: String) throws -> (String, String) {
        guard let eq = s.firstIndex(of: "="), eq != s.startIndex else {
            throw BuilderError.invalidOption("\(option) takes KEY=VALUE, not '\(s)'")
        }
        return (String(s[..<eq]), String(s[s.index(after: eq)...]))
    }

    /// SOURCE_DATE_EPOCH as reproducible-builds.org defines it: a non-negative decimal integer.
    public static func sourceDateEpoch(from environment: [String: String]) throws -> Int64 {
        guard let raw = environment["SOURCE_DATE_EPOCH"], !raw.isEmpty else { return 0 }
        guard let value = Int64(raw), value >= 0 else {
            throw BuilderError.invalidOption("SOURCE_DATE_EPOCH must be a whole number of seconds since 1970, not '\(raw)'")
        }
        return value
    }
}
