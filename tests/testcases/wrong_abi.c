/* A module whose descriptor claims an ABI version the worker does not speak. */
#include "relib/module.h"

__attribute__((visibility("default"))) const relib_module_descriptor RELIB_DESCRIPTOR_SYMBOL = {
    RELIB_ABI_VERSION + 98, "wrong-abi", 0, 0, 0, 0,
};
