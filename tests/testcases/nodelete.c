/* Linked with -z nodelete: glibc never unloads it, whatever the agent does. */
#include "relib/module.h"

static int ping(const void* in, size_t len, relib_buffer* out) {
  (void)in;
  (void)len;
  return out->append(out, "pong", 4);
}

static const relib_export exports[] = {{"ping", ping}};

__attribute__((visibility("default"))) const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {
    RELIB_ABI_VERSION, "nodelete", 0, 0, exports, 1,
};
