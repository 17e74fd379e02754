/* One spool batch file's records as column buffers, parsed straight from its JSON bytes: the
 * optional fast path of cirron.spool.columnar._fast_file (its msgspec decoder is the reference;
 * the tests check that both give the same columns).
 *
 * parse(data, with_marks) returns the columns, or None where the file is not plainly what
 * cirron's writer makes and msgspec's reading of it must decide: invalid JSON or UTF-8 anywhere,
 * a duplicate field, a field of another type than columnar._Span / _Mark declare, an integer
 * outside int64, a mark value that is not a JSON float, a float that overflows, snapshots, no
 * session_id or one that is neither a string nor null, nesting deeper than MAX_DEPTH. Declining
 * is always safe; accepting means giving exactly what the msgspec decoder gives.
 *
 * The parse itself runs without the GIL (so several threads parse files at once): its buffers come
 * from the raw allocator (CIRRON_BUF_NOGIL), the session id is kept as bytes, the rare number only
 * CPython's strtod can round takes the GIL back for that call, and the buffers become Python
 * objects once the parse is over and the GIL is held again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CIRRON_BUF_NOGIL
#include "../_buf.h"

/* Deeper nesting inside a skipped value is left to msgspec (which has its own recursion limit). */
#define MAX_DEPTH 64

/* ------------------------------------------------------------------ columns */

enum { K_ID, K_STR, K_PARENT, K_INT, K_FLOAT, K_RAW };

typedef struct {
    int kind;
    Buf data;    /* K_INT: int64 values; K_FLOAT: float64 values; strings: their UTF-8 */
    Buf offsets; /* strings: int32 offsets into data */
    Buf valid;   /* validity bitmap (bit set: not null), least significant bit first */
    Py_ssize_t nulls;
} Col;

static int col_start(Col *c, Py_ssize_t rows_hint) {
    memset(&c->data, 0, sizeof(Buf));
    memset(&c->offsets, 0, sizeof(Buf));
    memset(&c->valid, 0, sizeof(Buf));
    c->nulls = 0;
    if (c->kind == K_INT || c->kind == K_FLOAT) return buf_reserve(&c->data, 8 * (rows_hint + 1));
    int32_t zero = 0;
    return buf_put(&c->offsets, &zero, 4);
}

static void col_free(Col *c) {
    buf_free(&c->data);
    buf_free(&c->offsets);
    buf_free(&c->valid);
}

/* Mark row `row` valid or null in the bitmap. */
static inline int col_validity(Col *c, Py_ssize_t row, int valid) {
    Py_ssize_t need = row / 8 + 1;
    if (need > c->valid.len) {
        if (buf_reserve(&c->valid, need - c->valid.len) < 0) return -1;
        memset(c->valid.data + c->valid.len, 0, need - c->valid.len);
        c->valid.len = need;
    }
    if (valid) c->valid.data[row / 8] |= (char)(1 << (row % 8));
    else c->nulls++;
    return 0;
}

/* End a string row: its bytes are already in data. */
static inline int str_end(Col *c, Py_ssize_t row, int valid) {
    if (c->data.len > INT32_MAX) return 0;
    int32_t off = (int32_t)c->data.len;
    if (buf_put(&c->offsets, &off, 4) < 0) return -1;
    return col_validity(c, row, valid) < 0 ? -1 : 1;
}

static inline int num_put(Col *c, Py_ssize_t row, const void *v8, int valid) {
    if (buf_put(&c->data, v8, 8) < 0) return -1;
    return col_validity(c, row, valid) < 0 ? -1 : 1;
}

/* A block of memory a column was built in, handed to Python as is (its buffer is what the Arrow
 * array reads): the bytes are not copied again. */
typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t len;
} BlockObject;

static int block_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    BlockObject *b = (BlockObject *)self;
    return PyBuffer_FillInfo(view, self, b->data, b->len, 1, flags);
}

