import CUDA
import Foundation
import OCI

/// The CUDA kernels of a `--gpu` image, compiled at build time: CUBINs for Cloud Run's GPU made by
/// the very NVRTC the image carries, stored in the image under the names its server's kernel cache
/// looks for (`KernelCache`), in a read-only folder that `INFERENCE_PREBUILT_KERNELS` names (the
/// writable cache stays where it was). A cold start then loads them in milliseconds instead of
/// compiling for about 3 s of CPU on every new instance. Other GPUs still compile at start.
///
/// The kernels are this builder's (`GemmaKernels.source`), so they are only added when the server
/// going into the image holds the same source text: a server of another version would look for
/// other names, and its kernels compile at start instead. So too when the image is for another
/// CPU architecture than this machine's: its NVRTC cannot run here.
public struct KernelBinaries: Sendable {
    public static let imageDirectory = "/usr/local/share/inference-server/kernels"
    /// sm_89: the NVIDIA L4 that Cloud Run attaches.
    public static let architectures = [89]

    public var entries: [LayerEntry] = []
    /// Why there are none (nil when there are).
    public var skipped: String?
    public var compiler: String = ""
    /// Holds the CUBINs until the layer is written; `discard()` removes it.
    let staging: String

    public init(
        nvrtc: String, server: String, imageArchitecture: String, architectures: [Int] = Self.architectures,
        temporaryDirectory: String = NSTemporaryDirectory()
    ) throws {
        staging = temporaryDirectory + "/builder-kernels-" + UUID().uuidString
        guard imageArchitecture == Self.hostArchitecture else {
            skipped = "the image is for \(imageArchitecture) and this machine is \(Self.hostArchitecture), so its NVRTC cannot run here: they compile when the server starts"
            return
        }
        guard Self.file(server, contains: GemmaKernels.source) else {
            skipped = "the server's CUDA kernels are not this builder's (another version?): they compile when it starts"
            return
        }
        let loaded: NVRTC
        do {
            loaded = try NVRTC(path: nvrtc)
        } catch {
            throw BuilderError.invalidOption("--gpu compiles the CUDA kernels ahead with the NVRTC it adds, and \(nvrtc) did not load: \(error)")
        }
        compiler = "NVRTC \(loaded.versionString)"
        try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)
        do {
            let cache = KernelCache(directory: Self.imageDirectory)
            for architecture in architectures {
                let cubin = try loaded.compile(GemmaKernels.source, architecture: architecture, options: GemmaKernels.options)
                let imagePath = cache.path(
                    source: GemmaKernels.source, architecture: architecture, options: GemmaKernels.options,
                    compilerVersion: loaded.versionString)
                let hostPath = staging + "/" + FileSystem.lastComponent(imagePath)
                guard FileManager.default.createFile(atPath: hostPath, contents: Data(cubin)) else {
                    throw BuilderError.invalidOption("cannot write \(hostPath): is the temporary folder full?")
                }
                entries.append(LayerEntry(path: imagePath, kind: .file(source: hostPath, executable: false)))
            }
        } catch {
            discard()
            throw error
        }
    }

    /// This machine's architecture in OCI's words.
    static var hostArchitecture: String {
        #if arch(x86_64)
        "amd64"
        #elseif arch(arm64)
        "arm64"
        #else
        "unknown"
        #endif
    }

    public func discard() { FileSystem.removeTree(staging) }

    /// Whether the file at `path` holds `text`'s UTF-8 bytes somewhere (a Swift string literal is
    /// stored so in the executable), read through a memory map.
    static func file(_ path: String, contains text: String) -> Bool {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) else { return false }
        let needle = Array(text.utf8)
        guard !needle.isEmpty else { return true }
        return data.withUnsafeBytes { haystack in
            needle.withUnsafeBytes { wanted in
                guard var at = haystack.baseAddress, haystack.count >= wanted.count else { return false }
                let last = haystack.baseAddress! + (haystack.count - wanted.count)
                // Each place the first byte occurs, then the rest compared (glibc's memmem is not exported to Swift).
                while at <= last, let found = memchr(at, Int32(needle[0]), last - at + 1) {
                    if memcmp(found, wanted.baseAddress!, wanted.count) == 0 { return true }
                    at = UnsafeRawPointer(found) + 1
                }
                return false
            }
        }
    }
}
