import CUDA
import ELF
import Foundation
import OCI

/// What `builder build --gpu` adds so the image's server can compile its CUDA kernels: NVRTC 12.2
/// (`libnvrtc.so.12` and its builtins library) in /usr/local/lib, which the server searches beside
/// its executable's `../lib`, plus the shared objects they need that the server layer lacks. The
/// NVIDIA driver is not added: Cloud Run mounts it into GPU containers (at /usr/local/nvidia/lib64),
/// and a driver must match the host's kernel module anyway.
///
/// Why a layer and not an nvidia/cuda base image: the layer is 60 MB against a 240 MB+ runtime
/// base, it is the same bytes on every build (so a registry stores and a push sends it once), and
/// the image stays `FROM scratch` like the CPU one.
public struct GPURuntime: Sendable {
    public static let imageDirectory = "/usr/local/lib"
    public var entries: [LayerEntry]
    public var libraries: [String]
    /// Environment for the NVIDIA container runtime and Cloud Run's driver mount.
    public static let environment: [(String, String)] = [
        ("NVIDIA_VISIBLE_DEVICES", "all"), ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
    ]
    public static let driverDirectory = "/usr/local/nvidia/lib64"

    /// `nvrtc`: the host's libnvrtc.so.12; its libnvrtc-builtins.so.12.* must be beside it.
    /// `present`: image paths the server layer already holds.
    public init(nvrtc: String, present: Set<String>, resolver: LibraryResolver = LibraryResolver()) throws {
        guard FileSystem.kind(nvrtc) == .file else {
            throw BuilderError.invalidOption("--nvrtc \(nvrtc) is not a file; install NVRTC with `pip install nvidia-cuda-nvrtc-cu12==12.2.140`")
        }
        let directory = (nvrtc as NSString).deletingLastPathComponent
        let builtins = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasPrefix("libnvrtc-builtins.so.") }.sorted()
        guard let builtin = builtins.last else {
            throw BuilderError.invalidOption("\(directory) has no libnvrtc-builtins.so.*: NVRTC cannot compile without it")
        }
        var seen = present
        var entries: [LayerEntry] = []
        libraries = [nvrtc, directory + "/" + builtin]
        for (host, name) in [(nvrtc, "libnvrtc.so.12"), (directory + "/" + builtin, builtin)] {
            let imagePath = Self.imageDirectory + "/" + name
            entries.append(LayerEntry(path: imagePath, kind: .file(source: host, executable: true)))
            seen.insert(imagePath)
            for library in try resolver.resolve(executable: host, imagePath: imagePath).libraries where !seen.contains(library.imagePath) {
                seen.insert(library.imagePath)
                var target = library.imagePath
                if library.imagePath == library.hostPath.dropRootPrefix(resolver.root) {
                    let mapped = ServerBundle.mapDirectories(library.imagePath, root: resolver.root)
                    entries += mapped.symlinks.filter { !seen.contains($0.path) }
                    mapped.symlinks.forEach { seen.insert($0.path) }
                    target = mapped.path
                }
                entries.append(LayerEntry(path: target, kind: .file(source: library.hostPath, executable: true)))
            }
        }
        self.entries = entries
    }

    /// The host's NVRTC 12 for `--gpu` without `--nvrtc`: INFERENCE_NVRTC, the CUDA toolkit folders
    /// or Python's nvidia-cuda-nvrtc-cu12 wheel, the first that exists. Only a CUDA 12 NVRTC: the
    /// CUBINs of a newer one may not load on Cloud Run's 535 driver (CUDA 12.2).
    public static func findNVRTC(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        NVRTC.candidates(environment: environment).first {
            $0.hasPrefix("/") && $0.hasSuffix("libnvrtc.so.12") && FileSystem.kind($0) == .file
        }
    }
}
