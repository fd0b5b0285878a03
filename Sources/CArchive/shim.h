// Shim for CArchive: the C headers this module exposes to Swift.
#pragma once
#include <archive.h>
#include <archive_entry.h>

// AE_IF* are macros with a cast, which Swift does not import; expose them as constants.
static const unsigned int carchive_ifreg = AE_IFREG;
static const unsigned int carchive_ifdir = AE_IFDIR;
static const unsigned int carchive_iflnk = AE_IFLNK;
