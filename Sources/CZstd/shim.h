// Shim for CZstd: the C headers this module exposes to Swift.
#pragma once
#include <zstd.h>
