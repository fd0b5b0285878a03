// Shim for CCurl: the C headers this module exposes to Swift.
#pragma once
#include <curl/curl.h>

// curl_easy_setopt is variadic; Swift cannot call C variadics, so give each argument type its own wrapper.
static inline CURLcode ccurl_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ccurl_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ccurl_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
