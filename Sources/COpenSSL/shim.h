// Shim for COpenSSL: the C headers this module exposes to Swift.
#pragma once
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/err.h>