static void block_dealloc(PyObject *self) {
    BUF_FREE(((BlockObject *)self)->data);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs block_as_buffer = {block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron.spool._cbatch.Block",
    .tp_basicsize = sizeof(BlockObject),
    .tp_dealloc = block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Read-only bytes of one column buffer.",
};

/* A Block that takes over b's memory, cut to its length (b is left empty). */
static PyObject *block_of(Buf *b) {
    if (b->data == NULL && buf_grow(b, 1) < 0) return PyErr_NoMemory(); /* a valid pointer even when empty */
    if (b->cap > b->len + 4096) {
        char *cut = BUF_REALLOC(b->data, b->len ? b->len : 1);
        if (cut != NULL) b->data = cut;
    }
    BlockObject *out = PyObject_New(BlockObject, &BlockType);
    if (out == NULL) return NULL;
    out->data = b->data;
    out->len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return (PyObject *)out;
}

/* (validity or None, null count, values) or (validity or None, null count, offsets, data). */
static PyObject *col_result(Col *c) {
    int text = c->kind != K_INT && c->kind != K_FLOAT;
    PyObject *out = PyTuple_New(text ? 4 : 3);
    if (out == NULL) return NULL;
    PyObject *items[4] = {c->nulls ? block_of(&c->valid) : Py_NewRef(Py_None), PyLong_FromSsize_t(c->nulls),
                          block_of(text ? &c->offsets : &c->data), text ? block_of(&c->data) : NULL};
    int failed = 0;
    for (int i = 0; i < PyTuple_GET_SIZE(out); i++) {
        if (items[i] == NULL) failed = 1;
        else PyTuple_SET_ITEM(out, i, items[i]);
    }
    if (failed) {
        Py_DECREF(out); /* releases the items already in it */
        return NULL;
    }
    return out;
}

/* ------------------------------------------------------------------ JSON scanning */

typedef struct {
    const unsigned char *p, *end;
    int depth;
    Buf scratch; /* a decoded key */
    Buf sid;     /* the session id's decoded UTF-8 (sid_null: it was null) */
    int sid_null;
    PyThreadState *released; /* the GIL is released (by this thread state) while the parse runs */
    int any; /* inside a field msgspec decodes as a Python value (Any): numbers it may refuse decline */
} P;

/* Returns of the parsing steps: 1 read, 0 decline (msgspec decides), -1 error (a Python error
 * set when it holds the GIL, else a failed allocation). */
#define TRY(expr) do { int _r = (expr); if (_r <= 0) return _r; } while (0)

static inline void skip_ws(P *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

/* The next non-blank byte, or -1 at the end of the input. */
static inline int peek(P *s) {
    if (s->p < s->end && *s->p > ' ') return *s->p;
    skip_ws(s);
    return s->p < s->end ? *s->p : -1;
}

static int literal(P *s, const char *word, Py_ssize_t n) {
    if (s->end - s->p < n || memcmp(s->p, word, n) != 0) return 0;
    s->p += n;
    return 1;
}

/* Bytes that stand for themselves inside a JSON string: printable ASCII but '"' and '\'. */
static unsigned char PLAIN[256];

static void init_plain(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = c != '"' && c != '\\';
}

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether one of the 8 bytes at p is not PLAIN (a quote, a backslash, a control or non-ASCII
 * byte): the usual "has a zero byte" bit tricks, exact for each condition. */
static inline int word_has_special(const unsigned char *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    uint64_t quote = x ^ (ONES * '"'), bslash = x ^ (ONES * '\\');
    uint64_t special = ((quote - ONES) & ~quote) | ((bslash - ONES) & ~bslash) | ((x - ONES * 0x20) & ~x) | x;
    return (special & HIGHS) != 0;
}

/* The first byte at or after p that is not PLAIN, or end. */
static inline const unsigned char *plain_run(const unsigned char *p, const unsigned char *end) {
    while (end - p >= 8 && !word_has_special(p)) p += 8;
    while (p < end && PLAIN[*p]) p++;
    return p;
}

/* Length of the well-formed UTF-8 sequence at p (as Python's strict decoder accepts: no
 * overlongs, no surrogates, nothing above U+10FFFF), or 0. */
static Py_ssize_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    Py_ssize_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (end - p < n || p[1] < lo || p[1] > hi) return 0;
    for (Py_ssize_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return 0;
    }
    *out = v;
    return 1;
}

/* The string at s->p (its opening quote), checked, its decoded UTF-8 appended to `out` (NULL:
 * only checked). A lone UTF-16 surrogate escape declines, as msgspec refuses it. */
static int string(P *s, Buf *out) {
    s->p++;
    const unsigned char *run = s->p;
    for (;;) {
        s->p = plain_run(s->p, s->end);
        if (s->p >= s->end) return 0;
        unsigned char c = *s->p;
        if (c == '"') {
            if (out && buf_put(out, run, s->p - run) < 0) return -1;
            s->p++;
            return 1;
        }
        if (c >= 0x80) {
            Py_ssize_t n = utf8_len(s->p, s->end);
            if (n == 0) return 0;
            s->p += n;
            continue;
        }
        if (c != '\\') return 0; /* a control character */
        if (out && buf_put(out, run, s->p - run) < 0) return -1;
        if (s->end - s->p < 2) return 0;
        char one;
        switch (s->p[1]) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': one = 0; break;
        default: return 0;
        }
        if (s->p[1] != 'u') {
            s->p += 2;
            if (out && buf_put(out, &one, 1) < 0) return -1;
            run = s->p;
            continue;
        }
        unsigned cp, lo;
        if (s->end - s->p < 6 || !hex4(s->p + 2, &cp)) return 0;
        s->p += 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) return 0;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || !hex4(s->p + 2, &lo)) return 0;
            if (lo < 0xDC00 || lo > 0xDFFF) return 0;
            s->p += 6;
            cp = 0x10000 + (((cp - 0xD800) << 10) | (lo - 0xDC00));
        }
        if (out) {
            unsigned char u[4];
            Py_ssize_t n;
            if (cp < 0x80) {
                u[0] = (unsigned char)cp;
                n = 1;
            } else if (cp < 0x800) {
                u[0] = 0xC0 | (cp >> 6);
                u[1] = 0x80 | (cp & 0x3F);
                n = 2;
            } else if (cp < 0x10000) {
                u[0] = 0xE0 | (cp >> 12);
                u[1] = 0x80 | ((cp >> 6) & 0x3F);
                u[2] = 0x80 | (cp & 0x3F);
                n = 3;
            } else {
                u[0] = 0xF0 | (cp >> 18);
                u[1] = 0x80 | ((cp >> 12) & 0x3F);
                u[2] = 0x80 | ((cp >> 6) & 0x3F);
                u[3] = 0x80 | (cp & 0x3F);
                n = 4;
            }
            if (buf_put(out, u, n) < 0) return -1;
        }
        run = s->p;
    }
}

static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* A JSON number at s->p: its extent and whether it has a fraction or an exponent (msgspec's
 * floats; the others are its ints). */
typedef struct {
    const unsigned char *start, *end;
    int is_float;
} Num;

static int number(P *s, Num *n) {
    const unsigned char *p = s->p, *end = s->end;
    n->start = p;
    n->is_float = 0;
    if (p < end && *p == '-') p++;
    if (p >= end || !is_digit(*p)) return 0;
    if (*p == '0') {
        p++;
        if (p < end && is_digit(*p)) return 0;
    } else {
        while (p < end && is_digit(*p)) p++;
    }
    if (p < end && *p == '.') {
        n->is_float = 1;
        p++;
        if (p >= end || !is_digit(*p)) return 0;
        while (p < end && is_digit(*p)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        n->is_float = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || !is_digit(*p)) return 0;
        while (p < end && is_digit(*p)) p++;
    }
    s->p = p;
    n->end = p;
    return 1;
}

/* The integer at s->p, when it fits int64 (else, or when the number is a float, decline: what
 * _Int accepts). */
static inline int int_value(P *s, int64_t *out) {
    const unsigned char *p = s->p, *end = s->end;
    int neg = p < end && *p == '-';
    p += neg;
    if (p >= end || !is_digit(*p)) return 0;
    uint64_t v = 0;
    if (*p == '0') {
        p++;
    } else {
        const unsigned char *fast = end - p > 18 ? p + 18 : end; /* 18 digits always fit */
        while (p < fast && is_digit(*p)) v = v * 10 + (*p++ - '0');
        uint64_t limit = neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
        for (; p < end && is_digit(*p); p++) {
            unsigned d = *p - '0';
            if (v > (limit - d) / 10) return 0;
            v = v * 10 + d;
        }
    }
    if (p < end && (is_digit(*p) || *p == '.' || *p == 'e' || *p == 'E')) return 0;
    s->p = p;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 1;
}

#include "_pow10.h"

/* man * 10**q correctly rounded to a double (man != 0, at most 19 digits), by Eisel and
 * Lemire's algorithm: 0 where it cannot decide (then strtod does). */
