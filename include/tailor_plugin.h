/*
 * tailor_plugin.h — the plugin ABI of tailord (version 1.4).
 *
 * A plugin is a shared library exporting one function, tailor_plugin_entry.
 * The host calls it once, passing its services; the plugin returns a
 * descriptor listing its stages. The host refuses a descriptor whose magic
 * or ABI major differs from its own, naming both versions.
 *
 * Conventions
 *  - Strings are UTF-8 views (tailor_str): pointer + length, not
 *    NUL-terminated, valid only for the duration of the call that passes
 *    them. Copy what you keep.
 *  - Results travel through a tailor_sink: the callee calls emit() zero or
 *    more times (streamed chunks); the receiver copies each chunk during the
 *    call. Nobody frees memory the other side allocated.
 *  - Every function returns a tailor_plugin_status; on failure the callee
 *    writes a human-readable message to the error sink.
 *  - The descriptor, its stage table and the strings it points to must stay
 *    valid until the process exits: the host never unloads a plugin.
 *  - Threading: create/destroy are called from one thread at a time per
 *    stage; call() may run concurrently on different instances, and on the
 *    same instance only if the stage sets TAILOR_STAGE_FLAG_CONCURRENT.
 *    The host's services may be called from any of the plugin's threads.
 *  - This header changes only by appending (fields at the end of structs,
 *    new enum values), with a minor bump; struct_size tells who has what.
 */
#ifndef TAILOR_PLUGIN_H
#define TAILOR_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TAILOR_PLUGIN_MAGIC 0x504C5254u /* "TRLP" little-endian */
#ifndef TAILOR_PLUGIN_ABI_MAJOR
#define TAILOR_PLUGIN_ABI_MAJOR 1
#endif
#define TAILOR_PLUGIN_ABI_MINOR 4
#define TAILOR_PLUGIN_ENTRY_SYMBOL "tailor_plugin_entry"

typedef enum tailor_plugin_status {
  TAILOR_PLUGIN_OK = 0,
  TAILOR_PLUGIN_ERR_INVALID = 1,   /* bad request or config */
  TAILOR_PLUGIN_ERR_INTERNAL = 2,  /* the stage failed (a Rust panic lands here) */
  TAILOR_PLUGIN_ERR_CANCELLED = 3, /* the host cancelled the request */
  TAILOR_PLUGIN_ERR_UNAVAILABLE = 4,
  /* ABI 1.2: */
  TAILOR_PLUGIN_ERR_NOT_FOUND = 5, /* the request names something the stage does not have (an adapter) */
  TAILOR_PLUGIN_ERR_CONFLICT = 6   /* the request conflicts with the stage's state (a name already taken) */
} tailor_plugin_status;

typedef struct tailor_str {
  const char *ptr;
  size_t len;
} tailor_str;

typedef struct tailor_sink {
  void *ctx;
  /* Returns TAILOR_PLUGIN_OK to continue, TAILOR_PLUGIN_ERR_CANCELLED to ask the sender to stop. */
  tailor_plugin_status (*emit)(void *ctx, tailor_str chunk);
} tailor_sink;

typedef enum tailor_stage_kind {
  TAILOR_STAGE_FILTER = 1,   /* text in, text out (e.g. redact an answer) */
  TAILOR_STAGE_SEARCH = 2,   /* query in, hits out */
  TAILOR_STAGE_GENERATE = 3, /* prompt in, tokens out (streamed) */
  TAILOR_STAGE_EMBED = 4,    /* texts in, vectors out */
  TAILOR_STAGE_RERANK = 5,
  TAILOR_STAGE_TRAIN = 6,
  TAILOR_STAGE_INDEX = 7 /* document management (ABI 1.1) */
} tailor_stage_kind;

#define TAILOR_STAGE_FLAG_CONCURRENT 1u

/* One slot of a parallel job: slot is in 0..slots. */
typedef void (*tailor_slot_fn)(void *job_ctx, uint32_t slot, uint32_t slots);

/* Services the host offers every plugin. */
typedef struct tailor_host_api {
  uint32_t struct_size;
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t cpu_threads; /* the plugin's share of the CPU */
  void *host_ctx;
  void (*log)(void *host_ctx, int32_t level, tailor_str message); /* 0 error .. 4 trace */
  void (*progress)(void *host_ctx, tailor_str task, uint64_t done, uint64_t total);
  int32_t (*is_cancelled)(void *host_ctx, uint64_t request_id); /* non-zero once cancelled */
  /* Calls another stage by name (e.g. "embed"), streaming its output to out. */
  tailor_plugin_status (*call_stage)(void *host_ctx, tailor_str stage, tailor_str request_json, tailor_sink *out,
                                     tailor_sink *error);
  /* ABI 1.3: runs slot(job_ctx, s, cpu_threads) for every s in 0..cpu_threads on the host's
   * kernel threads (one pool for the whole process) and returns when all are done. slot may run
   * on any thread, concurrently, and must not unwind or longjmp. Check struct_size first. */
  void (*parallel_for)(void *host_ctx, tailor_slot_fn slot, void *job_ctx);
  /* ABI 1.4: the device tailord serves on ([server] device): -1 for the CPU, else the CUDA
   * ordinal. Every plugin running kernels there takes its device memory from one budget for the
   * whole daemon ([server] device_memory_mb): device_reserve returns non-zero when `bytes` are
   * granted (they count as the plugin's until device_release gives them back) and zero, granting
   * nothing, when they would exceed the budget. Reserve before allocating from the driver,
   * release after freeing. Check struct_size first. */
  int32_t device;
  int32_t (*device_reserve)(void *host_ctx, uint64_t bytes);
  void (*device_release)(void *host_ctx, uint64_t bytes);
} tailor_host_api;

typedef struct tailor_stage {
  uint32_t struct_size;
  uint32_t kind;  /* tailor_stage_kind */
  uint32_t flags; /* TAILOR_STAGE_FLAG_* */
  const char *name; /* NUL-terminated, static */
  /* Creates an instance from a JSON config; *instance belongs to the plugin. */
  tailor_plugin_status (*create)(tailor_str config_json, void **instance, tailor_sink *error);
  /* Runs one request (JSON); results stream to out. */
  tailor_plugin_status (*call)(void *instance, uint64_t request_id, tailor_str request_json, tailor_sink *out,
                               tailor_sink *error);
  void (*destroy)(void *instance);
} tailor_stage;

typedef struct tailor_plugin_descriptor {
  uint32_t magic;       /* TAILOR_PLUGIN_MAGIC */
  uint32_t abi_major;   /* TAILOR_PLUGIN_ABI_MAJOR the plugin was built against */
  uint32_t abi_minor;
  uint32_t struct_size; /* sizeof(tailor_plugin_descriptor) as the plugin knows it */
  const char *name;     /* NUL-terminated, static */
  const char *version;
  uint32_t stage_count;
  const tailor_stage *stages;
} tailor_plugin_descriptor;

/* The one symbol a plugin exports. Returns NULL only if it cannot run at all. */
typedef const tailor_plugin_descriptor *(*tailor_plugin_entry_fn)(const tailor_host_api *host,
                                                                   uint32_t host_abi_major);

#ifdef __cplusplus
}
#endif

#endif /* TAILOR_PLUGIN_H */
