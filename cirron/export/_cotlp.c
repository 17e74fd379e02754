/* OTLP/JSON text of a session's spans straight from its Arrow column buffers: the optional fast
 * path of cirron.export._otlp_columns (its Arrow-kernel encoder is the pure-Python twin and the
 * per-record encoder cirron.export._otlp the reference; the tests check all give the same bytes).
 *
 * What stays in Python is handed in as text: attrs (encoded once per distinct raw text), float
 * mark values (one orjson call per slice), the pieces of `request` spans and of mark values that
 * are not floats. Span ids go through BLAKE2b here (derive_span_id: digest 8, person
 * "cirron.span").
 *
 * encode and digests run without the GIL (encode holds it where it calls Python: to hand a full
 * block to write(), and throughout a slice that has pieces to take from dicts), so a write-behind
 * thread writes one block while the next is built.
 */
#define PY_SSIZE_T_CLEAN
#define CIRRON_BUF_NOGIL /* the text is built without the GIL (encode) */
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>

#include "../_buf.h"
#include "../_jtext.h"
#include "../_pyview.h"

#define PUT_LIT(b, s) buf_put((b), (s), (Py_ssize_t)(sizeof(s) - 1))

/* ------------------------------------------------------------------ BLAKE2b (RFC 7693) */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

/* Rotation right of 64-bit words: of one uint64_t, or of each lane of a vector of them. */
#define ROTR64(x, n) (((x) >> (n)) | ((x) << (64 - (n))))

static inline uint64_t load64(const uint8_t *p) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
#else
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
#endif
}

#define B2_G(a, b, c, d, x, y) \
    do {                       \
        a = a + b + (x);       \
        d = ROTR64(d ^ a, 32); \
        c = c + d;             \
        b = ROTR64(b ^ c, 24); \
        a = a + b + (y);       \
        d = ROTR64(d ^ a, 16); \
        c = c + d;             \
        b = ROTR64(b ^ c, 63); \
    } while (0)

