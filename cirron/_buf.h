/* A growable byte buffer, shared by the compiled modules (_flush/_cencode.c writes JSON into it,
 * spool/_cbatch.c its column buffers). Growth doubles from 4 KiB; a failed growth sets MemoryError.
 *
 * A module that fills its buffers without holding the GIL defines CIRRON_BUF_NOGIL before including
 * this file: its buffers then come from the raw allocator (thread-safe; free them with buf_free or
 * BUF_FREE), and a failed growth sets nothing (it returns -1; the module sets MemoryError once it
 * holds the GIL again). */
#ifndef CIRRON_BUF_H
#define CIRRON_BUF_H

#include <Python.h>
#include <string.h>

#ifdef CIRRON_BUF_NOGIL
#define BUF_REALLOC PyMem_RawRealloc
#define BUF_FREE PyMem_RawFree
#define BUF_NO_MEMORY() ((void)0)
#else
#define BUF_REALLOC PyMem_Realloc
#define BUF_FREE PyMem_Free
#define BUF_NO_MEMORY() ((void)PyErr_NoMemory())
#endif

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static inline int buf_grow(Buf *b, Py_ssize_t extra) {
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *d = BUF_REALLOC(b->data, cap);
    if (d == NULL) {
        BUF_NO_MEMORY();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, Py_ssize_t extra) {
    return b->len + extra <= b->cap ? 0 : buf_grow(b, extra);
}

static inline int buf_put(Buf *b, const void *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static inline void buf_free(Buf *b) {
    BUF_FREE(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