static int eisel_lemire(uint64_t man, int64_t q, double *out) {
    if (q < POW10_MIN || q > POW10_MAX) return 0;
    int clz = __builtin_clzll(man);
    man <<= clz;
    /* floor(q * log2(10)) + 64 + the exponent bias, minus the normalisation shift */
    uint64_t exp2 = (uint64_t)(((217706 * q) >> 16) + 64 + 1023) - (uint64_t)clz;
    const uint64_t *pw = POW10_128[q - POW10_MIN];
    unsigned __int128 x = (unsigned __int128)man * pw[0];
    uint64_t hi = (uint64_t)(x >> 64), lo = (uint64_t)x;
    if ((hi & 0x1FF) == 0x1FF && lo + man < man) { /* the low word of the power may carry */
        unsigned __int128 y = (unsigned __int128)man * pw[1];
        uint64_t yhi = (uint64_t)(y >> 64), ylo = (uint64_t)y;
        uint64_t mhi = hi, mlo = lo + yhi;
        if (mlo < lo) mhi++;
        if ((mhi & 0x1FF) == 0x1FF && mlo + 1 == 0 && ylo + man < man) return 0;
        hi = mhi;
        lo = mlo;
    }
    uint64_t msb = hi >> 63;
    uint64_t mant = hi >> (msb + 9);
    exp2 -= 1 ^ msb;
    if (lo == 0 && (hi & 0x1FF) == 0 && (mant & 3) == 1) return 0; /* half-way: undecided */
    mant += mant & 1;
    mant >>= 1;
    if (mant >> 53) {
        mant >>= 1;
        exp2++;
    }
    if (exp2 - 1 >= 0x7FF - 1) return 0; /* subnormal or infinite: strtod decides */
    uint64_t bits = exp2 << 52 | (mant & ((1ULL << 52) - 1));
    memcpy(out, &bits, 8);
    return 1;
}

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* CPython's correctly rounded strtod of the text [start, end); called with the GIL (it shares
 * CPython's own state). */