/* One round of BLAKE2b on the working words v with the message words m, permuted by sg. */
#define B2_ROUND(v, m, sg)                                   \
    do {                                                     \
        B2_G(v[0], v[4], v[8], v[12], m[sg[0]], m[sg[1]]);   \
        B2_G(v[1], v[5], v[9], v[13], m[sg[2]], m[sg[3]]);   \
        B2_G(v[2], v[6], v[10], v[14], m[sg[4]], m[sg[5]]);  \
        B2_G(v[3], v[7], v[11], v[15], m[sg[6]], m[sg[7]]);  \
        B2_G(v[0], v[5], v[10], v[15], m[sg[8]], m[sg[9]]);  \
        B2_G(v[1], v[6], v[11], v[12], m[sg[10]], m[sg[11]]); \
        B2_G(v[2], v[7], v[8], v[13], m[sg[12]], m[sg[13]]);  \
        B2_G(v[3], v[4], v[9], v[14], m[sg[14]], m[sg[15]]);  \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t;
    if (last) v[14] = ~v[14];
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) B2_ROUND(v, m, B2_SIGMA[r]);
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* The first 8 bytes (little-endian in the word) of BLAKE2b-64 of s, person "cirron.span". */
static uint64_t span_digest(const uint8_t *s, Py_ssize_t n) {
    static const uint8_t person[16] = "cirron.span";
    uint64_t h[8];
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL | 8; /* digest length 8, no key, fanout 1, depth 1 */
    h[6] ^= load64(person);
    h[7] ^= load64(person + 8);
    uint8_t block[128];
    uint64_t t = 0;
    while (n > 128) {
        t += 128;
        b2_compress(h, s, t, 0);
        s += 128;
        n -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, s, (size_t)n);
    t += (uint64_t)n;
    b2_compress(h, block, t, 1);
    return h[0];
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
/* Four one-block digests at once in AVX2 vectors (where the CPU has them: see digests). */
#define B2_LANES 4
typedef uint64_t u64x4 __attribute__((vector_size(32)));

/* span_digest of four strings of at most 128 bytes each. */
__attribute__((target("avx2"))) static void span_digest4(const uint8_t *const s[4], const Py_ssize_t n[4],
                                                          uint64_t out[4]) {
    static const uint8_t person[16] = "cirron.span";
    uint8_t block[4][128];
    u64x4 m[16], v[16];
    for (int l = 0; l < 4; l++) {
        memset(block[l], 0, 128);
        memcpy(block[l], s[l], (size_t)n[l]);
    }
    for (int i = 0; i < 16; i++)
        m[i] = (u64x4){load64(block[0] + 8 * i), load64(block[1] + 8 * i), load64(block[2] + 8 * i),
                       load64(block[3] + 8 * i)};
    const uint64_t h[8] = {B2_IV[0] ^ (0x01010000ULL | 8), B2_IV[1], B2_IV[2], B2_IV[3], B2_IV[4], B2_IV[5],
                           B2_IV[6] ^ load64(person), B2_IV[7] ^ load64(person + 8)};
    for (int i = 0; i < 8; i++) {
        v[i] = (u64x4){h[i], h[i], h[i], h[i]};
        v[i + 8] = (u64x4){B2_IV[i], B2_IV[i], B2_IV[i], B2_IV[i]};
    }
    v[12] ^= (u64x4){(uint64_t)n[0], (uint64_t)n[1], (uint64_t)n[2], (uint64_t)n[3]};
    v[14] = ~v[14];
#pragma GCC unroll 12
    for (int r = 0; r < 12; r++) B2_ROUND(v, m, B2_SIGMA[r]);
    u64x4 first = v[0] ^ v[8];
    for (int l = 0; l < 4; l++) out[l] = h[0] ^ first[l];
}

static int have_lanes(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#else
#define B2_LANES 0
static void span_digest4(const uint8_t *const s[4], const Py_ssize_t n[4], uint64_t out[4]) {
    for (int l = 0; l < 4; l++) out[l] = span_digest(s[l], n[l]);
}
static int have_lanes(void) { return 0; }
#endif

/* Whether span_digest4 runs four at once here (set at import). */
static int use_lanes = 0;

static const char HEXD[] = "0123456789abcdef";

/* derive_span_id's 16 hex characters (never all zeros). */
static void put_digest_hex(char *o, uint64_t d) {
    if (d == 0) {
        memcpy(o, "0000000000000001", 16);
        return;
    }
    for (int i = 0; i < 8; i++) {
        unsigned byte = (unsigned)(d >> (8 * i)) & 0xff;
        o[2 * i] = HEXD[byte >> 4];
        o[2 * i + 1] = HEXD[byte & 15];
    }
}

/* ------------------------------------------------------------------ JSON text */

static int put_bytes_obj(Buf *b, PyObject *o) {
    if (!PyBytes_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes");
        return -1;
    }
    return buf_put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
}

/* A piece of text from a bytes object (n -1: none). */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Text;

static inline int put_text(Buf *b, const Text *t) { return t->n > 0 ? buf_put(b, t->s, t->n) : 0; }

/* ------------------------------------------------------------------ digests */

static PyObject *digests(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "digests(ids, n)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "negative n");
        return NULL;
    }
    PV_POOL(v, 3); /* an id column's validity, offsets and data */
    PvCol ids;
    if (pv_col(&v, args[0], 's', n, &ids) < 0) {
        pv_release(&v);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * 8);
    if (out != NULL) {
        uint64_t *d = (uint64_t *)PyBytes_AS_STRING(out);
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS /* the views and `out` stay ours: another thread may run meanwhile */
        /* ids of one block wait in `row` until four can go at once; longer ones go alone */
        const uint8_t *str[4];
        Py_ssize_t len[4], row[4];
        int k = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            const char *s = pv_str(&ids, i, &len[k]);
            if (s == NULL) {
                bad = 1;
                break;
            }
            if (!use_lanes || len[k] > 128) {
                d[i] = span_digest((const uint8_t *)s, len[k]);
                continue;
            }
            str[k] = (const uint8_t *)s;
            row[k] = i;
            if (++k == 4) {
                uint64_t got[4];
                span_digest4(str, len, got);
                for (int l = 0; l < 4; l++) d[row[l]] = got[l];
                k = 0;
            }
        }
        for (int l = 0; l < k && !bad; l++) d[row[l]] = span_digest(str[l], len[l]);
        Py_END_ALLOW_THREADS
        if (bad) {
            Py_CLEAR(out);
            PyErr_SetString(PyExc_ValueError, PV_BAD_OFFSETS);
        }
    }
    pv_release(&v);
    return out;
}

