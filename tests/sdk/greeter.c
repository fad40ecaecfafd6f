/* A C module built with only `pkg-config --cflags --libs relib` (sdk_install_test). */
#include "relib/module.h"

static int greet(const void* in, size_t in_len, relib_buffer* out) {
  static const char prefix[] = "pkg-config greets ";
  if (out->append(out, prefix, sizeof(prefix) - 1) != RELIB_OK) return RELIB_ERROR;
  return out->append(out, in, in_len);
}

static const relib_export exports[] = {{"greet", greet}};

__attribute__((visibility("default"))) const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {
    RELIB_ABI_VERSION, "greeter-c", NULL, NULL, exports, 1,
};
