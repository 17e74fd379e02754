/* JSON objects of rows straight from Arrow buffers: the optional fast path of the JSON export
 * (cirron/export/_json.py; its Python encoder from whole columns is the reference, and the tests
 * check that both write the same bytes).
 *
 * encode_rows(columns, n, order=None, *, row_end=b"}", row_sep=b",", null=b"null") -> bytes: n rows,
 * each its columns then `row_end`, joined by `row_sep` (JSON objects by default; the CSV export
 * passes its own). Each column is a tuple (prefix, kind, validity, offsets, data, offset): `prefix`
 * is written before the value (e.g. b'{"id":' or b',"name":'). Kinds:
 *   'i'      int64 values (`data`), decimal
 *   's' 'S'  string with int32 / int64 offsets, written as a JSON string
 *   'r' 'R'  string with int32 / int64 offsets holding JSON text, copied as it is
 *   'c' 'C'  string with int32 / int64 offsets, written as a CSV field (csv.writer's QUOTE_MINIMAL:
 *            quoted, its quotes doubled, when it holds a comma, a quote, CR or LF)
 *   'j'      `data` is bytes: the texts of the rows joined by commas (texts without commas)
 *   'l'      `data` is a list of bytes, the text of each row
 * `validity` is the Arrow validity bitmap or None (no nulls; a null is written as `null`), `offset` the
 * array's offset into its buffers. `order`, a buffer of int64, gives the source row of each output
 * row (default: row k is row k). Every index and offset is checked against the buffers' sizes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <limits.h>
#include <string.h>

#include "../_jtext.h"
#include "../_pyview.h"

typedef struct {
    const char *prefix;
    Py_ssize_t prefix_len;
    int kind;
    const uint8_t *valid;
    const char *offsets;
    const char *data;
    Py_ssize_t data_len, offset, rows;
    Py_ssize_t *starts; /* 'j': where each text starts (rows + 1 entries, the last one past the end) */
    PyObject *list;     /* 'l' */
} Col;

/* Buffers a column takes (validity, offsets, data): the pool holds this many per column. */
#define COL_VIEWS 3

/* A buffer argument (None: NULL, length 0). */
static int get_view(PvPool *p, PyObject *obj, const char **data, Py_ssize_t *len) {
    if (obj == Py_None) {
        *data = NULL;
        *len = 0;
        return 0;
    }
    Py_buffer *v;
    if (pv_get(p, obj, &v) < 0) return -1;
    *data = v->buf;
    *len = v->len;
    return 0;
}

static int bad(const char *what) {
    PyErr_Format(PyExc_ValueError, "encode_rows: %s", what);
    return -1;
}

static int col_init(Col *c, PyObject *spec, PvPool *p) {
    PyObject *prefix, *kind, *valid, *offsets, *data;
    Py_ssize_t offset;
    if (!PyTuple_Check(spec) ||
        !PyArg_ParseTuple(spec, "SUOOOn", &prefix, &kind, &valid, &offsets, &data, &offset)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "a column is (prefix, kind, validity, offsets, data, offset)");
        return -1;
    }
    c->prefix = PyBytes_AS_STRING(prefix);
    c->prefix_len = PyBytes_GET_SIZE(prefix);
    if (PyUnicode_GetLength(kind) != 1) return bad("a kind is one letter");
    c->kind = (int)PyUnicode_READ_CHAR(kind, 0);
    if (offset < 0) return bad("negative offset");
    c->offset = offset;
    const char *vdata;
    Py_ssize_t vlen;
    if (get_view(p, valid, &vdata, &vlen) < 0) return -1;
    c->valid = (const uint8_t *)vdata;
    Py_ssize_t olen = 0;
    switch (c->kind) {
    case 'i':
        if (get_view(p, data, &c->data, &c->data_len) < 0) return -1;
        c->rows = c->data_len / 8 - offset;
        break;
    case 's': case 'r': case 'c': case 'S': case 'R': case 'C': {
        int width = (c->kind == 's' || c->kind == 'r' || c->kind == 'c') ? 4 : 8;
        if (get_view(p, offsets, &c->offsets, &olen) < 0 || get_view(p, data, &c->data, &c->data_len) < 0) return -1;
        c->rows = olen / width - 1 - offset;
        break;
    }
    case 'j': {
        if (!PyBytes_Check(data)) return bad("a joined column's data is bytes");
        if (get_view(p, data, &c->data, &c->data_len) < 0) return -1;
        Py_ssize_t count = 1;
        for (Py_ssize_t i = 0; i < c->data_len; i++) count += c->data[i] == ',';
        if (c->data_len == 0) count = 0;
        c->starts = PyMem_Malloc((size_t)(count + 1) * sizeof(Py_ssize_t));
        if (c->starts == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        Py_ssize_t k = 0;
        if (count) c->starts[k++] = 0;
        for (Py_ssize_t i = 0; i < c->data_len; i++)
            if (c->data[i] == ',') c->starts[k++] = i + 1;
        c->starts[count] = c->data_len + 1; /* as if one more comma ended the last text */
        c->rows = count - offset;
        break;
    }
    case 'l':
        if (!PyList_Check(data)) return bad("a list column's data is a list");
        c->list = data;
        c->rows = PyList_GET_SIZE(data) - offset;
        break;
    default:
        return bad("unknown kind");
    }
    if (c->valid != NULL && !pv_bitmap_holds(vlen, c->offset + c->rows)) return bad("validity bitmap too short");
    return 0;
}