/* ------------------------------------------------------------------ spans */

enum { S_TRACE, S_DIGESTS, S_ID, S_NAME, S_PARENT, S_PARENT_ROW, S_START, S_END, S_INDEX, S_CPU, S_GPU, S_MEM,
       S_THREAD, S_ATTR, S_ITEMS, S_STATUS, S_OPEN_END, M_ORDER, M_TARGET, M_TS, M_NAME, M_KIND, M_ATTR, M_EXTRA,
       SPEC_LEN };

static const char *const FIELD_KEYS[] = {
    ",{\"key\":\"cirron.index\",\"value\":{\"intValue\":\"",
    ",{\"key\":\"cirron.cpu_ns\",\"value\":{\"intValue\":\"",
    ",{\"key\":\"cirron.gpu_ns\",\"value\":{\"intValue\":\"",
    ",{\"key\":\"cirron.memory_peak_bytes\",\"value\":{\"intValue\":\"",
    ",{\"key\":\"thread.id\",\"value\":{\"intValue\":\"",
};

typedef struct {
    const char *trace;
    const uint64_t *digest;
    PvCol id, name, parent, start, end, fields[5], m_ts, m_name, m_kind;
    const int64_t *parent_row, *attr, *order, *target, *m_attr;
    int64_t open_end;
    Py_ssize_t n, m;
    /* this slice */
    const double *vals;
    const char *ftext, *ftext_end;
    PyObject *value_over, *request_over;
    /* the texts of the attrs lists (status: n -1 for None), read without the GIL */
    Text *items, *status, *extra;
    Py_ssize_t n_items, n_extra;
    const char *err; /* what went wrong (ValueError), set without the GIL; NULL: out of memory */
} Enc;

/* Records what went wrong (raised once the GIL is held again). */
static int fail(Enc *e, const char *err) {
    e->err = err;
    return -1;
}

/* One mark's event (k: its row among the marks; j: its position in this slice's values). */
static int put_event(Buf *b, Enc *e, Py_ssize_t k, Py_ssize_t j) {
    Py_ssize_t len;
    const char *s;
    if (PUT_LIT(b, "{\"timeUnixNano\":\"") < 0) return -1;
    int64_t ts = pv_valid(&e->m_ts, k) ? e->m_ts.i64[k] : 0;
    if (jt_put_int64(b, ts < 0 ? 0 : ts) < 0 || PUT_LIT(b, "\",\"name\":") < 0) return -1;
    s = pv_valid(&e->m_name, k) ? pv_str(&e->m_name, k, &len) : (len = 0, "");
    if (s == NULL) return fail(e, PV_BAD_OFFSETS);
    if ((len ? jt_put_str(b, s, len) : PUT_LIT(b, "\"mark\"")) < 0) return -1;
    if (PUT_LIT(b, ",\"attributes\":[{\"key\":\"value\",\"value\":") < 0) return -1;
    /* this value's float text: up to the next comma of the slice's orjson list */
    const char *f = e->ftext, *fe = f;
    while (fe < e->ftext_end && *fe != ',') fe++;
    if (f >= e->ftext_end) return fail(e, "fewer float texts than marks");
    e->ftext = fe + 1;
    PyObject *over = NULL;
    if (e->value_over != NULL) { /* (the GIL is held when there are overrides) */
        PyObject *key = PyLong_FromSsize_t(k);
        if (key == NULL) return -1;
        over = PyDict_GetItemWithError(e->value_over, key);
        Py_DECREF(key);
        if (over == NULL && PyErr_Occurred()) return -1;
    }
    if (over != NULL) {
        if (put_bytes_obj(b, over) < 0) return -1;
    } else {
        double x = e->vals[j];
        if (PUT_LIT(b, "{\"doubleValue\":") < 0) return -1;
        if (isnan(x)) {
            if (PUT_LIT(b, "\"NaN\"") < 0) return -1;
        } else if (isinf(x)) {
            if ((x > 0 ? PUT_LIT(b, "\"Infinity\"") : PUT_LIT(b, "\"-Infinity\"")) < 0) return -1;
        } else if (buf_put(b, f, fe - f) < 0) {
            return -1;
        }
        if (PUT_LIT(b, "}") < 0) return -1;
    }
    if (PUT_LIT(b, "},{\"key\":\"kind\",\"value\":{\"stringValue\":") < 0) return -1;
    if (pv_valid(&e->m_kind, k)) {
        s = pv_str(&e->m_kind, k, &len);
        if (s == NULL) return fail(e, PV_BAD_OFFSETS);
        if (jt_put_str(b, s, len) < 0) return -1;
    } else if (PUT_LIT(b, "\"point\"") < 0) {
        return -1;
    }
    if (PUT_LIT(b, "}}") < 0) return -1;
    int64_t a = e->m_attr[k];
    if (a < 0 || a >= e->n_extra) return fail(e, "mark attrs out of range");
    if (put_text(b, &e->extra[a]) < 0) return -1;
    return PUT_LIT(b, "]}");
}

