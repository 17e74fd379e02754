/* JSON text of spool span and mark records straight from the hot path's tuples: the optional
 * fast path of cirron._flush.batch (its Python encoder is the reference; the tests check that
 * both give the same records).
 *
 * A record this encoder does not handle (nested attributes, a value of an unexpected type, an
 * int beyond 64 bits, a string that is not valid UTF-8) is handed to the `fallback` callable,
 * which returns that record's JSON bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "../_u128.h"
#include "../_row.h"
#include "../_buf.h"
#include "../_jtext.h"

/* A string literal: its size is known here, so the copy compiles to a few moves. */
#define PUT_LIT(b, s) \
    (buf_reserve((b), (Py_ssize_t)(sizeof(s) - 1)) < 0 \
         ? -1 \
         : (memcpy((b)->data + (b)->len, (s), sizeof(s) - 1), (b)->len += (Py_ssize_t)(sizeof(s) - 1), 0))

/* 1: written, 0: not a plain int that fits 64 bits (caller falls back), -1: error. */
static int put_int(Buf *b, PyObject *v) {
    if (!PyLong_CheckExact(v)) return 0;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) return 0;
    if (x == -1 && PyErr_Occurred()) return -1;
    return jt_put_int64(b, (int64_t)x) < 0 ? -1 : 1;
}

static int put_int_or_null(Buf *b, PyObject *v) {
    if (v == Py_None) return PUT_LIT(b, "null") < 0 ? -1 : 1;
    return put_int(b, v);
}

/* A JSON string from a str (see _jtext.h). */
static int put_str(Buf *b, PyObject *v) {
    if (!PyUnicode_CheckExact(v)) return 0;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (s == NULL) {
        PyErr_Clear(); /* lone surrogates: the fallback decides */
        return 0;
    }
    return jt_put_str(b, s, n) < 0 ? -1 : 1;
}

/* "000102...ff": the two hex digits of every byte. */
static const char HEX_PAIRS[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

static const unsigned __int128 MIX =
    ((unsigned __int128)0x9E3779B97F4A7C15ULL << 64) | (unsigned __int128)0xF39CC0605CEDC835ULL;

/* The quoted 32-hex text of an id, as cirron._ids.hex_id: (value * MIX) mod 2**128, big-endian. */
static int put_hex_id(Buf *b, PyObject *v) {
    unsigned __int128 x;
    if (!PyLong_CheckExact(v)) return 0;
    int ok = u128_value(v, &x);
    if (ok != 1) return ok;
    x *= MIX;
    if (buf_reserve(b, 34) < 0) return -1;
    char *o = b->data + b->len;
    o[0] = o[33] = '"';
    for (int i = 16; i >= 1; i--, x >>= 8) memcpy(o + 2 * i - 1, HEX_PAIRS + 2 * (unsigned)(x & 0xFF), 2);
    b->len += 34;
    return 1;
}

static int put_float(Buf *b, double x) {
    if (x != x) return PUT_LIT(b, "\"NaN\"") < 0 ? -1 : 1;
    if (x == HUGE_VAL) return PUT_LIT(b, "\"Infinity\"") < 0 ? -1 : 1;
    if (x == -HUGE_VAL) return PUT_LIT(b, "\"-Infinity\"") < 0 ? -1 : 1;
    char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) return -1;
    int rc = buf_put(b, s, (Py_ssize_t)strlen(s));
    PyMem_Free(s);
    return rc < 0 ? -1 : 1;
}

static PyTypeObject *attrs_type = NULL;

/* One attribute value as JSON: None, bool, int, float or str (the only values a plain dict or a
 * frozen Attrs holds, and a mark's value types; a str is checked by put_str). */
static int put_attr_value(Buf *b, PyObject *value) {
    if (value == Py_None) return PUT_LIT(b, "null") < 0 ? -1 : 1;
    if (value == Py_True) return PUT_LIT(b, "true") < 0 ? -1 : 1;
    if (value == Py_False) return PUT_LIT(b, "false") < 0 ? -1 : 1;
    if (PyLong_CheckExact(value)) return put_int(b, value);
    if (PyFloat_CheckExact(value)) return put_float(b, PyFloat_AS_DOUBLE(value));
    return put_str(b, value);
}

/* `"key":value`, preceded by a comma unless it is the first. */
static int put_attr(Buf *b, PyObject *key, PyObject *value, int first) {
    int r;
    if (!first && PUT_LIT(b, ",") < 0) return -1;
    if ((r = put_str(b, key)) != 1) return r;
    if (PUT_LIT(b, ":") < 0) return -1;
    return put_attr_value(b, value);
}

