/* How the compiled encoders take Python buffers and Arrow columns, with their bounds checks
 * (export/_cjson.c, _cotlp.c and _cperfetto.c): one rule for each of
 *   - buffers acquired into a pool and released together (PvPool);
 *   - a contiguous buffer of item-sized values: a whole number of them (pv_count), or at least n
 *     of them (pv_values, pv_i64s);
 *   - an Arrow array's validity bit (pv_bit: no bitmap, no nulls) and a bitmap long enough for
 *     its rows (pv_bitmap_holds);
 *   - a string's offsets, checked as each string is read: 0 <= start <= end <= the data's length
 *     (pv_span_ok);
 *   - an Arrow column handed in as a (validity or None, offset, buffers...) tuple (PvCol, pv_col):
 *     int64 values, or int32 string offsets and their data, each buffer long enough for its rows.
 *
 * Everything here holds the GIL except pv_bit, pv_span_ok, pv_valid and pv_str (plain reads of
 * buffers already acquired: a module may call them without it). */
#ifndef CIRRON_PYVIEW_H
#define CIRRON_PYVIEW_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ a pool of buffers */

typedef struct {
    Py_buffer *views;
    int used, cap;
} PvPool;

/* A pool `name` of at most n buffers, on the stack. */
#define PV_POOL(name, n)          \
    Py_buffer name##_views[(n)];  \
    PvPool name = {name##_views, 0, (n)}

static inline int pv_get(PvPool *p, PyObject *o, Py_buffer **out) {
    if (p->used >= p->cap) {
        PyErr_SetString(PyExc_RuntimeError, "too many buffers");
        return -1;
    }
    if (PyObject_GetBuffer(o, &p->views[p->used], PyBUF_SIMPLE) < 0) return -1;
    *out = &p->views[p->used++];
    return 0;
}

static inline void pv_release(PvPool *p) {
    for (int i = 0; i < p->used; i++) PyBuffer_Release(&p->views[i]);
    p->used = 0;
}

/* ------------------------------------------------------------------ item-sized values */

/* How many `item`-byte values v holds (*n); a length that is not a whole number of them is a
 * ValueError naming `what`. */
static inline int pv_count(const Py_buffer *v, Py_ssize_t item, const char *what, Py_ssize_t *n) {
    if (v->len % item) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes is not a whole number of %zd-byte values", what, v->len,
                     item);
        return -1;
    }
    *n = v->len / item;
    return 0;
}

/* Whether len bytes hold count `item`-byte values. */
static inline int pv_holds(Py_ssize_t len, Py_ssize_t item, Py_ssize_t count) { return len / item >= count; }

/* A buffer of at least n `item`-byte values, acquired into the pool. */
static inline int pv_values(PvPool *p, PyObject *o, Py_ssize_t item, Py_ssize_t n, Py_buffer **bv) {
    if (pv_get(p, o, bv) < 0) return -1;
    if (!pv_holds((*bv)->len, item, n)) {
        PyErr_SetString(PyExc_ValueError, "array shorter than its rows");
        return -1;
    }
    return 0;
}

/* pv_values of int64 (or float64) values. */
static inline int pv_i64s(PvPool *p, PyObject *o, Py_ssize_t n, const int64_t **out) {
    Py_buffer *bv;
    if (pv_values(p, o, 8, n, &bv) < 0) return -1;
    *out = bv->buf;
    return 0;
}

/* ------------------------------------------------------------------ Arrow arrays */

/* Whether bit k of an Arrow validity bitmap is set (NULL: no nulls). */
static inline int pv_bit(const uint8_t *valid, Py_ssize_t k) {
    return valid == NULL || ((valid[k >> 3] >> (k & 7)) & 1);
}

/* Whether a validity bitmap of len bytes covers `rows` rows (its array's offset included). */
static inline int pv_bitmap_holds(Py_ssize_t len, Py_ssize_t rows) { return len * 8 >= rows; }

/* Whether a string's offsets [a, z) lie within data of data_len bytes. */
static inline int pv_span_ok(int64_t a, int64_t z, Py_ssize_t data_len) { return a >= 0 && a <= z && z <= data_len; }

#define PV_BAD_OFFSETS "column: string offsets out of range"

/* One Arrow array handed in as (validity or None, offset, values) or (validity or None, offset,
 * int32 offsets, data or None); i64 and offs already start at the array's offset. */
typedef struct {
    Py_ssize_t n, off;
    const uint8_t *valid; /* NULL: no nulls */
    const int64_t *i64;   /* int64 values */
    const int32_t *offs;  /* string offsets */
    const char *data;     /* string bytes */
    Py_ssize_t data_len;
} PvCol;

/* kind: 'i' int64, 's' string. n: the rows the column must hold (each string's offsets are
 * checked as it is read: pv_str). */
static inline int pv_col(PvPool *p, PyObject *t, char kind, Py_ssize_t n, PvCol *c) {
    memset(c, 0, sizeof *c);
    Py_ssize_t want = kind == 's' ? 4 : 3;
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != want) {
        PyErr_SetString(PyExc_TypeError, "column: expected (validity, offset, buffers...)");
        return -1;
    }
    c->n = n;
    c->off = PyLong_AsSsize_t(PyTuple_GET_ITEM(t, 1));
    if (c->off < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "column: negative offset");
        return -1;
    }
    Py_buffer *bv;
    PyObject *validity = PyTuple_GET_ITEM(t, 0);
    if (validity != Py_None) {
        if (pv_get(p, validity, &bv) < 0) return -1;
        if (!pv_bitmap_holds(bv->len, c->off + n)) goto short_buffer;
        c->valid = bv->buf;
    }
    if (pv_get(p, PyTuple_GET_ITEM(t, 2), &bv) < 0) return -1;
    if (kind == 'i') {
        if (!pv_holds(bv->len, 8, c->off + n)) goto short_buffer;
        c->i64 = (const int64_t *)bv->buf + c->off;
        return 0;
    }
    if (!pv_holds(bv->len, 4, c->off + n + 1)) goto short_buffer;
    c->offs = (const int32_t *)bv->buf + c->off;
    PyObject *data = PyTuple_GET_ITEM(t, 3);
    if (data == Py_None) {
        c->data = "";
        c->data_len = 0;
    } else {
        if (pv_get(p, data, &bv) < 0) return -1;
        c->data = bv->buf;
        c->data_len = bv->len;
    }
    return 0;
short_buffer:
    PyErr_SetString(PyExc_ValueError, "column: buffer shorter than its rows");
    return -1;
}

/* Whether row i of the column is valid (not null). */
static inline int pv_valid(const PvCol *c, Py_ssize_t i) { return pv_bit(c->valid, c->off + i); }

/* Row i's string, or NULL when its offsets leave the data (nothing set: the caller raises
 * PV_BAD_OFFSETS, with the GIL). */
static inline const char *pv_str(const PvCol *c, Py_ssize_t i, Py_ssize_t *len) {
    int32_t a = c->offs[i], z = c->offs[i + 1];
    if (!pv_span_ok(a, z, c->data_len)) return NULL;
    *len = z - a;
    return c->data + a;
}

#endif