/* ,"events":[...] of span row i: marks at sorted positions *pos.. that target it. */
static int put_events(Buf *b, Enc *e, Py_ssize_t i, Py_ssize_t *pos, Py_ssize_t hi, Py_ssize_t lo) {
    Py_ssize_t p = *pos;
    if (p >= hi || e->target[p] != i) return 0;
    if (PUT_LIT(b, ",\"events\":[") < 0) return -1;
    for (; p < hi && e->target[p] == i; p++) {
        int64_t k = e->order[p];
        if (k < 0 || k >= e->m) return fail(e, "mark order out of range");
        if (p != *pos && PUT_LIT(b, ",") < 0) return -1;
        if (put_event(b, e, (Py_ssize_t)k, p - lo) < 0) return -1;
    }
    *pos = p;
    return PUT_LIT(b, "]");
}

static int put_span(Buf *b, Enc *e, Py_ssize_t i, Py_ssize_t *pos, Py_ssize_t hi, Py_ssize_t lo) {
    Py_ssize_t len;
    const char *s;
    int64_t attr = e->attr[i];
    if (attr < 0 || attr >= e->n_items) return fail(e, "span attrs out of range");
    Text status = e->status[attr];
    PyObject *request = NULL;
    if (e->request_over != NULL) { /* (the GIL is held when there are overrides) */
        PyObject *key = PyLong_FromSsize_t(i);
        if (key == NULL) return -1;
        request = PyDict_GetItemWithError(e->request_over, key);
        Py_DECREF(key);
        if (request == NULL && PyErr_Occurred()) return -1;
    }
    if (request != NULL) { /* (head, status or None) made the per-record way */
        if (!PyTuple_Check(request) || PyTuple_GET_SIZE(request) != 2) {
            PyErr_SetString(PyExc_TypeError, "request piece: expected (head, status)");
            return -1;
        }
        if (put_bytes_obj(b, PyTuple_GET_ITEM(request, 0)) < 0) return -1;
        PyObject *own = PyTuple_GET_ITEM(request, 1);
        if (own == Py_None) {
            status.n = -1;
        } else if (PyBytes_Check(own)) {
            status.s = PyBytes_AS_STRING(own);
            status.n = PyBytes_GET_SIZE(own);
        } else {
            PyErr_SetString(PyExc_TypeError, "request piece: status must be bytes or None");
            return -1;
        }
    } else {
        if (buf_reserve(b, 128) < 0) return -1;
        char *o = b->data + b->len;
        memcpy(o, "{\"traceId\":\"", 12);
        memcpy(o + 12, e->trace, 32);
        memcpy(o + 44, "\",\"spanId\":\"", 12);
        put_digest_hex(o + 56, e->digest[i]);
        memcpy(o + 72, "\",\"name\":", 9);
        b->len += 81;
        s = pv_valid(&e->name, i) ? pv_str(&e->name, i, &len) : (len = 0, "");
        if (s == NULL) return fail(e, PV_BAD_OFFSETS);
        if ((len ? jt_put_str(b, s, len) : PUT_LIT(b, "\"span\"")) < 0) return -1;
        int64_t start = pv_valid(&e->start, i) ? e->start.i64[i] : 0;
        int open = !pv_valid(&e->end, i);
        int64_t end = e->end.i64[i];
        if (open) {
            int64_t oe = e->open_end ? e->open_end : start;
            end = start > oe ? start : oe;
        }
        if (PUT_LIT(b, ",\"kind\":1,\"startTimeUnixNano\":\"") < 0 || jt_put_int64(b, start < 0 ? 0 : start) < 0 ||
            PUT_LIT(b, "\",\"endTimeUnixNano\":\"") < 0 || jt_put_int64(b, end < 0 ? 0 : end) < 0 ||
            PUT_LIT(b, "\",\"attributes\":[") < 0)
            return -1;
        if (put_text(b, &e->items[attr]) < 0) return -1;
        if (PUT_LIT(b, "{\"key\":\"cirron.span.id\",\"value\":{\"stringValue\":") < 0) return -1;
        s = pv_str(&e->id, i, &len);
        if (s == NULL) return fail(e, PV_BAD_OFFSETS);
        if (jt_put_str(b, s, len) < 0 || PUT_LIT(b, "}}") < 0) return -1;
        for (int f = 0; f < 5; f++) {
            if (!pv_valid(&e->fields[f], i)) continue;
            if (buf_put(b, FIELD_KEYS[f], (Py_ssize_t)strlen(FIELD_KEYS[f])) < 0 ||
                jt_put_int64(b, e->fields[f].i64[i]) < 0 || PUT_LIT(b, "\"}}") < 0)
                return -1;
        }
        if (open && PUT_LIT(b, ",{\"key\":\"cirron.open\",\"value\":{\"boolValue\":true}}") < 0) return -1;
        if (PUT_LIT(b, "]") < 0) return -1;
        if (pv_valid(&e->parent, i)) {
            s = pv_str(&e->parent, i, &len);
            if (s == NULL) return fail(e, PV_BAD_OFFSETS);
            if (len) {
                int64_t row = e->parent_row[i];
                uint64_t d = row >= 0 && row < e->n ? e->digest[row] : span_digest((const uint8_t *)s, len);
                if (buf_reserve(b, 34) < 0) return -1;
                char *p = b->data + b->len;
                memcpy(p, ",\"parentSpanId\":\"", 17);
                put_digest_hex(p + 17, d);
                p[33] = '"';
                b->len += 34;
            }
        }
    }
    if (put_events(b, e, i, pos, hi, lo) < 0) return -1;
    if (put_text(b, &status) < 0) return -1;
    return PUT_LIT(b, "}");
}

