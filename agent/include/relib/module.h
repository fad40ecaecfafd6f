/* relib module ABI: the C interface between a module (.so) and the relib
 * agent that hosts it. A module exports exactly one symbol,
 * RELIB_DESCRIPTOR_SYMBOL, of type relib_module_descriptor; everything else
 * in the module should have hidden visibility.
 *
 * Contracts for module authors:
 *  - No C++ exception, longjmp or signal may cross any function of this ABI.
 *  - Lifecycle hooks (on_load, before_unload) never run beside each other or
 *    beside an export of the same module. Exports of a module that does not
 *    declare RELIB_MODULE_FLAG_THREAD_SAFE (a "serial" module: every module
 *    built before the flag existed) are entered by one thread at a time,
 *    although not always the same thread. A thread-safe module's exports may
 *    run on up to ModuleOptions.max_concurrent_calls threads at once
 *    (default 4; a serial module ignores the option, and its load carries a
 *    warning if it asked for more). Calls run on the agent's executor
 *    threads, which belong to the module: they are ended (running the
 *    module's thread_local destructors) before the module is unloaded or
 *    swapped; a thread_local of the module is per executor thread, not per
 *    module. See README "Execution model".
 *  - Memory passed to a module (`in`, host api) is owned by the host and
 *    valid only for the duration of the call.
 *  - Output and error text go into a host-owned relib_buffer through its
 *    `append` function, so no allocation crosses the boundary.
 */
#ifndef RELIB_MODULE_H_
#define RELIB_MODULE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of the structures below. The agent
 * refuses a descriptor with another version. */
#define RELIB_ABI_VERSION 1u

/* Name of the one symbol a module exports. */
#define RELIB_DESCRIPTOR_SYMBOL relib_module_descriptor_v
#define RELIB_DESCRIPTOR_SYMBOL_NAME "relib_module_descriptor_v"

/* Return codes of on_load, before_unload and exports. Any non-zero value is
 * a failure; the buffer then holds a human-readable reason. */
#define RELIB_OK 0
#define RELIB_ERROR 1
#define RELIB_ERROR_EXCEPTION 2 /* the C++ SDK caught an exception */
#define RELIB_NOT_FOUND 3       /* load_state: no such key */
/* Host API: the host has no room for it (state store full, a value larger
 * than the store or the worker link can ever take). */
#define RELIB_ERROR_RESOURCE_EXHAUSTED 4

/* Log levels, equal to spdlog's. */
#define RELIB_LOG_TRACE 0
#define RELIB_LOG_DEBUG 1
#define RELIB_LOG_INFO 2
#define RELIB_LOG_WARN 3
#define RELIB_LOG_ERROR 4
#define RELIB_LOG_CRITICAL 5

/* Host-owned growable byte buffer. `append` copies `len` bytes to the end and
 * returns RELIB_OK, or RELIB_ERROR if the host cannot take them: an export's
 * output is limited to what relibd can deliver (relibd --max-message-mb);
 * past it the append, and every later one, is refused and the call fails
 * with RESOURCE_EXHAUSTED whatever the export returns. */
typedef struct relib_buffer {
  void* host_context;
  int (*append)(struct relib_buffer* self, const void* data, size_t len);
} relib_buffer;

/* Services the host offers a module. Valid from on_load until before_unload
 * returns; a module may keep the pointer for that long. Thread-safe.
 *
 * Every entry takes any input: a null pointer where bytes are expected (with
 * a non-zero length), a bad fd, a key or value of any size or content. It
 * either does its job or returns an error code (RELIB_ERROR, or
 * RELIB_ERROR_RESOURCE_EXHAUSTED for sizes); `last_error` then says why. A
 * failure never ends the worker or relibd, and RELIB_OK always means done. */