static int strtod_of(const unsigned char *start, const unsigned char *end, double *out) {
    char small[64], *text = small;
    Py_ssize_t len = end - start;
    if (len >= (Py_ssize_t)sizeof small) {
        text = PyMem_Malloc(len + 1);
        if (text == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    memcpy(text, start, len);
    text[len] = '\0';
    char *stop = NULL;
    double v = PyOS_string_to_double(text, &stop, NULL);
    int whole = stop == text + len;
    if (text != small) PyMem_Free(text);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (!whole) return 0;
    *out = v;
    return 1;
}

/* The number at s->p when it is a float (it has a fraction or an exponent: what msgspec makes a
 * float), correctly rounded; an integer or a float that overflows declines (msgspec refuses the
 * latter: "Number out of range"). */
static inline int float_value(P *s, double *out) {
    const unsigned char *start = s->p, *p = start, *end = s->end;
    int neg = p < end && *p == '-';
    p += neg;
    if (p >= end || !is_digit(*p)) return 0;
    uint64_t man = 0;
    int64_t digits = 0, q = 0;
    int is_float = 0;
    if (*p == '0') {
        p++;
    } else {
        for (; p < end && is_digit(*p); p++, digits++) man = man * 10 + (*p - '0');
    }
    if (p < end && *p == '.') {
        is_float = 1;
        const unsigned char *frac = ++p;
        for (; p < end && is_digit(*p); p++, q--) {
            if (man || *p != '0') digits++;
            man = man * 10 + (*p - '0');
        }
        if (p == frac) return 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        const unsigned char *ed = p;
        int64_t e = 0;
        for (; p < end && is_digit(*p); p++)
            if (e < 100000) e = e * 10 + (*p - '0');
        if (p == ed) return 0;
        q += eneg ? -e : e;
    }
    if (!is_float || (p < end && is_digit(*p))) return 0;
    s->p = p;
    double v;
    if (digits == 0) { /* all zeros (man may have wrapped around when there are more than 19 digits) */
        v = 0.0;
    } else if (digits <= 15 && q >= -22 && q <= 22) { /* both exact doubles: one rounding */
        v = (double)man;
        v = q >= 0 ? v * POW10[q] : v / POW10[-q];
    } else if (digits > 19 || !eisel_lemire(man, q, &v)) {
        PyEval_RestoreThread(s->released);
        int rc = strtod_of(start + neg, p, &v);
        s->released = PyEval_SaveThread();
        TRY(rc);
    }
    if (isinf(v)) return 0;
    *out = neg ? -v : v;
    return 1;
}

static int skip_value(P *s);

/* The object key at s->p (its opening quote), decoded: in place where it has no escape and is
 * ASCII, else in s->scratch. */
static inline int key(P *s, const char **out, Py_ssize_t *len) {
    const unsigned char *start = s->p + 1, *q = plain_run(start, s->end);
    if (q < s->end && *q == '"') {
        *out = (const char *)start;
        *len = q - start;
        s->p = q + 1;
        return 1;
    }
    s->scratch.len = 0;
    TRY(string(s, &s->scratch));
    *out = s->scratch.data;
    *len = s->scratch.len;
    return 1;
}

/* The object or array at s->p, checked. */
static int skip_container(P *s, unsigned char close) {
    if (++s->depth > MAX_DEPTH) return 0;
    s->p++;
    int c = peek(s);
    if (c == close) {
        s->p++;
        s->depth--;
        return 1;
    }
    for (;;) {
        if (close == '}') {
            if (peek(s) != '"') return 0;
            TRY(string(s, NULL));
            if (peek(s) != ':') return 0;
            s->p++;
        }
        TRY(skip_value(s));
        c = peek(s);
        if (c == close) {
            s->p++;
            s->depth--;
            return 1;
        }
        if (c != ',') return 0;
        s->p++;
    }
}

/* Any JSON value at the next non-blank byte, checked and skipped. */
static int skip_value(P *s) {
    Num n;
    switch (peek(s)) {
    case -1: return 0;
    case '{': return skip_container(s, '}');
    case '[': return skip_container(s, ']');
    case '"': return string(s, NULL);
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default:
        TRY(number(s, &n));
        /* an Any field holds what msgspec makes of the number: a float that overflows ("Number out
         * of range") or an int too long for Python's int() is refused; only short plain ones stay */
        if (s->any && n.end - n.start > 40) return 0;
        if (s->any && n.is_float)
            for (const unsigned char *q = n.start; q < n.end; q++)
                if (*q == 'e' || *q == 'E') return 0;
        return 1;
    }
}

/* ------------------------------------------------------------------ records */

typedef struct {
    const char *name;
    Py_ssize_t len;
    int kind;
} Field;

#define F(name, kind) {name, sizeof(name) - 1, kind}

/* The fields of columnar._Span and columnar._Mark, in the order cirron's writer puts them. */
static const Field SPAN_FIELDS[] = {
    F("id", K_ID),           F("parent_id", K_PARENT), F("name", K_STR),       F("index", K_INT),
    F("start_ns", K_INT),    F("end_ns", K_INT),       F("cpu_ns", K_INT),     F("gpu_ns", K_INT),
    F("memory_peak_bytes", K_INT), F("thread_id", K_INT), F("pid", K_INT),     F("rank", K_INT),
    F("attrs", K_RAW),
};
static const Field MARK_FIELDS[] = {
    F("id", K_ID),         F("span_id", K_STR),   F("name", K_STR),      F("value", K_FLOAT),
    F("value_type", K_STR), F("kind", K_STR),     F("ts_ns", K_INT),     F("thread_id", K_INT),
    F("attrs", K_RAW),
};
#define N_SPAN_FIELDS ((int)(sizeof SPAN_FIELDS / sizeof SPAN_FIELDS[0]))
#define N_MARK_FIELDS ((int)(sizeof MARK_FIELDS / sizeof MARK_FIELDS[0]))
#define MAX_FIELDS N_SPAN_FIELDS

typedef struct {
    const Field *fields;
    int nfields;
    Col cols[MAX_FIELDS];
    Py_ssize_t rows;
} Table;

/* The field named `key`, or -1. */
static inline int field_of(const Table *t, const char *key, Py_ssize_t len) {
    const Field *f = t->fields;
    for (int i = 0; i < t->nfields; i++)
        if (f[i].len == len && memcmp(f[i].name, key, len) == 0) return i;
    return -1;
}

/* The next value, into column c as row `row`. */
static int field_value(P *s, Col *c, Py_ssize_t row) {
    int ch = peek(s);
    switch (c->kind) {
    case K_ID:
    case K_STR:
    case K_PARENT: {
        if (ch == 'n' && c->kind != K_ID) {
            TRY(literal(s, "null", 4));
            return str_end(c, row, 0);
        }
        if (ch != '"') return 0;
        Py_ssize_t before = c->data.len;
        TRY(string(s, &c->data));
        int empty = c->data.len == before;
        if (empty && c->kind == K_ID) return 0;             /* _Id: a non-empty string */
        return str_end(c, row, !(empty && c->kind == K_PARENT)); /* "" parent: none */
    }
    case K_INT: {
        int64_t v = 0;
        if (ch == 'n') {
            TRY(literal(s, "null", 4));
            return num_put(c, row, &v, 0);
        }
        TRY(int_value(s, &v));
        return num_put(c, row, &v, 1);
    }
    case K_FLOAT: {
        double v;
        TRY(float_value(s, &v));
        return num_put(c, row, &v, 1);
    }
    default: { /* K_RAW: the value's text as written */
        if (ch < 0) return 0;
        const unsigned char *start = s->p;
        TRY(skip_value(s));
        if (buf_put(&c->data, start, s->p - start) < 0) return -1;
        return str_end(c, row, 1);
    }
    }
}

/* A field a record left out: null, {} for attrs; a record without an id or a mark without a
 * value declines. */
static int field_missing(Col *c, Py_ssize_t row) {
    int64_t zero = 0;
    switch (c->kind) {
    case K_ID:
    case K_FLOAT: return 0;
    case K_INT: return num_put(c, row, &zero, 0);
    case K_RAW:
        if (buf_put(&c->data, "{}", 2) < 0) return -1;
        return str_end(c, row, 1);
    default: return str_end(c, row, 0);
    }
}

static int record(P *s, Table *t) {
    if (peek(s) != '{') return 0;
    s->p++;
    uint32_t seen = 0;
    int prev = -1;
    Py_ssize_t row = t->rows;
    int c = peek(s);
    if (c != '}') {
        for (;;) {
            if (c != '"') return 0;
            int f = prev + 1;
            const Field *guess = f < t->nfields ? &t->fields[f] : NULL;
            if (guess != NULL && s->end - s->p > guess->len + 2 && s->p[guess->len + 1] == '"' &&
                s->p[guess->len + 2] == ':' && memcmp(s->p + 1, guess->name, guess->len) == 0) {
                s->p += guess->len + 3; /* "name": of the field the writer puts next */
            } else {
                const char *k;
                Py_ssize_t klen;
                TRY(key(s, &k, &klen));
                if (peek(s) != ':') return 0;
                s->p++;
                f = field_of(t, k, klen);
            }
            if (f < 0) {
                TRY(skip_value(s));
            } else {
                if (seen & (1u << f)) return 0; /* a duplicate field */
                seen |= 1u << f;
                prev = f;
                TRY(field_value(s, &t->cols[f], row));
            }
            c = peek(s);
            if (c == '}') break;
            if (c != ',') return 0;
            s->p++;
            c = peek(s);
        }
    }
    s->p++;
    for (int f = 0; f < t->nfields; f++)
        if (!(seen & (1u << f))) TRY(field_missing(&t->cols[f], row));
    t->rows++;
    return 1;
}

/* `null` or an array whose items `item(ctx)` reads, one after another, from s. */
static int null_or_array(P *s, int (*item)(void *ctx), void *ctx) {
    int c = peek(s);
    if (c == 'n') return literal(s, "null", 4);
    if (c != '[') return 0;
    s->p++;
    if (peek(s) == ']') {
        s->p++;
        return 1;
    }
    for (;;) {
        TRY(item(ctx));
        c = peek(s);
        if (c == ']') {
            s->p++;
            return 1;
        }
        if (c != ',') return 0;
        s->p++;
    }
}

typedef struct {
    P *s;
    Table *t;
} RecordsOf;

static int record_item(void *ctx) {
    RecordsOf *r = ctx;
    return record(r->s, r->t);
}

/* `null` or an array of records. */
static int records(P *s, Table *t) {
    RecordsOf r = {s, t};
    return null_or_array(s, record_item, &r);
}

/* snapshots: only null or an empty array stay on this path. */
static int no_snapshots(P *s) {
    int c = peek(s);
    if (c == 'n') return literal(s, "null", 4);
    if (c != '[') return 0;
    s->p++;
    if (peek(s) != ']') return 0;
    s->p++;
    return 1;
}

/* session_id: a string (None when empty) or null, into s->sid. */
static int session_id(P *s) {
    int c = peek(s);
    if (c == 'n') {
        s->sid_null = 1;
        return literal(s, "null", 4);
    }
    if (c != '"') return 0;
    return string(s, &s->sid);
}

static int key_is(const char *key, Py_ssize_t len, const char *name) {
    return (Py_ssize_t)strlen(name) == len && memcmp(name, key, len) == 0;
}

/* The batch object: its records into spans and marks (marks NULL: skipped); with spans NULL only
 * its session id is read (every other field is checked and skipped, and a batch without one has
 * a null session id). */
static int batch(P *s, Table *spans, Table *marks) {
    int seen_sid = 0, seen_spans = 0, seen_marks = 0, seen_snaps = 0;
    if (peek(s) != '{') return 0;
    s->p++;
    int c = peek(s);
    if (c != '}') {
        for (;;) {
            if (c != '"') return 0;
            const char *k;
            Py_ssize_t klen;
            TRY(key(s, &k, &klen));
            if (peek(s) != ':') return 0;
            s->p++;
            if (key_is(k, klen, "session_id")) {
                if (seen_sid++) return 0;
                TRY(session_id(s));
            } else if (spans != NULL && key_is(k, klen, "spans")) {
                if (seen_spans++) return 0;
                TRY(records(s, spans));
            } else if (marks != NULL && key_is(k, klen, "marks")) {
                if (seen_marks++) return 0;
                TRY(records(s, marks));
            } else if (spans != NULL && key_is(k, klen, "snapshots")) {
                if (seen_snaps++) return 0;
                TRY(no_snapshots(s));
            } else {
                TRY(skip_value(s));
            }
            c = peek(s);
            if (c == '}') break;
            if (c != ',') return 0;
            s->p++;
            c = peek(s);
        }
    }
    s->p++;
    if (peek(s) != -1) return 0; /* trailing characters */
    if (!seen_sid) s->sid_null = 1;
    return seen_sid || spans == NULL ? 1 : 0;
}

static int table_start(Table *t, const Field *fields, int nfields, Py_ssize_t rows_hint) {
    t->fields = fields;
    t->nfields = nfields;
    t->rows = 0;
    for (int i = 0; i < nfields; i++) t->cols[i].kind = fields[i].kind;
    int rc = 0;
    for (int i = 0; i < nfields; i++)
        if (col_start(&t->cols[i], rows_hint) < 0) rc = -1; /* every column is started: col_free is safe */
    return rc;
}

static void table_free(Table *t) {
    for (int i = 0; i < t->nfields; i++) col_free(&t->cols[i]);
}

/* (rows, {field name: column}). */
static PyObject *table_result(Table *t) {
    PyObject *cols = PyDict_New();
    if (cols == NULL) return NULL;
    for (int i = 0; i < t->nfields; i++) {
        PyObject *col = col_result(&t->cols[i]);
        if (col == NULL || PyDict_SetItemString(cols, t->fields[i].name, col) < 0) {
            Py_XDECREF(col);
            Py_DECREF(cols);
            return NULL;
        }
        Py_DECREF(col);
    }
    return Py_BuildValue("(nN)", t->rows, cols);
}

/* The session id of the batch's P after a successful parse: a str, or None (null or empty). */
static PyObject *sid_of(P *s) {
    if (s->sid_null || s->sid.len == 0) return Py_NewRef(Py_None);
    return PyUnicode_DecodeUTF8(s->sid.data, s->sid.len, "strict");
}

/* parse(data, with_marks) -> (session_id, (rows, span columns), (rows, mark columns)) or None; see
 * the top of this file. */
static PyObject *parse(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse(data, with_marks)");
        return NULL;
    }
    int with_marks = PyObject_IsTrue(args[1]);
    if (with_marks < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    /* cirron's records take about 500 bytes each: a first guess that spares most regrowing */
    Py_ssize_t hint = view.len / 1000 + 16;
    P s = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len, 0, {NULL, 0, 0},
           {NULL, 0, 0}, 0, NULL};
    Table spans, marks;
    PyObject *sid = NULL, *out = NULL;
    int ok = 0;
    s.released = PyEval_SaveThread();
    int started = table_start(&spans, SPAN_FIELDS, N_SPAN_FIELDS, hint);
    started |= table_start(&marks, MARK_FIELDS, N_MARK_FIELDS, with_marks ? hint : 0);
    if (started == 0) ok = batch(&s, &spans, with_marks ? &marks : NULL);
    PyEval_RestoreThread(s.released);
    if ((ok < 0 || started < 0) && !PyErr_Occurred()) PyErr_NoMemory();
    if (ok > 0) {
        sid = sid_of(&s);
        PyObject *sp = sid ? table_result(&spans) : NULL, *mk = sp ? table_result(&marks) : NULL;
        if (sp != NULL && mk != NULL) out = PyTuple_Pack(3, sid, sp, mk);
        Py_XDECREF(sp);
        Py_XDECREF(mk);
    } else if (ok == 0 && started == 0) {
        out = Py_NewRef(Py_None);
    }
    Py_XDECREF(sid);
    table_free(&spans);
    table_free(&marks);
    buf_free(&s.scratch);
    buf_free(&s.sid);
    PyBuffer_Release(&view);
    return out;
}

/* session_of(data) -> (session_id,) or None; see module_methods. */
static PyObject *session_of(PyObject *Py_UNUSED(m), PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    P s = {(const unsigned char *)view.buf, (const unsigned char *)view.buf + view.len, 0, {NULL, 0, 0},
           {NULL, 0, 0}, 0, NULL};
    s.released = PyEval_SaveThread();
    int ok = batch(&s, NULL, NULL);
    PyEval_RestoreThread(s.released);
    PyObject *out = NULL;
    if (ok > 0) {
        PyObject *sid = sid_of(&s);
        out = sid == NULL ? NULL : PyTuple_Pack(1, sid);
        Py_XDECREF(sid);
    } else if (ok == 0) {
        out = Py_NewRef(Py_None);
    } else if (!PyErr_Occurred()) {
        PyErr_NoMemory();
    }
    buf_free(&s.scratch);
    buf_free(&s.sid);
    PyBuffer_Release(&view);
    return out;
}

/* ------------------------------------------------------------------ keys: the index's light pass */

/* keys(data, empty_hi, empty_lo) reads what cirron.spool.index's light pass keeps of a batch file
 * (see _file_keys_of there; its msgspec reading, "keys" fields of cirron.spool.reader, is the
 * reference): per record its id as a 128-bit key, the key of the id it names (a span's parent, a
 * mark's or snapshot's span), a flag or two and one time. It declines (None) where that reading
 * could differ: anything parse() declines but snapshots and mark values (which a keys read does
 * not decode), an id that is not 32 hex digits (msgspec's reading hashes those), a field of
 * another type than SpanSummary / TargetKey declare, a number in an Any field that msgspec may
 * refuse. Runs without the GIL. */

/* The columns of one record list: id key halves, named id's key halves, flags, a time. */
enum { KC_HI, KC_LO, KC_THI, KC_TLO, KC_FLAG, KC_FLAG2, KC_TIME, N_KC };

typedef struct {
    Buf c[N_KC];
    Py_ssize_t rows;
} KeyCols;

/* The record fields a keys read decodes; the others are skipped. */
enum { KF_ID, KF_REF, KF_ANY, KF_INT, KF_T1, KF_T2, KF_OPTSTR, KF_RAW };

static const Field SPAN_KEY_FIELDS[] = {
    F("id", KF_ID),       F("parent_id", KF_REF), F("name", KF_ANY), F("index", KF_INT),
    F("start_ns", KF_T1), F("end_ns", KF_T2),     F("cpu_ns", KF_INT), F("pid", KF_INT),
    F("attrs", KF_RAW),   F("~cirron.session", KF_OPTSTR),
};
static const Field TARGET_KEY_FIELDS[] = {
    F("id", KF_ID), F("span_id", KF_REF), F("ts_ns", KF_T1), F("~cirron.batch_session", KF_OPTSTR),
    F("~cirron.session", KF_OPTSTR),
};
#define N_SPAN_KEY_FIELDS ((int)(sizeof SPAN_KEY_FIELDS / sizeof SPAN_KEY_FIELDS[0]))
#define N_TARGET_KEY_FIELDS ((int)(sizeof TARGET_KEY_FIELDS / sizeof TARGET_KEY_FIELDS[0]))

/* "No time" in the time columns (cirron.spool.outline.time_column's _NO_TIME). */
#define NO_TIME INT64_MIN

static signed char HEXV[256];

static void init_hex(void) {
    memset(HEXV, -1, sizeof HEXV);
    for (int c = 0; c < 10; c++) HEXV['0' + c] = (signed char)c;
    for (int c = 0; c < 6; c++) HEXV['a' + c] = HEXV['A' + c] = (signed char)(10 + c);
}

/* The 32 hex digits at p as two big-endian halves; 0 when one is not a hex digit. */
static inline int hex_key(const unsigned char *p, uint64_t *hi, uint64_t *lo) {
    uint64_t h[2] = {0, 0};
    for (int i = 0; i < 32; i++) {
        int v = HEXV[p[i]];
        if (v < 0) return 0;
        h[i >> 4] = h[i >> 4] << 4 | (uint64_t)v;
    }
    *hi = h[0];
    *lo = h[1];
    return 1;
}

enum { ID_HEX = 1, ID_EMPTY, ID_ROOT, ID_OTHER };

/* The string at s->p as an id: ID_HEX (32 hex digits: its key), ID_EMPTY, ID_ROOT ("root") or
 * ID_OTHER; 0 or -1 as the other steps. */
static int id_string(P *s, uint64_t *hi, uint64_t *lo) {
    const unsigned char *q = s->p + 1;
    if (s->end - q > 32 && q[32] == '"' && hex_key(q, hi, lo)) {
        s->p = q + 33;
        return ID_HEX;
    }
    s->scratch.len = 0;
    TRY(string(s, &s->scratch));
    const unsigned char *d = (const unsigned char *)s->scratch.data;
    Py_ssize_t n = s->scratch.len;
    if (n == 32 && hex_key(d, hi, lo)) return ID_HEX;
    if (n == 0) return ID_EMPTY;
    if (n == 4 && memcmp(d, "root", 4) == 0) return ID_ROOT;
    return ID_OTHER;
}

/* An _Int field (null or an int64) into *v (NO_TIME and *set 0 for null). */
static inline int int_or_null(P *s, int64_t *v, int *set) {
    if (peek(s) == 'n') {
        *set = 0;
        *v = NO_TIME;
        return literal(s, "null", 4);
    }
    *set = 1;
    return int_value(s, v);
}

typedef struct {
    P s;
    uint64_t empty_hi, empty_lo; /* the key of the empty id (what a record naming no id gets) */
    const unsigned char *data;
    Buf roots; /* per span without a parent: its row and its record's extent in data (3 int64) */
} KeyRead;

static int key_put(KeyCols *t, int col, const void *v, Py_ssize_t n) { return buf_put(&t->c[col], v, n); }

/* One record of a span list (span) or of a mark or snapshot list. */
static int key_record(KeyRead *k, KeyCols *t, int span) {
    P *s = &k->s;
    if (peek(s) != '{') return 0;
    const unsigned char *start = s->p++;
    const Field *fields = span ? SPAN_KEY_FIELDS : TARGET_KEY_FIELDS;
    int nfields = span ? N_SPAN_KEY_FIELDS : N_TARGET_KEY_FIELDS;
    uint32_t seen = 0;
    uint64_t hi = 0, lo = 0, thi = k->empty_hi, tlo = k->empty_lo;
    unsigned char ref = 0, closed = 0;
    int64_t t1 = NO_TIME, t2 = NO_TIME, ignored;
    int c = peek(s), set;
    if (c != '}') {
        for (;;) {
            if (c != '"') return 0;
            const char *name;
            Py_ssize_t nlen;
            TRY(key(s, &name, &nlen));
            if (peek(s) != ':') return 0;
            s->p++;
            int f = -1;
            for (int i = 0; i < nfields; i++)
                if (fields[i].len == nlen && memcmp(fields[i].name, name, nlen) == 0) {
                    f = i;
                    break;
                }
            if (f < 0) {
                TRY(skip_value(s));
            } else {
                if (seen & (1u << f)) return 0; /* a duplicate field */
                seen |= 1u << f;
                int r;
                switch (fields[f].kind) {
                case KF_ID:
                    if (peek(s) != '"') return 0;
                    r = id_string(s, &hi, &lo);
                    if (r <= 0) return r;
                    if (r != ID_HEX) return 0;
                    break;
                case KF_REF:
                    if (peek(s) == 'n') {
                        TRY(literal(s, "null", 4));
                        break;
                    }
                    if (peek(s) != '"') return 0;
                    r = id_string(s, &thi, &tlo);
                    if (r <= 0) return r;
                    if (r == ID_HEX) ref = 1;
                    else if (r == ID_EMPTY) ref = !span; /* a span's "" parent: none; a mark's "": a span id */
                    else if (r != ID_ROOT || span) return 0; /* "root": the sentinel, for marks and snapshots */
                    if (r != ID_HEX) {
                        thi = k->empty_hi;
                        tlo = k->empty_lo;
                    }
                    break;
                case KF_ANY:
                    s->any = 1;
                    TRY(skip_value(s));
                    s->any = 0;
                    break;
                case KF_INT: TRY(int_or_null(s, &ignored, &set)); break;
                case KF_T1: TRY(int_or_null(s, &t1, &set)); break;
                case KF_T2:
                    TRY(int_or_null(s, &t2, &set));
                    closed = (unsigned char)set;
                    break;
                case KF_OPTSTR:
                    if (peek(s) == 'n') TRY(literal(s, "null", 4));
                    else if (peek(s) == '"') TRY(string(s, NULL));
                    else return 0;
                    break;
                default: TRY(skip_value(s)); break;
                }
            }
            c = peek(s);
            if (c == '}') break;
            if (c != ',') return 0;
            s->p++;
            c = peek(s);
        }
    }
    s->p++;
    if (!(seen & 1u)) return 0; /* no id */
    int64_t time = span && t2 > t1 ? t2 : t1;
    if (key_put(t, KC_HI, &hi, 8) < 0 || key_put(t, KC_LO, &lo, 8) < 0 || key_put(t, KC_THI, &thi, 8) < 0 ||
        key_put(t, KC_TLO, &tlo, 8) < 0 || key_put(t, KC_FLAG, &ref, 1) < 0 || key_put(t, KC_TIME, &time, 8) < 0 ||
        (span && key_put(t, KC_FLAG2, &closed, 1) < 0))
        return -1;
    if (span && !ref) {
        int64_t root[3] = {t->rows, start - k->data, s->p - k->data};
        if (buf_put(&k->roots, root, sizeof root) < 0) return -1;
    }
    t->rows++;
    return 1;
}

typedef struct {
    KeyRead *k;
    KeyCols *t;
    int span;
} KeyRecordsOf;

static int key_record_item(void *ctx) {
    KeyRecordsOf *r = ctx;
    return key_record(r->k, r->t, r->span);
}

/* `null` or an array of records. */
static int key_records(KeyRead *k, KeyCols *t, int span) {
    KeyRecordsOf r = {k, t, span};
    return null_or_array(&k->s, key_record_item, &r);
}

/* The header fields a keys read decodes as Python values; their extents are returned. */
static const char *const HEADER_VALUES[] = {"schema_version", "sdk_version", "resource", "batch_id", "created_ns"};
#define N_HEADER_VALUES 3 /* of them, those whose extent is returned */

/* The batch object; `ranges` gets the extents of the first N_HEADER_VALUES header values (-1: absent). */
static int key_batch(KeyRead *k, KeyCols lists[3], Py_ssize_t ranges[2 * N_HEADER_VALUES], int *has_sid) {
    P *s = &k->s;
    static const char *const LISTS[3] = {"spans", "marks", "snapshots"};
    uint32_t seen = 0;
    if (peek(s) != '{') return 0;
    s->p++;
    int c = peek(s);
    if (c != '}') {
        for (;;) {
            if (c != '"') return 0;
            const char *name;
            Py_ssize_t nlen;
            TRY(key(s, &name, &nlen));
            if (peek(s) != ':') return 0;
            s->p++;
            int done = 0;
            if (key_is(name, nlen, "session_id")) {
                if (seen & 1u) return 0;
                seen |= 1u;
                TRY(session_id(s));
                done = 1;
            }
            for (int i = 0; i < 3 && !done; i++)
                if (key_is(name, nlen, LISTS[i])) {
                    if (seen & (2u << i)) return 0;
                    seen |= 2u << i;
                    TRY(key_records(k, &lists[i], i == 0));
                    done = 1;
                }
            for (int i = 0; i < (int)(sizeof HEADER_VALUES / sizeof HEADER_VALUES[0]) && !done; i++)
                if (key_is(name, nlen, HEADER_VALUES[i])) {
                    if (seen & (16u << i)) return 0;
                    seen |= 16u << i;
                    if (peek(s) < 0) return 0;
                    const unsigned char *start = s->p;
                    s->any = 1;
                    TRY(skip_value(s));
                    s->any = 0;
                    if (i < N_HEADER_VALUES) {
                        ranges[2 * i] = start - k->data;
                        ranges[2 * i + 1] = s->p - k->data;
                    }
                    done = 1;
                }
            if (!done) TRY(skip_value(s));
            c = peek(s);
            if (c == '}') break;
            if (c != ',') return 0;
            s->p++;
            c = peek(s);
        }
    }
    s->p++;
    if (peek(s) != -1) return 0; /* trailing characters */
    *has_sid = (seen & 1u) != 0;
    if (!*has_sid) s->sid_null = 1;
    return 1;
}

/* The (hi, lo, thi, tlo, flag, flag2, time) blocks of one record list. */
static PyObject *key_cols_result(KeyCols *t) {
    PyObject *blocks = PyTuple_New(N_KC);
    if (blocks == NULL) return NULL;
    for (int i = 0; i < N_KC; i++) {
        PyObject *b = block_of(&t->c[i]);
        if (b == NULL) {
            Py_DECREF(blocks);
            return NULL;
        }
        PyTuple_SET_ITEM(blocks, i, b);
    }
    return blocks;
}

/* keys(data, empty_hi, empty_lo) -> (session_id, has_session_id, header extents, spans, marks,
 * snapshots, roots) or None; see above. */
static PyObject *keys(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "keys(data, empty_hi, empty_lo)");
        return NULL;
    }
    unsigned long long ehi = PyLong_AsUnsignedLongLong(args[1]), elo = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    KeyRead k;
    memset(&k, 0, sizeof k);
    k.data = (const unsigned char *)view.buf;
    k.s.p = k.data;
    k.s.end = k.data + view.len;
    k.empty_hi = ehi;
    k.empty_lo = elo;
    KeyCols lists[3];
    memset(lists, 0, sizeof lists);
    Py_ssize_t ranges[2 * N_HEADER_VALUES];
    for (int i = 0; i < 2 * N_HEADER_VALUES; i++) ranges[i] = -1;
    int has_sid = 0;
    k.s.released = PyEval_SaveThread();
    int ok = key_batch(&k, lists, ranges, &has_sid);
    PyEval_RestoreThread(k.s.released);
    PyObject *out = NULL;
    if (ok > 0) {
        PyObject *sid = sid_of(&k.s);
        PyObject *parts[3] = {NULL, NULL, NULL};
        int failed = sid == NULL;
        for (int i = 0; i < 3 && !failed; i++)
            if ((parts[i] = key_cols_result(&lists[i])) == NULL) failed = 1;
        PyObject *roots = failed ? NULL : PyBytes_FromStringAndSize(k.roots.data, k.roots.len);
        if (roots != NULL)
            out = Py_BuildValue("(OO(nnnnnn)OOOO)", sid, has_sid ? Py_True : Py_False, ranges[0], ranges[1],
                                ranges[2], ranges[3], ranges[4], ranges[5], parts[0], parts[1], parts[2], roots);
        Py_XDECREF(sid);
        for (int i = 0; i < 3; i++) Py_XDECREF(parts[i]);
        Py_XDECREF(roots);
    } else if (ok == 0) {
        out = Py_NewRef(Py_None);
    } else if (!PyErr_Occurred()) {
        PyErr_NoMemory();
    }
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < N_KC; j++) buf_free(&lists[i].c[j]);
    buf_free(&k.roots);
    buf_free(&k.s.scratch);
    buf_free(&k.s.sid);
    PyBuffer_Release(&view);
    return out;
}