/* ------------------------------------------------------------------ the text's blocks */

/* The text is built in Blocks: read-only buffer objects handed to write() when full. A scratch()
 * keeps a few of them from slice to slice and reuses one only when nothing else holds it (its
 * reference count is 1), so its pages are touched once, not once per slice (a fresh multi-MB
 * block each time is mapped afresh: page faults by the million), and a writer may keep a block
 * (a write-behind thread writing it while the next one fills) without ever seeing it change. */
#define SCRATCH_NAME "cirron.export._cotlp.scratch"
#define FLUSH_BYTES (4 << 20)
#define RING 4

typedef struct {
    PyObject_HEAD
    Buf b;
} Block;

static int block_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    Block *k = (Block *)self;
    return PyBuffer_FillInfo(view, self, k->b.data != NULL ? k->b.data : "", k->b.len, 1, flags);
}

static void block_dealloc(PyObject *self) {
    buf_free(&((Block *)self)->b);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t block_len(PyObject *self) { return ((Block *)self)->b.len; }

static PyBufferProcs block_buffer = {block_getbuffer, NULL};
static PySequenceMethods block_sequence = {.sq_length = block_len};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron.export._cotlp.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = block_dealloc,
    .tp_as_buffer = &block_buffer,
    .tp_as_sequence = &block_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A block of encoded text (a read-only buffer; len() is its size in bytes).",
};

