/// The image configuration (config.md): how to run the image and the diffIDs of its layers.
/// Fields that Docker adds outside the spec (`container_config`, `docker_version`, ...) are
/// dropped on purpose when a base config is read: they carry build hosts and times.
public struct ImageConfiguration: Codable, Hashable, Sendable {
    public var created: String?
    public var author: String?
    public var architecture: String
    public var os: String
    public var variant: String?
    public var config: Config?
    public var rootfs: RootFS
    public var history: [History]?

    public init(architecture: String, os: String, created: String?, config: Config, rootfs: RootFS, history: [History]) {
        self.architecture = architecture
        self.os = os
        self.created = created
        self.config = config
        self.rootfs = rootfs
        self.history = history
    }

    /// The execution parameters (config.md#properties, `config`). Capitalised as the spec writes them.
    public struct Config: Codable, Hashable, Sendable {
        public var User: String?
        public var ExposedPorts: [String: EmptyObject]?
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var Volumes: [String: EmptyObject]?
        public var WorkingDir: String?
        public var Labels: [String: String]?
        public var StopSignal: String?

        public init() {}
    }

    public struct RootFS: Codable, Hashable, Sendable {
        public var type: String = "layers"
        public var diff_ids: [Digest]

        public init(diffIDs: [Digest]) { diff_ids = diffIDs }
    }

    public struct History: Codable, Hashable, Sendable {
        public var created: String?
        public var created_by: String?
        public var author: String?
        public var comment: String?
        public var empty_layer: Bool?

        public init(created: String?, createdBy: String?, comment: String? = nil, emptyLayer: Bool? = nil) {
            self.created = created
            self.created_by = createdBy
            self.comment = comment
            self.empty_layer = emptyLayer
        }
    }
}

/// `{}`, the value type of `ExposedPorts` and `Volumes`.
public struct EmptyObject: Codable, Hashable, Sendable {
    public init() {}
    public init(from decoder: Decoder) throws { _ = try decoder.container(keyedBy: NoKeys.self) }
    public func encode(to encoder: Encoder) throws { _ = encoder.container(keyedBy: NoKeys.self) }
    private enum NoKeys: CodingKey {}
}
