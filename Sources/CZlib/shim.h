// Shim for CZlib: the C headers this module exposes to Swift.
#pragma once
#include <zlib.h>

// deflateInit2 is a macro in zlib.h; Swift cannot call macros, so wrap it.
static inline int czlib_deflate_init_gzip(z_stream *strm, int level) {
    // windowBits 15 + 16 asks zlib for a gzip wrapper; memLevel 8 is zlib's default.
    return deflateInit2(strm, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}