typedef struct {
    Block *ring[RING];
    int next;
    int busy; /* an encode is filling its blocks */
} Scratch;

static void scratch_free(PyObject *capsule) {
    Scratch *sc = PyCapsule_GetPointer(capsule, SCRATCH_NAME);
    if (sc != NULL) {
        for (int i = 0; i < RING; i++) Py_XDECREF(sc->ring[i]);
        PyMem_Free(sc);
    }
}

static PyObject *scratch(PyObject *self, PyObject *unused) {
    Scratch *sc = PyMem_Calloc(1, sizeof(Scratch));
    if (sc == NULL) return PyErr_NoMemory();
    PyObject *capsule = PyCapsule_New(sc, SCRATCH_NAME, scratch_free);
    if (capsule == NULL) PyMem_Free(sc);
    return capsule;
}

/* An empty block only the scratch holds: the first free one of the ring from `next` on, else a
 * new one (in place of the one at `next`, left to whoever holds it). */
static Block *take_block(Scratch *sc) {
    for (int i = 0; i < RING; i++) {
        int k = (sc->next + i) % RING;
        Block *got = sc->ring[k];
        if (got != NULL && Py_REFCNT(got) == 1) {
            sc->next = (k + 1) % RING;
            got->b.len = 0;
            return got;
        }
    }
    Block *fresh = PyObject_New(Block, &BlockType);
    if (fresh == NULL) return NULL;
    memset(&fresh->b, 0, sizeof fresh->b);
    Py_XSETREF(sc->ring[sc->next], fresh);
    sc->next = (sc->next + 1) % RING;
    return fresh;
}

/* Hands the block to write(block), unless it is empty. */
static int hand(Block *blk, PyObject *write) {
    if (blk->b.len == 0) return 0;
    PyObject *r = PyObject_CallOneArg(write, (PyObject *)blk);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The texts of a list of bytes (or None, where `none_ok`), kept alive by *hold (a tuple of them). */
static Text *texts_of(PyObject *list, int none_ok, PyObject **hold, Py_ssize_t *n) {
    *hold = PySequence_Tuple(list);
    if (*hold == NULL) return NULL;
    *n = PyTuple_GET_SIZE(*hold);
    Text *t = PyMem_Malloc(sizeof(Text) * (size_t)(*n ? *n : 1));
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        PyObject *o = PyTuple_GET_ITEM(*hold, i);
        if (o == Py_None && none_ok) {
            t[i].s = NULL;
            t[i].n = -1;
        } else if (PyBytes_Check(o)) {
            t[i].s = PyBytes_AS_STRING(o);
            t[i].n = PyBytes_GET_SIZE(o);
        } else {
            PyErr_SetString(PyExc_TypeError, "encode: attrs texts must be bytes");
            PyMem_Free(t);
            return NULL;
        }
    }
    return t;
}

/* encode(spec, a, b, lo, hi, vals, ftext, value_over, request_over, scratch, write) -> int
 *
 * Writes spans a:b, comma-separated, through write(block) (a read-only buffer of a few MB, one of
 * the scratch()'s blocks: write may keep it, it is then never reused); returns how many bytes. Their marks are at positions lo:hi of the marks sorted by target
 * span (spec's order/target), `vals` their float values in that order and `ftext` the orjson
 * list of them; value_over {mark row: value text} and request_over {span row: (head, status)}
 * replace what is made here (None: nothing to replace). */
static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "encode(spec, a, b, lo, hi, vals, ftext, value_over, request_over, scratch, write)");
        return NULL;
    }
    if (!PyCapsule_IsValid(args[9], SCRATCH_NAME)) {
        PyErr_SetString(PyExc_TypeError, "encode: scratch must come from scratch()");
        return NULL;
    }
    Scratch *sc = PyCapsule_GetPointer(args[9], SCRATCH_NAME);
    if (sc->busy) {
        PyErr_SetString(PyExc_RuntimeError, "encode: scratch in use by another encode");
        return NULL;
    }
    PyObject *write = args[10];
    if (!PyCallable_Check(write)) {
        PyErr_SetString(PyExc_TypeError, "encode: write must be callable");
        return NULL;
    }
    PyObject *spec = args[0];
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != SPEC_LEN) {
        PyErr_SetString(PyExc_TypeError, "encode: bad spec");
        return NULL;
    }
    Py_ssize_t a = PyLong_AsSsize_t(args[1]), bb = PyLong_AsSsize_t(args[2]);
    Py_ssize_t lo = PyLong_AsSsize_t(args[3]), hi = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) return NULL;
    Enc e;
    memset(&e, 0, sizeof e);
    PV_POOL(v, 64);
    Block *blk = NULL;
    Buf *out = NULL;
    Py_ssize_t total = 0;
    PyObject *result = NULL;
    PyObject *hold[3] = {NULL, NULL, NULL};
    PyThreadState *released = NULL; /* the GIL, while let go */
    int failed = 0;
    sc->busy = 1;
    Py_buffer *bv;