static inline Py_ssize_t str_offset(const Col *c, Py_ssize_t i) {
    if (c->kind == 's' || c->kind == 'r' || c->kind == 'c') {
        int32_t v;
        memcpy(&v, c->offsets + i * 4, 4);
        return v;
    }
    int64_t v;
    memcpy(&v, c->offsets + i * 8, 8);
    return (Py_ssize_t)v;
}

/* A string value's bytes (offsets checked against the data). */
static inline int str_span(const Col *c, Py_ssize_t i, Py_ssize_t *start, Py_ssize_t *len) {
    Py_ssize_t a = str_offset(c, i), e = str_offset(c, i + 1);
    if (!pv_span_ok(a, e, c->data_len)) return bad("string offsets out of bounds");
    *start = a;
    *len = e - a;
    return 0;
}

/* Whether csv.writer (QUOTE_MINIMAL) quotes a field. */
static inline int csv_needs_quotes(const char *s, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n') return 1;
    return 0;
}

static inline char *write_csv_field(char *o, const char *s, Py_ssize_t n) {
    if (!csv_needs_quotes(s, n)) {
        memcpy(o, s, (size_t)n);
        return o + n;
    }
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '"') *o++ = '"';
        *o++ = s[i];
    }
    *o++ = '"';
    return o;
}

static inline int is_null(const Col *c, Py_ssize_t i) {
    return !pv_bit(c->valid, i);
}

/* The most bytes the value of row i (already offset) of c takes. */
static inline int value_room(const Col *c, Py_ssize_t i, Py_ssize_t null_len, Py_ssize_t *room) {
    Py_ssize_t start, len;
    if (is_null(c, i)) {
        *room = null_len;
        return 0;
    }
    switch (c->kind) {
    case 'i': *room = JT_INT64_MAX; return 0;
    case 's': case 'S':
        if (str_span(c, i, &start, &len) < 0) return -1;
        *room = JT_STR_MAX(len);
        return 0;
    case 'r': case 'R':
        if (str_span(c, i, &start, &len) < 0) return -1;
        *room = len;
        return 0;
    case 'c': case 'C':
        if (str_span(c, i, &start, &len) < 0) return -1;
        *room = 2 * len + 2;
        return 0;
    case 'j': *room = c->starts[i + 1] - 1 - c->starts[i]; return 0;
    default: { /* 'l' */
        PyObject *item = PyList_GET_ITEM(c->list, i);
        if (!PyBytes_Check(item)) return bad("a list column holds bytes");
        *room = PyBytes_GET_SIZE(item);
        return 0;
    }
    }
}

/* Writes the value of row i (already offset; value_room said it fits) at o; returns the end. */
static inline char *write_value(char *o, const Col *c, Py_ssize_t i, const char *null, Py_ssize_t null_len) {
    Py_ssize_t start, len;
    if (is_null(c, i)) {
        memcpy(o, null, (size_t)null_len);
        return o + null_len;
    }
    switch (c->kind) {
    case 'i': {
        int64_t v;
        memcpy(&v, c->data + i * 8, 8);
        return jt_write_int64(o, v);
    }
    case 's': case 'S':
        str_span(c, i, &start, &len);
        return jt_write_str(o, c->data + start, len);
    case 'c': case 'C':
        str_span(c, i, &start, &len);
        return write_csv_field(o, c->data + start, len);
    case 'r': case 'R':
        str_span(c, i, &start, &len);
        break;
    case 'j':
        start = c->starts[i];
        len = c->starts[i + 1] - 1 - start;
        break;
    default: { /* 'l' */
        PyObject *item = PyList_GET_ITEM(c->list, i);
        memcpy(o, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item));
        return o + PyBytes_GET_SIZE(item);
    }
    }
    memcpy(o, c->data + start, (size_t)len);
    return o + len;
}

