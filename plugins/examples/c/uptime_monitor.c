/*
 * Example dylib monitor in plain C against sdk/include/vigil_monitor.h.
 *
 * Publishes /example/c/uptime_seconds (from /proc/uptime). Takes no params.
 * Build:  cc -shared -fPIC -O2 -I ../../../sdk/include -o libvigil_example_c.so uptime_monitor.c
 * (or `make`), then register it with plugin = "path/to/libvigil_example_c.so".
 *
 * Everything crosses the boundary as JSON in buffers this library allocates
 * (malloc) and frees (free_buf). Poll-only: start/stop are NULL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vigil_monitor.h"

struct instance {
    unsigned long polls;
};

/* Copies a C string into a buffer the host will hand back to free_buf. */
static void set_buf(struct vigil_buf *out, const char *text) {
    size_t len = strlen(text);
    out->ptr = malloc(len ? len : 1);
    if (out->ptr == NULL) {
        out->len = out->cap = 0;
        return;
    }
    memcpy(out->ptr, text, len);
    out->len = len;
    out->cap = len;
}

/* Params must be empty or an empty object: refuse anything else. */
static int params_empty(const uint8_t *params, size_t len) {
    size_t i;
    int braces = 0;
    for (i = 0; i < len; i++) {
        char c = (char)params[i];
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r') continue;
        if (c == '{' && braces == 0) { braces = 1; continue; }
        if (c == '}' && braces == 1) { braces = 2; continue; }
        return 0;
    }
    return braces == 0 || braces == 2;
}

static int32_t create(const uint8_t *params, size_t params_len, void **out_instance,
                      struct vigil_buf *out) {
    struct instance *inst;
    if (!params_empty(params, params_len)) {
        set_buf(out, "params: this monitor takes no params");
        return VIGIL_ERROR;
    }
    inst = calloc(1, sizeof *inst);
    if (inst == NULL) {
        set_buf(out, "out of memory");
        return VIGIL_ERROR;
    }
    *out_instance = inst;
    return VIGIL_OK;
}

static int32_t declare(void *instance, struct vigil_buf *out) {
    (void)instance;
    set_buf(out, "[\"/example/c/uptime_seconds\"]");
    return VIGIL_OK;
}

static int32_t poll(void *instance, uint64_t timeout_ms, struct vigil_buf *out) {
    struct instance *inst = instance;
    char json[256];
    double up = 0;
    FILE *f;
    (void)timeout_ms;
    inst->polls++;
    f = fopen("/proc/uptime", "r");
    if (f == NULL || fscanf(f, "%lf", &up) != 1) {
        if (f) fclose(f);
        /* A null value makes the resource unknown, with the reason shown in resls. */
        set_buf(out, "[{\"name\":\"/example/c/uptime_seconds\",\"value\":null,"
                     "\"reason\":\"cannot read /proc/uptime\"}]");
        return VIGIL_OK;
    }
    fclose(f);
    snprintf(json, sizeof json,
             "[{\"name\":\"/example/c/uptime_seconds\",\"value\":%.2f,\"unit\":\"s\"}]", up);
    set_buf(out, json);
    return VIGIL_OK;
}

static void destroy(void *instance) { free(instance); }

static void free_buf(struct vigil_buf *buf) {
    free(buf->ptr);
    buf->ptr = NULL;
    buf->len = buf->cap = 0;
}

static const struct vigil_monitor_vtable VTABLE = {
    .struct_size = sizeof(struct vigil_monitor_vtable),
    .abi_version = VIGIL_ABI_VERSION,
    .create = create,
    .declare = declare,
    .poll = poll,
    .start = NULL,
    .stop = NULL,
    .destroy = destroy,
    .free_buf = free_buf,
};

uint32_t vigil_monitor_abi_version(void) { return VIGIL_ABI_VERSION; }

const struct vigil_monitor_vtable *vigil_monitor_vtable(void) { return &VTABLE; }