#define SPEC(k) PyTuple_GET_ITEM(spec, k)
    if (pv_get(&v, SPEC(S_TRACE), &bv) < 0) goto done;
    if (bv->len != 32) {
        PyErr_SetString(PyExc_ValueError, "trace id: 32 hex characters");
        goto done;
    }
    e.trace = bv->buf;
    if (pv_get(&v, SPEC(S_DIGESTS), &bv) < 0) goto done;
    e.n = bv->len / 8;
    e.digest = bv->buf;
    if (pv_get(&v, SPEC(M_ORDER), &bv) < 0) goto done;
    Py_ssize_t m_len = bv->len / 8;
    if (a < 0 || bb < a || bb > e.n || lo < 0 || hi < lo || hi > m_len) {
        PyErr_SetString(PyExc_ValueError, "encode: slice out of range");
        goto done;
    }
    if (pv_col(&v, SPEC(S_ID), 's', e.n, &e.id) < 0 || pv_col(&v, SPEC(S_NAME), 's', e.n, &e.name) < 0 ||
        pv_col(&v, SPEC(S_PARENT), 's', e.n, &e.parent) < 0 ||
        pv_i64s(&v, SPEC(S_PARENT_ROW), e.n, &e.parent_row) < 0 ||
        pv_col(&v, SPEC(S_START), 'i', e.n, &e.start) < 0 || pv_col(&v, SPEC(S_END), 'i', e.n, &e.end) < 0 ||
        pv_i64s(&v, SPEC(S_ATTR), e.n, &e.attr) < 0 || pv_i64s(&v, SPEC(M_ORDER), m_len, &e.order) < 0 ||
        pv_i64s(&v, SPEC(M_TARGET), m_len, &e.target) < 0)
        goto done;
    for (int f = 0; f < 5; f++)
        if (pv_col(&v, SPEC(S_INDEX + f), 'i', e.n, &e.fields[f]) < 0) goto done;
    if (e.id.valid != NULL) {
        PyErr_SetString(PyExc_ValueError, "span ids: nulls");
        goto done;
    }
    Py_ssize_t n_marks = -1;
    {
        PyObject *t = SPEC(M_TS);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "mark ts: bad column");
            goto done;
        }
        /* the mark columns hold every mark row that order names; their length is the attr array's */
        if (pv_get(&v, SPEC(M_ATTR), &bv) < 0) goto done;
        n_marks = bv->len / 8;
        e.m_attr = bv->buf;
    }
    if (pv_col(&v, SPEC(M_TS), 'i', n_marks, &e.m_ts) < 0 || pv_col(&v, SPEC(M_NAME), 's', n_marks, &e.m_name) < 0 ||
        pv_col(&v, SPEC(M_KIND), 's', n_marks, &e.m_kind) < 0)
        goto done;
    e.m = n_marks; /* order names rows of these columns (checked as it is read) */
    if (!PyList_Check(SPEC(S_ITEMS)) || !PyList_Check(SPEC(S_STATUS)) || !PyList_Check(SPEC(M_EXTRA)) ||
        PyList_GET_SIZE(SPEC(S_ITEMS)) != PyList_GET_SIZE(SPEC(S_STATUS))) {
        PyErr_SetString(PyExc_TypeError, "encode: attrs texts must be lists (items and status alike)");
        goto done;
    }
    Py_ssize_t n_status;
    if ((e.items = texts_of(SPEC(S_ITEMS), 0, &hold[0], &e.n_items)) == NULL ||
        (e.status = texts_of(SPEC(S_STATUS), 1, &hold[1], &n_status)) == NULL ||
        (e.extra = texts_of(SPEC(M_EXTRA), 0, &hold[2], &e.n_extra)) == NULL)
        goto done;
    e.open_end = SPEC(S_OPEN_END) == Py_None ? 0 : PyLong_AsLongLong(SPEC(S_OPEN_END));
    if (PyErr_Occurred()) goto done;
    if (pv_get(&v, args[5], &bv) < 0) goto done;
    if (!pv_holds(bv->len, 8, hi - lo)) {
        PyErr_SetString(PyExc_ValueError, "fewer values than marks");
        goto done;
    }
    e.vals = bv->buf;
    if (pv_get(&v, args[6], &bv) < 0) goto done;
    e.ftext = bv->buf;
    e.ftext_end = e.ftext + bv->len;
    if (bv->len >= 2 && e.ftext[0] == '[' && e.ftext_end[-1] == ']') {
        e.ftext++;
        e.ftext_end--;
    }
    e.value_over = args[7] == Py_None ? NULL : args[7];
    e.request_over = args[8] == Py_None ? NULL : args[8];
    if ((e.value_over && !PyDict_Check(e.value_over)) || (e.request_over && !PyDict_Check(e.request_over))) {
        PyErr_SetString(PyExc_TypeError, "encode: overrides must be dicts");
        goto done;
    }
