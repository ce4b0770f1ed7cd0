/*
 * vigil_monitor.h — the vigil monitor C ABI, version 1.
 *
 * A monitor library exports exactly two symbols:
 *
 *   uint32_t vigil_monitor_abi_version(void);           read first
 *   const struct vigil_monitor_vtable *vigil_monitor_vtable(void);
 *
 * Data crosses the boundary only as UTF-8 JSON in byte buffers:
 *   params   the registration's [params] table, e.g. {"interfaces":["eth0"]}
 *   declare  an array of pattern strings, e.g. ["/net/interfaces/ * /status"]
 *            (no spaces around the star; a star matches exactly one segment)
 *   samples  an array of objects:
 *            {"name":"/fs/data/used_percent","value":42.5,"unit":"%"}
 *            {"name":"/net/interfaces/eth0/status","value":"down","reason":"no carrier"}
 *            {"name":"/volume/data/status","value":null,"reason":"vgs timed out"}
 *            "timestamp_ms" (milliseconds since the epoch) is optional.
 *
 * Buffers the plugin returns in a `struct vigil_buf` are allocated by the
 * plugin and released by the host through the plugin's `free_buf`.
 * The host never calls one instance from two threads at once. A plugin that
 * implements `start` may call `push` from any thread until its `stop`
 * returns, and never after.
 *
 * Every entry returns VIGIL_OK, or VIGIL_ERROR with a UTF-8 message in `out`.
 */
#ifndef VIGIL_MONITOR_H
#define VIGIL_MONITOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VIGIL_ABI_VERSION 1u

#define VIGIL_OK 0
#define VIGIL_ERROR 1
#define VIGIL_PANIC 2

struct vigil_buf {
    uint8_t *ptr;
    size_t len;
    size_t cap;
};

typedef void (*vigil_push_fn)(void *ctx, const uint8_t *json, size_t len);

struct vigil_monitor_vtable {
    /* sizeof(struct vigil_monitor_vtable) as the plugin was compiled. */
    uint32_t struct_size;
    /* VIGIL_ABI_VERSION */
    uint32_t abi_version;
    /* Parse params and create an instance into *out_instance. */
    int32_t (*create)(const uint8_t *params, size_t params_len, void **out_instance,
                      struct vigil_buf *out);
    /* Fill out with a JSON array of the patterns this instance publishes. */
    int32_t (*declare)(void *instance, struct vigil_buf *out);
    /* Fill out with a JSON array of samples; return within timeout_ms. */
    int32_t (*poll)(void *instance, uint64_t timeout_ms, struct vigil_buf *out);
    /* Optional (NULL together with stop): start pushing samples via push(ctx, ...). */
    int32_t (*start)(void *instance, vigil_push_fn push, void *ctx, struct vigil_buf *out);
    /* Optional: stop pushing; join threads before returning. */
    void (*stop)(void *instance);
    void (*destroy)(void *instance);
    void (*free_buf)(struct vigil_buf *buf);
};

uint32_t vigil_monitor_abi_version(void);
const struct vigil_monitor_vtable *vigil_monitor_vtable(void);

#ifdef __cplusplus
}
#endif

#endif /* VIGIL_MONITOR_H */