/* A flat attribute dict (str keys; None, bool, int, float or str values) or a frozen Attrs of
 * cirron._record._cscope as a JSON object, the same as strict_json would make it; anything else
 * (nesting, other types) is left to the fallback. */
static int put_attrs(Buf *b, PyObject *attrs) {
    if (attrs == Py_None) return PUT_LIT(b, "{}") < 0 ? -1 : 1;
    int frozen = attrs_type != NULL && Py_IS_TYPE(attrs, attrs_type);
    if (!frozen && !PyDict_CheckExact(attrs)) return 0;
    if (PUT_LIT(b, "{") < 0) return -1;
    int r;
    if (frozen) {
        RowObject *pairs = (RowObject *)attrs;
        for (Py_ssize_t i = 0; i + 1 < Py_SIZE(pairs); i += 2)
            if ((r = put_attr(b, pairs->item[i], pairs->item[i + 1], i == 0)) != 1) return r;
    } else {
        Py_ssize_t pos = 0, written = 0;
        PyObject *key, *value;
        while (PyDict_Next(attrs, &pos, &key, &value))
            if ((r = put_attr(b, key, value, written++ == 0)) != 1) return r;
    }
    return PUT_LIT(b, "}") < 0 ? -1 : 1;
}

/* Give up on the record being written: drop its partial text and append fallback(args...). */
static int put_fallback(Buf *b, Py_ssize_t mark, PyObject *fallback, PyObject *const *args, size_t nargs) {
    b->len = mark;
    PyObject *out = PyObject_Vectorcall(fallback, args, nargs, NULL);
    if (out == NULL) return -1;
    if (!PyBytes_Check(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "fallback must return bytes");
        return -1;
    }
    int rc = buf_put(b, PyBytes_AS_STRING(out), PyBytes_GET_SIZE(out));
    Py_DECREF(out);
    return rc;
}


/* The Row and Attrs types of cirron._record._cscope, looked up on first use: records arrive as
 * rows from the compiled recorder and as tuples from the pure-Python one. Without them, rows
 * take the fallback. */
static PyTypeObject *row_type = NULL;
static int record_types_looked_up = 0;

static void look_up_record_types(void) {
    if (record_types_looked_up) return;
    record_types_looked_up = 1;
    PyObject *m = PyImport_ImportModule("cirron._record._cscope");
    PyObject *t = m ? PyObject_GetAttrString(m, "Row") : NULL;
    PyObject *a = m ? PyObject_GetAttrString(m, "Attrs") : NULL;
    Py_XDECREF(m);
    if (t != NULL && PyType_Check(t)) row_type = (PyTypeObject *)t;
    else Py_XDECREF(t);
    if (a != NULL && PyType_Check(a)) attrs_type = (PyTypeObject *)a;
    else Py_XDECREF(a);
    PyErr_Clear();
}

#define STEP(expr) do { int _r = (expr); if (_r < 0) goto error; if (_r == 0) goto fallback; } while (0)
/* Append a literal to `b`; only running out of memory can fail it. */
#define LIT(s) do { if (PUT_LIT(&b, s) < 0) goto error; } while (0)

/* encode_spans(rows, pid, rank, root_id, root_hex, fallback) -> bytes
 * rows: closed-span tuples (id, parent, name, index, start_ns, end_ns, cpu_ns, gpu_ns,
 * memory_peak_bytes, thread_id, attrs). Returns the JSON objects joined by commas. */