/* ---------------------------------------------------------------- id keys */

/* The byte that two hex digits spell, by the two bytes read as a little-endian 16-bit number; -1
 * where either byte is not a hex digit ([1]: lowercase ones only). */
static int16_t hex_pair[2][65536];

static void init_hex_pairs(void) {
    signed char value[2][256];
    memset(value, -1, sizeof value);
    for (int i = 0; i < 10; i++) value[0]['0' + i] = value[1]['0' + i] = (signed char)i;
    for (int i = 0; i < 6; i++) value[0]['a' + i] = value[0]['A' + i] = value[1]['a' + i] = (signed char)(10 + i);
    for (int t = 0; t < 2; t++) {
        for (int k = 0; k < 65536; k++) {
            signed char a = value[t][k & 255], b = value[t][k >> 8];
            hex_pair[t][k] = (int16_t)(a < 0 || b < 0 ? -1 : a << 4 | b);
        }
    }
}

/* The 64 bits that 16 hex digits at `d` spell (`pair`: a table of hex_pair); `*bad` goes negative
 * where one is not a digit. */
static inline uint64_t hex_half(const int16_t *pair, const unsigned char *d, int *bad) {
    uint64_t x = 0;
    int chk = 0;
    for (int j = 0; j < 16; j += 2) {
        int16_t b = pair[d[j] | d[j + 1] << 8];
        chk |= b;
        x = x << 8 | (uint8_t)b;
    }
    *bad |= chk;
    return x;
}

