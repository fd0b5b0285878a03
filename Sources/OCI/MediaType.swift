/// Media types from the OCI image spec (media-types.md) and the Docker v2 schema 2 types they replace.
public enum MediaType {
    public static let imageManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let imageIndex = "application/vnd.oci.image.index.v1+json"
    public static let imageConfig = "application/vnd.oci.image.config.v1+json"
    public static let layer = "application/vnd.oci.image.layer.v1.tar"
    public static let layerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let layerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"

    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"

    /// The OCI type carrying the same bytes as a Docker layer type, so that a base image in
    /// Docker format can be extended under an OCI manifest without touching its blobs.
    public static func ociLayerType(for type: String) throws -> String {
        switch type {
        case layer, layerGzip, layerZstd: return type
        case dockerLayerGzip: return layerGzip
        default: throw OCIError.unsupportedMediaType(type)
        }
    }

    public static func isIndex(_ type: String?) -> Bool { type == imageIndex || type == dockerManifestList }
    public static func isManifest(_ type: String?) -> Bool { type == imageManifest || type == dockerManifest }
}