static PyObject *encode_spans(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_spans(rows: list, pid, rank, root_id, root_hex, fallback)");
        return NULL;
    }
    PyObject *rows = args[0], *pid = args[1], *rank = args[2], *root_id = args[3], *root_hex = args[4];
    look_up_record_types();
    PyObject *fallback = args[5];
    Buf b = {NULL, 0, 0};
    /* The text of ',"pid":P,"rank":R,"attrs":' is the same for every record. */
    Buf tail = {NULL, 0, 0};
    if (PUT_LIT(&tail, ",\"pid\":") < 0 || put_int(&tail, pid) != 1 || PUT_LIT(&tail, ",\"rank\":") < 0 ||
        put_int(&tail, rank) != 1 || PUT_LIT(&tail, ",\"attrs\":") < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "pid and rank must be ints");
        PyMem_Free(tail.data);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (i && PUT_LIT(&b, ",") < 0) goto error;
        Py_ssize_t start = b.len;
        PyObject *const *f = record_fields(row, 11, row_type);
        if (f == NULL) goto fallback;
        LIT("{\"id\":");
        STEP(put_hex_id(&b, f[0]));
        LIT(",\"parent_id\":");
        int has_parent = PyObject_IsTrue(f[1]);
        if (has_parent < 0) goto error;
        if (has_parent) {
            STEP(put_hex_id(&b, f[1]));
        } else {
            int is_root = PyObject_RichCompareBool(f[0], root_id, Py_EQ);
            if (is_root < 0) goto error;
            if (is_root || root_hex == Py_None) {
                LIT("null");
            } else {
                STEP(put_str(&b, root_hex));
            }
        }
        LIT(",\"name\":");
        STEP(put_str(&b, f[2]));
        LIT(",\"index\":");
        STEP(put_int_or_null(&b, f[3]));
        LIT(",\"start_ns\":");
        STEP(put_int(&b, f[4]));
        LIT(",\"end_ns\":");
        STEP(put_int_or_null(&b, f[5]));
        LIT(",\"cpu_ns\":");
        STEP(put_int_or_null(&b, f[6]));
        LIT(",\"gpu_ns\":");
        STEP(put_int_or_null(&b, f[7]));
        LIT(",\"memory_peak_bytes\":");
        STEP(put_int_or_null(&b, f[8]));
        LIT(",\"thread_id\":");
        STEP(put_int(&b, f[9]));
        if (buf_put(&b, tail.data, tail.len) < 0) goto error;
        STEP(put_attrs(&b, f[10]));
        LIT("}");
        continue;
    fallback:
        if (put_fallback(&b, start, fallback, &row, 1) < 0) goto error;
    }
    PyMem_Free(tail.data);
    PyObject *out = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
    PyMem_Free(b.data);
    return out;
error:
    PyMem_Free(tail.data);
    PyMem_Free(b.data);
    return NULL;
}

/* encode_marks(rows, ids, root_sentinel, fallback) -> bytes
 * rows: [(span_id, name, value, kind, ts_ns, attrs, thread_id), ...]; ids: the mark ids, one
 * per row. fallback(row, id) returns one record's JSON. */
static PyObject *encode_marks(PyObject *Py_UNUSED(m), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[1]) ||
        PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1]) || !PyUnicode_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "encode_marks(rows: list, ids: list of the same length, root_sentinel: str, fallback)");
        return NULL;
    }
    PyObject *rows = args[0], *ids = args[1], *sentinel = args[2], *fallback = args[3];
    look_up_record_types();
    Buf b = {NULL, 0, 0};
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i), *mid = PyList_GET_ITEM(ids, i);
        if (i && PUT_LIT(&b, ",") < 0) goto error;
        Py_ssize_t start = b.len;
        PyObject *const *f = record_fields(row, 7, row_type);
        if (f == NULL) goto fallback;
        PyObject *value = f[2];
        const char *vt;
        if (PyFloat_CheckExact(value)) vt = "float";
        else if (PyBool_Check(value)) vt = "bool";
        else if (PyLong_CheckExact(value)) vt = "int";
        else if (PyUnicode_CheckExact(value)) vt = "str";
        else goto fallback;
        LIT("{\"id\":");
        STEP(put_hex_id(&b, mid));
        LIT(",\"span_id\":");
        int has_span = PyObject_IsTrue(f[0]);
        if (has_span < 0) goto error;
        STEP(has_span ? put_hex_id(&b, f[0]) : put_str(&b, sentinel));
        LIT(",\"name\":");
        STEP(put_str(&b, f[1]));
        LIT(",\"value\":");
        STEP(put_attr_value(&b, value));
        LIT(",\"value_type\":\"");
        if (buf_put(&b, vt, (Py_ssize_t)strlen(vt)) < 0) goto error;
        LIT("\",\"kind\":");
        STEP(put_str(&b, f[3]));
        LIT(",\"ts_ns\":");
        STEP(put_int(&b, f[4]));
        LIT(",\"thread_id\":");
        STEP(put_int(&b, f[6]));
        LIT(",\"attrs\":");
        STEP(put_attrs(&b, f[5]));
        LIT("}");
        continue;
    fallback:
        if (put_fallback(&b, start, fallback, (PyObject *[]){row, mid}, 2) < 0) goto error;
    }
    PyObject *out = PyBytes_FromStringAndSize(b.data ? b.data : "", b.len);
    PyMem_Free(b.data);
    return out;
error:
    PyMem_Free(b.data);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"encode_spans", (PyCFunction)(void (*)(void))encode_spans, METH_FASTCALL,
     "encode_spans($module, rows, pid, rank, root_id, root_hex, fallback, /)\n--\n\nSpan records as JSON objects joined by commas."},
    {"encode_marks", (PyCFunction)(void (*)(void))encode_marks, METH_FASTCALL,
     "encode_marks($module, rows, ids, root_sentinel, fallback, /)\n--\n\nMark records as JSON objects joined by commas."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cencode", "C encoder of spool span and mark records.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cencode(void) {
    return PyModule_Create(&module_def);
}