/* hex_keys(offsets, data, validity, offset, n, lower_only) -> (hi, lo, plain): for the n strings of
 * an Arrow string array (int32 offsets) from row `offset`, the 128 bits of each that is 32 hex digits
 * (lowercase ones only when `lower_only` is true) as two
 * 64-bit halves (bytearrays of native uint64s) and a bytearray of flags (1: such an id; 0: null or
 * anything else, whose halves are 0 and left to the caller). Runs without the GIL. */
static PyObject *hex_keys(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "hex_keys(offsets, data, validity, offset, n, lower_only)");
        return NULL;
    }
    int lower_only = PyObject_IsTrue(args[5]);
    if (lower_only < 0) return NULL;
    const int16_t *pair = hex_pair[lower_only];
    Py_ssize_t first = PyLong_AsSsize_t(args[3]), n = PyLong_AsSsize_t(args[4]);
    if ((first == -1 || n == -1) && PyErr_Occurred()) return NULL;
    if (first < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "hex_keys: negative offset or length");
        return NULL;
    }
    Py_buffer off = {0}, data = {0}, valid = {0};
    int has_valid = args[2] != Py_None;
    PyObject *hi = NULL, *lo = NULL, *plain = NULL, *out = NULL;
    if (PyObject_GetBuffer(args[0], &off, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) goto done;
    if (has_valid && PyObject_GetBuffer(args[2], &valid, PyBUF_SIMPLE) < 0) goto done;
    if (off.len < (first + n + (n > 0)) * (Py_ssize_t)sizeof(int32_t) ||
        (has_valid && valid.len * 8 < first + n)) {
        PyErr_SetString(PyExc_ValueError, "hex_keys: buffers shorter than the rows");
        goto done;
    }
    hi = PyByteArray_FromStringAndSize(NULL, n * 8);
    lo = hi ? PyByteArray_FromStringAndSize(NULL, n * 8) : NULL;
    plain = lo ? PyByteArray_FromStringAndSize(NULL, n) : NULL;
    if (plain == NULL) goto done;
    {
        const int32_t *o = (const int32_t *)off.buf + first;
        const unsigned char *d = (const unsigned char *)data.buf, *v = (const unsigned char *)valid.buf;
        uint64_t *h = (uint64_t *)PyByteArray_AS_STRING(hi), *l = (uint64_t *)PyByteArray_AS_STRING(lo);
        unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(plain);
        Py_ssize_t dlen = data.len;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t r = first + i;
            h[i] = l[i] = 0;
            p[i] = 0;
            if (has_valid && !(v[r >> 3] >> (r & 7) & 1)) continue;
            int32_t a = o[i], b = o[i + 1];
            if (a < 0 || b < a || b > dlen) {
                bad = 1;
                break;
            }
            if (b - a != 32) continue;
            int chk = 0;
            uint64_t x = hex_half(pair, d + a, &chk), y = hex_half(pair, d + a + 16, &chk);
            int ok = chk >= 0;
            if (ok) {
                h[i] = x;
                l[i] = y;
                p[i] = 1;
            }
        }
        Py_END_ALLOW_THREADS
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "hex_keys: offsets outside the data");
            goto done;
        }
    }
    out = PyTuple_Pack(3, hi, lo, plain);
