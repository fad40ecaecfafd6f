/* A relib module in plain C: the descriptor written by hand against
 * relib/module.h, proving the ABI needs no C++. */
#include <stdio.h>
#include <string.h>

#include "relib/module.h"

static const relib_host_api* host;

static int on_load(const relib_host_api* api, relib_buffer* error) {
  (void)error;
  host = api;
  static const char msg[] = "hello-c loaded";
  host->log(host->host_context, RELIB_LOG_INFO, msg, sizeof(msg) - 1);
  return RELIB_OK;
}

static int before_unload(relib_buffer* error) {
  (void)error;
  host = NULL;
  return RELIB_OK;
}

/* Appends "Hello from C, <input>!". */
static int greet(const void* in, size_t in_len, relib_buffer* out) {
  static const char prefix[] = "Hello from C, ";
  if (out->append(out, prefix, sizeof(prefix) - 1) != RELIB_OK) return RELIB_ERROR;
  if (in_len == 0) {
    out->append(out, "world", 5);
  } else {
    out->append(out, in, in_len);
  }
  return out->append(out, "!", 1);
}

/* Returns the input length as decimal text; fails on empty input. */
static int length(const void* in, size_t in_len, relib_buffer* out) {
  (void)in;
  if (in_len == 0) {
    static const char msg[] = "empty input";
    out->append(out, msg, sizeof(msg) - 1);
    return RELIB_ERROR;
  }
  char text[32];
  int n = snprintf(text, sizeof(text), "%zu", in_len);
  return out->append(out, text, (size_t)n);
}

static const relib_export exports[] = {
    {"greet", greet},
    {"length", length},
};

__attribute__((visibility("default"))) const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {
    RELIB_ABI_VERSION, "hello-c", on_load, before_unload, exports, sizeof(exports) / sizeof(exports[0]),
};
