import CZlib
import CZstd

/// How a layer's tar stream is stored. Weights default to `none` (bf16 barely compresses and an
/// uncompressed layer is hashed once, since its digest equals its diffID); everything else to gzip.
public enum LayerCompression: String, CaseIterable, Sendable, Codable {
    case none, gzip, zstd

    public var mediaType: String {
        switch self {
        case .none: return MediaType.layer
        case .gzip: return MediaType.layerGzip
        case .zstd: return MediaType.layerZstd
        }
    }

    func makeCompressor() throws -> Compressor? {
        switch self {
        case .none: return nil
        case .gzip: return try GzipCompressor()
        case .zstd: return try ZstdCompressor()
        }
    }
}

/// A streaming compressor: input in, compressed chunks out through `sink`.
protocol Compressor: AnyObject {
    func compress(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) throws -> Void) throws
    func finish(sink: (UnsafeRawBufferPointer) throws -> Void) throws
}

/// gzip through zlib with a fixed header: mtime 0, no file name, OS byte 255 ("unknown"), as
/// swift-container-plugin does, so that the bytes do not depend on the build host's OS.
/// The same zlib version gives the same bytes; a different one may not (deflate output is not
/// specified), which is why weights are never gzipped by default.
final class GzipCompressor: Compressor {
    private var stream = z_stream()
    private let header: UnsafeMutablePointer<gz_header>
    private var output = [UInt8](repeating: 0, count: 1 << 20)

    init() throws {
        header = .allocate(capacity: 1)
        header.initialize(to: gz_header())
        header.pointee.os = 255
        guard czlib_deflate_init_gzip(&stream, Z_DEFAULT_COMPRESSION) == Z_OK else {
            header.deallocate()
            throw OCIError.compression("zlib could not start a gzip stream")
        }
        guard deflateSetHeader(&stream, header) == Z_OK else {
            throw OCIError.compression("zlib refused the gzip header")
        }
    }

    deinit {
        deflateEnd(&stream)
        header.deallocate()
    }

    func compress(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard input.count > 0 else { return }
        try run(input, flush: Z_NO_FLUSH, sink: sink)
    }

    func finish(sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try run(UnsafeRawBufferPointer(start: nil, count: 0), flush: Z_FINISH, sink: sink)
    }

    private func run(_ input: UnsafeRawBufferPointer, flush: Int32, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.avail_in = uInt(input.count)
        try output.withUnsafeMutableBytes { out in
            while true {
                stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = uInt(out.count)
                let status = deflate(&stream, flush)
                guard status == Z_OK || status == Z_STREAM_END || status == Z_BUF_ERROR else {
                    throw OCIError.compression("zlib deflate returned \(status)")
                }
                let produced = out.count - Int(stream.avail_out)
                if produced > 0 { try sink(UnsafeRawBufferPointer(rebasing: out[0..<produced])) }
                if flush == Z_FINISH ? status == Z_STREAM_END : (stream.avail_in == 0 && stream.avail_out != 0) {
                    break
                }
            }
        }
    }
}

/// zstd at level 3 (zstd's default), single-threaded so the output depends only on the input.
final class ZstdCompressor: Compressor {
    private let context: OpaquePointer
    private var output = [UInt8](repeating: 0, count: Int(ZSTD_CStreamOutSize()))

    init() throws {
        guard let ctx = ZSTD_createCCtx() else { throw OCIError.compression("zstd could not allocate a context") }
        context = ctx
        _ = ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, 3)
        _ = ZSTD_CCtx_setParameter(ctx, ZSTD_c_checksumFlag, 1)
    }

    deinit { ZSTD_freeCCtx(context) }

    func compress(_ input: UnsafeRawBufferPointer, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard input.count > 0 else { return }
        try run(input, mode: ZSTD_e_continue, sink: sink)
    }

    func finish(sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try run(UnsafeRawBufferPointer(start: nil, count: 0), mode: ZSTD_e_end, sink: sink)
    }

    private func run(_ input: UnsafeRawBufferPointer, mode: ZSTD_EndDirective, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var inBuffer = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        try output.withUnsafeMutableBytes { out in
            while true {
                var outBuffer = ZSTD_outBuffer(dst: out.baseAddress, size: out.count, pos: 0)
                let remaining = ZSTD_compressStream2(context, &outBuffer, &inBuffer, mode)
                if ZSTD_isError(remaining) != 0 {
                    throw OCIError.compression("zstd: \(String(cString: ZSTD_getErrorName(remaining)))")
                }
                if outBuffer.pos > 0 { try sink(UnsafeRawBufferPointer(rebasing: out[0..<outBuffer.pos])) }
                let done = mode == ZSTD_e_end ? remaining == 0 : inBuffer.pos == inBuffer.size
                if done { break }
            }
        }
    }
}