done:
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(plain);
    PyBuffer_Release(&off);
    if (data.obj) PyBuffer_Release(&data);
    if (valid.obj) PyBuffer_Release(&valid);
    return out;
}

static PyMethodDef module_methods[] = {
    {"session_of", (PyCFunction)session_of, METH_O,
     "session_of($module, data, /)\n--\n\n"
     "(session_id,) of a batch file that is one valid JSON object (session_id a str, or None when\n"
     "null, empty or absent), or None where msgspec must read it. Runs without the GIL."},
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse($module, data, with_marks, /)\n--\n\n"
     "A batch file's span and mark columns as buffers, or None where msgspec must read it."},
    {"keys", (PyCFunction)(void (*)(void))keys, METH_FASTCALL,
     "keys($module, data, empty_hi, empty_lo, /)\n--\n\n"
     "What the index's light pass keeps of a batch file's records, or None where msgspec must read it."},
    {"hex_keys", (PyCFunction)(void (*)(void))hex_keys, METH_FASTCALL,
     "hex_keys($module, offsets, data, validity, offset, n, lower_only, /)\n--\n\n"
     "(hi, lo, plain) of an Arrow string array's ids that are 32 hex digits; without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cbatch", "C parser of spool batch files into column buffers.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cbatch(void) {
    init_plain();
    init_hex();
    init_hex_pairs();
    if (PyType_Ready(&BlockType) < 0) return NULL;
    return PyModule_Create(&module_def);
}