#undef SPEC

    if ((blk = take_block(sc)) == NULL) goto done;
    out = &blk->b;
    /* overrides are looked up in dicts: then the GIL stays held */
    int nogil = e.value_over == NULL && e.request_over == NULL;
    if (nogil) released = PyEval_SaveThread();
    Py_ssize_t pos = lo;
    while (pos < hi && e.target[pos] < a) pos++; /* (none: lo is where span a's marks start) */
    for (Py_ssize_t i = a; i < bb; i++) {
        if ((i != a && PUT_LIT(out, ",") < 0) || put_span(out, &e, i, &pos, hi, lo) < 0) {
            failed = 1;
            break;
        }
        if (out->len >= FLUSH_BYTES) {
            total += out->len;
            if (released != NULL) PyEval_RestoreThread(released);
            released = NULL;
            if (hand(blk, write) < 0 || (blk = take_block(sc)) == NULL) goto done;
            out = &blk->b;
            if (nogil) released = PyEval_SaveThread();
        }
    }
    if (released != NULL) PyEval_RestoreThread(released);
    released = NULL;
    if (failed) {
        if (!PyErr_Occurred()) {
            if (e.err != NULL)
                PyErr_SetString(PyExc_ValueError, e.err);
            else
                PyErr_NoMemory();
        }
        goto done;
    }
    if (pos != hi) {
        PyErr_SetString(PyExc_ValueError, "encode: marks outside the slice's spans");
        goto done;
    }
    total += out->len;
    if (hand(blk, write) < 0) goto done;
    result = PyLong_FromSsize_t(total);
done:
    sc->busy = 0;
    PyMem_Free(e.items);
    PyMem_Free(e.status);
    PyMem_Free(e.extra);
    for (int k = 0; k < 3; k++) Py_XDECREF(hold[k]);
    pv_release(&v);
    return result;
}

static PyMethodDef module_methods[] = {
    {"digests", (PyCFunction)(void (*)(void))digests, METH_FASTCALL,
     "digests(ids, n): the BLAKE2b span digests (8 bytes each) of a string column's n rows."},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(spec, a, b, lo, hi, vals, ftext, value_over, request_over, scratch, write): OTLP/JSON text of "
     "spans a:b through write (in blocks, read-only buffers); returns its size."},
    {"scratch", scratch, METH_NOARGS, "scratch(): the blocks encode builds its text in (reused between calls)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cotlp", "C encoder of OTLP/JSON spans from Arrow columns.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cotlp(void) {
    if (PyType_Ready(&BlockType) < 0) return NULL;
    use_lanes = have_lanes();
    return PyModule_Create(&module_def);
}