typedef struct relib_host_api {
  uint32_t abi_version;
  void* host_context;
  /* Logs one line through the worker's logger, tagged with the module name;
   * relibd re-logs it. `text` (any bytes) need not be NUL-terminated. Control
   * characters, line breaks and invalid UTF-8 are logged escaped ("\n",
   * "\x00"), so a module's text can never start a log line of its own; text
   * past 64 KiB is cut off and counted ("[... N more bytes]"). */
  void (*log)(void* host_context, int level, const char* text, size_t len);
  /* State store, per module name. relibd keeps it in memory it owns, so it
   * survives reloads, crashes of the worker and, with relibd --state-dir,
   * restarts of relibd. save_state may be called at any time from any thread
   * (a checkpoint); the next version reads it in on_load. Keys are
   * NUL-terminated and otherwise any bytes. save_state returns RELIB_OK only
   * once relibd holds the value (it waits for relibd, at most 5 s): a value
   * saved is never lost to a worker crash that follows. It returns
   * RELIB_ERROR_RESOURCE_EXHAUSTED when relibd's store (relibd
   * --state-store-mb) or the worker link (relibd --max-message-mb) has no
   * room for it; the previous value of the key then stays. */
  int (*save_state)(void* host_context, const char* key, const void* data, size_t len);
  /* Appends the bytes saved under `key` to `out`; RELIB_NOT_FOUND if none. */
  int (*load_state)(void* host_context, const char* key, relib_buffer* out);
  /* fd store, per module name: hands a duplicate of `fd` to relibd under
   * `key` (the module keeps its own fd). relibd keeps it across reloads and
   * worker restarts until the module is unloaded: a listening socket stays
   * bound and keeps queueing connections while versions are swapped.
   * RELIB_OK once relibd holds it; RELIB_ERROR for an fd that is not open. */
  int (*store_fd)(void* host_context, const char* key, int fd);
  /* A new fd (the caller owns it) for `key`, or -1 if none is stored. */
  int (*take_fd)(void* host_context, const char* key);
  /* Appends to `out` why the calling thread's last failed host-API call
   * failed (nothing if none failed) and returns RELIB_OK. Added after the
   * first release of ABI version 1: a module that may meet an older host
   * checks it for NULL. */
  int (*last_error)(void* host_context, relib_buffer* out);
} relib_host_api;

/* One callable export: reads `in_len` bytes at `in`, appends its result to
 * `out`, returns RELIB_OK or an error code with the reason in `out`. */
typedef int (*relib_export_fn)(const void* in, size_t in_len, relib_buffer* out);

typedef struct relib_export {
  const char* name;
  relib_export_fn fn;
} relib_export;

typedef struct relib_module_descriptor {
  /* Must be RELIB_ABI_VERSION of the header the module was built with. */
  uint32_t abi_version;
  /* Human-readable module name (the name a user loads it under may differ). */
  const char* name;
  /* Optional. Called once after dlopen; non-zero fails the load (the reason
   * goes into `error`) and the module is unloaded again. */
  int (*on_load)(const relib_host_api* host, relib_buffer* error);
  /* Optional. Called once before dlclose: stop threads, release resources.
   * Non-zero refuses the unload unless it is forced. */
  int (*before_unload)(relib_buffer* error);
  const relib_export* exports;
  size_t export_count;
  /* Added within ABI version 1: RELIB_MODULE_FLAG_* bits. The agent reads it
   * only if the exported descriptor symbol is large enough to hold it (its
   * ELF st_size), so modules built before it existed still load, as serial
   * modules (flags 0). Older agents ignore it. */
  uint32_t flags;
} relib_module_descriptor;

/* The module's exports may be called from several threads at once (the
 * module synchronises its own state). Without it, exports are entered by one
 * thread at a time, whatever ModuleOptions.max_concurrent_calls says. */
#define RELIB_MODULE_FLAG_THREAD_SAFE 0x1u

#ifdef __cplusplus
}
#endif

#endif /* RELIB_MODULE_H_ */