static PyObject *encode_rows(PyObject *Py_UNUSED(self), PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"columns", "n", "order", "row_end", "row_sep", "null", NULL};
    PyObject *columns, *order_obj = Py_None;
    Py_ssize_t n, end_len = 1, sep_len = 1, null_len = 4;
    const char *row_end = "}", *row_sep = ",", *null = "null";
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!n|O$y#y#y#", kwlist, &PyList_Type, &columns, &n, &order_obj,
                                     &row_end, &end_len, &row_sep, &sep_len, &null, &null_len))
        return NULL;
    if (n < 0) {
        bad("negative row count");
        return NULL;
    }
    Py_ssize_t ncols = PyList_GET_SIZE(columns);
    if (ncols > (INT_MAX - 1) / COL_VIEWS) {
        bad("too many columns");
        return NULL;
    }
    Col *cols = PyMem_Calloc(ncols ? (size_t)ncols : 1, sizeof(Col));
    PvPool pool = {PyMem_Calloc((size_t)(ncols * COL_VIEWS + 1), sizeof(Py_buffer)), 0, (int)(ncols * COL_VIEWS + 1)};
    if (cols == NULL || pool.views == NULL) {
        PyMem_Free(cols);
        PyMem_Free(pool.views);
        return PyErr_NoMemory();
    }
    const int64_t *order = NULL;
    PyObject *out = NULL;
    Py_ssize_t fixed = sep_len + end_len;
    for (Py_ssize_t j = 0; j < ncols; j++) {
        if (col_init(&cols[j], PyList_GET_ITEM(columns, j), &pool) < 0) goto fail;
        fixed += cols[j].prefix_len;
    }
    Py_ssize_t limit = PY_SSIZE_T_MAX; /* rows every column has */
    for (Py_ssize_t j = 0; j < ncols; j++)
        if (cols[j].rows < limit) limit = cols[j].rows;
    if (order_obj != Py_None) {
        Py_buffer *order_view;
        if (pv_get(&pool, order_obj, &order_view) < 0) goto fail;
        if (order_view->len != n * 8) {
            bad("order holds one int64 per row");
            goto fail;
        }
        order = order_view->buf;
        for (Py_ssize_t k = 0; k < n; k++)
            if (order[k] < 0 || order[k] >= limit) {
                bad("order names a row the columns do not have");
                goto fail;
            }
    } else if (n > limit) {
        bad("more rows than the columns have");
        goto fail;
    }
    /* written straight into the bytes object returned, grown as needed and cut to size at the end */
    Py_ssize_t cap = n * (fixed + 32) + 64, len = 0;
    out = PyBytes_FromStringAndSize(NULL, cap);
    if (out == NULL) goto fail;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t row = order ? (Py_ssize_t)order[k] : k, need = fixed;
        for (Py_ssize_t j = 0; j < ncols; j++) {
            Py_ssize_t room;
            if (value_room(&cols[j], row + cols[j].offset, null_len, &room) < 0) goto fail;
            need += room;
        }
        if (len + need > cap) {
            while (len + need > cap) cap *= 2;
            if (_PyBytes_Resize(&out, cap) < 0) goto fail;
        }
        char *o = PyBytes_AS_STRING(out) + len;
        if (k) {
            memcpy(o, row_sep, (size_t)sep_len);
            o += sep_len;
        }
        for (Py_ssize_t j = 0; j < ncols; j++) {
            memcpy(o, cols[j].prefix, (size_t)cols[j].prefix_len);
            o = write_value(o + cols[j].prefix_len, &cols[j], row + cols[j].offset, null, null_len);
        }
        memcpy(o, row_end, (size_t)end_len);
        o += end_len;
        len = o - PyBytes_AS_STRING(out);
    }
    if (_PyBytes_Resize(&out, len) < 0) goto fail;
    goto done;
fail:
    Py_CLEAR(out);
done:
    for (Py_ssize_t j = 0; j < ncols; j++) PyMem_Free(cols[j].starts);
    PyMem_Free(cols);
    pv_release(&pool);
    PyMem_Free(pool.views);
    return out;
}

static PyMethodDef methods[] = {
    {"encode_rows", (PyCFunction)(void (*)(void))encode_rows, METH_VARARGS | METH_KEYWORDS,
     "encode_rows(columns, n, order=None, *, row_end=b'}', row_sep=b',', null=b'null')\n--\n\n"
     "Rows of Arrow columns as JSON objects joined by commas (or CSV lines)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cjson", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cjson(void) { return PyModule_Create(&module); }
