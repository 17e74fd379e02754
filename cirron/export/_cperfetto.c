/* Trace events of a session's columns: the optional fast path of
 * cirron.export._perfetto_columns (its Arrow-kernel encoder and its sweep in Python are the
 * reference; the tests check that both give the same bytes).
 *
 * sweep(order, track, start, end, parent, bounds) is the light pass over a whole session: the
 * B/E/X events of every thread in output order, each span's overlap lane and where each lane is
 * first used. It reads plain int arrays only (a few bytes a span), so a session read piece by
 * piece can run it once over all its spans.
 *
 * encode_spans(events, texts, row_base, cols) writes a run of those events from the spans'
 * columns, which may hold any contiguous run of the session's rows (row_base is the first):
 * a caller can encode piece by piece. encode_marks(a, b, cols) writes counter events of marks.
 * Both let the GIL go while they write (taking it back for a thread name, or for a span or mark
 * whose text is given whole), so a thread can encode the next slice while another writes the last;
 * one object encodes for one thread at a time.
 *
 * Float texts (timestamps, mark values) come in made: one orjson call per column, split at its
 * commas by the caller, so they are byte for byte orjson's. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* the encoders fill their buffers without the GIL (another thread writes the last slice meanwhile) */
#define CIRRON_BUF_NOGIL
#include "../_buf.h"
#include "../_jtext.h"
#include "../_pyview.h"

enum { EV_B = 0, EV_E = 1, EV_X = 2, EV_TEXT = 3 };

/* A string literal appended at o (room already reserved). */
#define LIT(o, s) (memcpy((o), (s), sizeof(s) - 1), (o) += sizeof(s) - 1)

/* ------------------------------------------------------------------ buffers */

/* A contiguous buffer of `item`-byte values; n is their count. */
typedef struct {
    Py_buffer v;
    Py_ssize_t n;
} Arr;

static int arr_get(PyObject *obj, Arr *a, Py_ssize_t item, const char *what) {
    if (PyObject_GetBuffer(obj, &a->v, PyBUF_SIMPLE) < 0) return -1;
    if (pv_count(&a->v, item, what, &a->n) < 0) {
        PyBuffer_Release(&a->v);
        a->v.obj = NULL;
        return -1;
    }
    return 0;
}

static void arr_release(Arr *a) {
    if (a->v.obj != NULL) PyBuffer_Release(&a->v);
    a->v.obj = NULL;
}

#define I64(a) ((const int64_t *)(a).v.buf)
#define I32(a) ((const int32_t *)(a).v.buf)
#define U8(a) ((const uint8_t *)(a).v.buf)
#define CH(a) ((const char *)(a).v.buf)

/* n strings: string i is data[off[i] .. off[i + 1] - trim). Either int64 offsets given with the
 * data (trim 0), or a JSON list of n numbers as orjson writes it, split at its commas here
 * (trim 1: the comma or closing bracket after each). */
typedef struct {
    Arr off_arr, data;
    int64_t *own_off; /* the offsets of a list */
    const int64_t *off;
    Py_ssize_t n, trim;
} Texts;

static void texts_release(Texts *t) {
    arr_release(&t->off_arr);
    arr_release(&t->data);
    PyMem_Free(t->own_off);
    t->own_off = NULL;
}

static int texts_get(PyObject *off, PyObject *data, Py_ssize_t n, Texts *t, const char *what) {
    if (arr_get(off, &t->off_arr, 8, what) < 0 || arr_get(data, &t->data, 1, what) < 0) return -1;
    t->off = I64(t->off_arr);
    t->n = n;
    t->trim = 0;
    if (t->off_arr.n != n + 1) {
        PyErr_Format(PyExc_ValueError, "%s: %zd offsets for %zd strings", what, t->off_arr.n, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (t->off[i] < 0 || t->off[i] > t->off[i + 1]) goto bad;
    if (t->off[n] > t->data.v.len) goto bad;
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "%s: offsets out of order or past the data", what);
    return -1;
}

static int texts_of_list(PyObject *data, Py_ssize_t n, Texts *t, const char *what) {
    if (arr_get(data, &t->data, 1, what) < 0) return -1;
    const char *d = CH(t->data);
    Py_ssize_t len = t->data.v.len;
    t->n = n;
    t->trim = 1;
    if (len < 2 || d[0] != '[' || d[len - 1] != ']' || (n == 0) != (len == 2)) goto bad;
    t->own_off = PyMem_Malloc((n + 1) * sizeof(int64_t));
    if (t->own_off == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->off = t->own_off;
    Py_ssize_t k = 0;
    t->own_off[k++] = 1;
    for (const char *p = d + 1, *stop = d + len - 1; (p = memchr(p, ',', stop - p)) != NULL; p++) {
        if (k >= n) goto bad;
        t->own_off[k++] = p + 1 - d;
    }
    if (n && k != n) goto bad;
    t->own_off[n] = len;
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "%s: not a JSON list of %zd numbers", what, n);
    return -1;
}

static inline const char *text_at(const Texts *t, Py_ssize_t i, Py_ssize_t *len) {
    *len = (Py_ssize_t)(t->off[i + 1] - t->off[i] - t->trim);
    return CH(t->data) + t->off[i];
}

/* Timestamps in microseconds, (ns - base) / 1000.0 as the per-record encoder computes them: the
 * JSON list orjson wrote, or the int64 nanoseconds ns - base themselves where every one is below
 * TIME_INT_LIMIT in magnitude. There the double nearest k / 1000 is less than 2^43, so its ulp is
 * below 0.001: the exact decimal of k / 1000 (at most three decimals, trailing zeros dropped, at
 * least one) reads back as that double and no shorter decimal does, which makes it the shortest
 * text orjson writes (the tests compare the two on millions of values and at the limit). */
#define TIME_INT_LIMIT ((int64_t)1000 << 43)
#define TIME_MAX 32

typedef struct {
    Texts list;
    Arr ints;
    int is_ints;
} Times;

static void times_release(Times *t) {
    texts_release(&t->list);
    arr_release(&t->ints);
}

static int times_get(PyObject *obj, Py_ssize_t n, Times *t, const char *what) {
    if (PyBytes_Check(obj)) return texts_of_list(obj, n, &t->list, what);
    t->is_ints = 1;
    if (arr_get(obj, &t->ints, 8, what) < 0) return -1;
    if (t->ints.n != n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd times for %zd rows", what, t->ints.n, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t k = I64(t->ints)[i];
        if (k <= -TIME_INT_LIMIT || k >= TIME_INT_LIMIT) {
            PyErr_Format(PyExc_ValueError, "%s: a time too far from the base to be written exactly", what);
            return -1;
        }
    }
    return 0;
}

static inline Py_ssize_t time_room(const Times *t, Py_ssize_t i) {
    return t->is_ints ? TIME_MAX : (Py_ssize_t)(t->list.off[i + 1] - t->list.off[i]);
}

static inline char *put_time(char *o, const Times *t, Py_ssize_t i) {
    if (!t->is_ints) {
        Py_ssize_t len;
        const char *p = text_at(&t->list, i, &len);
        memcpy(o, p, len);
        return o + len;
    }
    int64_t k = I64(t->ints)[i];
    uint64_t a = k < 0 ? 0ULL - (uint64_t)k : (uint64_t)k;
    unsigned f = (unsigned)(a % 1000);
    if (k < 0) *o++ = '-';
    o = jt_write_int64(o, (int64_t)(a / 1000));
    *o++ = '.';
    *o++ = (char)('0' + f / 100);
    if ((f %= 100) != 0) {
        *o++ = (char)('0' + f / 10);
        if ((f %= 10) != 0) *o++ = (char)('0' + f);
    }
    return o;
}

/* ------------------------------------------------------------------ sweep */

typedef struct {
    int64_t *rows; /* the open spans of the lane, innermost last */
    Py_ssize_t len, cap;
} Stack;

static int stack_push(Stack *s, int64_t row) {
    if (s->len == s->cap) {
        Py_ssize_t cap = s->cap ? s->cap * 2 : 16;
        int64_t *r = PyMem_Realloc(s->rows, cap * sizeof(int64_t));
        if (r == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->rows = r;
        s->cap = cap;
    }
    s->rows[s->len++] = row;
    return 0;
}

/* The end times qsort's comparator reads (set under the GIL, for one call). */
static const int64_t *tie_end;

/* Longest first, then by row. */
static int tie_cmp(const void *pa, const void *pb) {
    int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
    if (tie_end[a] != tie_end[b]) return tie_end[a] > tie_end[b] ? -1 : 1;
    return (a > b) - (a < b);
}

static PyObject *sort_ties(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "sort_ties(order, track, start, end)");
        return NULL;
    }
    Py_buffer ob;
    Arr track = {0}, start = {0}, end = {0};
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[0], &ob, PyBUF_WRITABLE) < 0) return NULL;
    if (arr_get(args[1], &track, 4, "track") < 0 || arr_get(args[2], &start, 8, "start") < 0 ||
        arr_get(args[3], &end, 8, "end") < 0)
        goto done;
    Py_ssize_t n = start.n;
    int64_t *ord = (int64_t *)ob.buf;
    if (ob.len != 8 * n || track.n != n || end.n != n) {
        PyErr_SetString(PyExc_ValueError, "sort_ties: arrays of different lengths");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (ord[i] < 0 || ord[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "sort_ties: a row out of range");
            goto done;
        }
    const int32_t *tr = I32(track);
    const int64_t *st = I64(start), *en = I64(end);
    tie_end = en;
    for (Py_ssize_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && st[ord[b]] == st[ord[a]] && tr[ord[b]] == tr[ord[a]]; b++) {
        }
        if (b - a > 16) {
            qsort(ord + a, b - a, sizeof(int64_t), tie_cmp);
            continue;
        }
        for (Py_ssize_t i = a + 1; i < b; i++) { /* insertion sort: runs are short */
            int64_t x = ord[i];
            Py_ssize_t j = i;
            while (j > a && tie_cmp(&ord[j - 1], &x) > 0) {
                ord[j] = ord[j - 1];
                j--;
            }
            ord[j] = x;
        }
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&ob);
    arr_release(&track);
    arr_release(&start);
    arr_release(&end);
    return result;
}

/* out is the bytes object returned, sized for the two events a span gives at most (checked all
 * the same: it cannot grow) */
static inline int put_event(Buf *out, int64_t row, int kind) {
    if (out->len + 8 > out->cap) {
        PyErr_SetString(PyExc_ValueError, "sweep: more events than spans");
        return -1;
    }
    int64_t code = row * 4 + kind;
    memcpy(out->data + out->len, &code, 8);
    out->len += 8;
    return 0;
}

static PyObject *sweep(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "sweep(order, track, start, end, parent, bounds)");
        return NULL;
    }
    Arr order = {0}, track = {0}, start = {0}, end = {0}, parent = {0}, bounds = {0};
    Buf out = {0}, lanes = {0};
    Stack *stacks = NULL;
    Py_ssize_t n_stacks = 0, cap_stacks = 0;
    PyObject *opened = NULL, *result = NULL, *out_bytes = NULL, *lane_bytes = NULL;
    if (arr_get(args[0], &order, 8, "order") < 0 || arr_get(args[1], &track, 4, "track") < 0 ||
        arr_get(args[2], &start, 8, "start") < 0 || arr_get(args[3], &end, 8, "end") < 0 ||
        arr_get(args[4], &parent, 8, "parent") < 0 || arr_get(args[5], &bounds, 8, "bounds") < 0)
        goto done;
    Py_ssize_t n = order.n;
    if (track.n != n || start.n != n || end.n != n || parent.n != n || bounds.n < 1 || I64(bounds)[0] != 0 ||
        I64(bounds)[bounds.n - 1] != n) {
        PyErr_SetString(PyExc_ValueError, "sweep: arrays of different lengths or bounds that do not cover them");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = I64(order)[i], p = I64(parent)[i];
        if (r < 0 || r >= n || p >= n) {
            PyErr_SetString(PyExc_ValueError, "sweep: a row out of range");
            goto done;
        }
    }
    for (Py_ssize_t t = 0; t + 1 < bounds.n; t++)
        if (I64(bounds)[t] > I64(bounds)[t + 1]) {
            PyErr_SetString(PyExc_ValueError, "sweep: bounds out of order");
            goto done;
        }
    /* written straight into the bytes returned (no copy of a big session's events at the end) */
    out_bytes = PyBytes_FromStringAndSize(NULL, 16 * n + 8);
    lane_bytes = PyBytes_FromStringAndSize(NULL, 4 * n + 4);
    if (out_bytes == NULL || lane_bytes == NULL) goto done;
    out.data = PyBytes_AS_STRING(out_bytes);
    out.cap = 16 * n + 8;
    lanes.data = PyBytes_AS_STRING(lane_bytes);
    lanes.cap = 4 * n + 4;
    int32_t *lane = (int32_t *)lanes.data;
    for (Py_ssize_t i = 0; i < n; i++) lane[i] = -1;
    lanes.len = 4 * n;
    opened = PyList_New(0);
    if (opened == NULL) goto done;
    const int64_t *st = I64(start), *en = I64(end), *par = I64(parent), *ord = I64(order);
    const int32_t *tr = I32(track);
    for (Py_ssize_t t = 0; t + 1 < bounds.n; t++) {
        n_stacks = 0;
        for (Py_ssize_t k = 0; k < cap_stacks; k++) stacks[k].len = 0;
        for (int64_t at = I64(bounds)[t]; at < I64(bounds)[t + 1]; at++) {
            int64_t i = ord[at], s = st[i], e = en[i], p = par[i];
            for (Py_ssize_t k = 0; k < n_stacks; k++) {
                Stack *q = &stacks[k];
                while (q->len && en[q->rows[q->len - 1]] <= s)
                    if (put_event(&out, q->rows[--q->len], EV_E) < 0) goto done;
            }
            /* the parent's lane when the parent is on this thread, placed, and the span fits in it */
            int64_t chosen = -1;
            if (p >= 0 && tr[p] == tr[i] && lane[p] >= 0) {
                Stack *q = &stacks[lane[p]];
                if (!q->len || en[q->rows[q->len - 1]] >= e) chosen = lane[p];
            }
            for (Py_ssize_t k = 0; chosen < 0 && k < n_stacks; k++) {
                Stack *q = &stacks[k];
                if (!q->len || en[q->rows[q->len - 1]] >= e) chosen = k;
            }
            if (chosen < 0) {
                if (n_stacks == cap_stacks) {
                    Py_ssize_t cap = cap_stacks ? cap_stacks * 2 : 4;
                    Stack *grown = PyMem_Realloc(stacks, cap * sizeof(Stack));
                    if (grown == NULL) {
                        PyErr_NoMemory();
                        goto done;
                    }
                    memset(grown + cap_stacks, 0, (cap - cap_stacks) * sizeof(Stack));
                    stacks = grown;
                    cap_stacks = cap;
                }
                chosen = n_stacks++;
                if (chosen > INT32_MAX) {
                    PyErr_SetString(PyExc_OverflowError, "sweep: too many lanes");
                    goto done;
                }
                PyObject *o = Py_BuildValue("(nnn)", out.len / 8, t, (Py_ssize_t)chosen);
                if (o == NULL || PyList_Append(opened, o) < 0) {
                    Py_XDECREF(o);
                    goto done;
                }
                Py_DECREF(o);
            }
            lane[i] = (int32_t)chosen;
            if (e == s) {
                if (put_event(&out, i, EV_X) < 0) goto done;
            } else if (put_event(&out, i, EV_B) < 0 || stack_push(&stacks[chosen], i) < 0) {
                goto done;
            }
        }
        for (Py_ssize_t k = 0; k < n_stacks; k++) {
            Stack *q = &stacks[k];
            while (q->len)
                if (put_event(&out, q->rows[--q->len], EV_E) < 0) goto done;
        }
    }
    if (_PyBytes_Resize(&out_bytes, out.len) < 0 || _PyBytes_Resize(&lane_bytes, lanes.len) < 0) goto done;
    result = PyTuple_Pack(3, out_bytes, lane_bytes, opened);
done:
    for (Py_ssize_t k = 0; k < cap_stacks; k++) PyMem_Free(stacks[k].rows);
    PyMem_Free(stacks);
    Py_XDECREF(out_bytes);
    Py_XDECREF(lane_bytes);
    Py_XDECREF(opened);
    arr_release(&order);
    arr_release(&track);
    arr_release(&start);
    arr_release(&end);
    arr_release(&parent);
    arr_release(&bounds);
    return result;
}

/* ------------------------------------------------------------------ span events */

/* The columns of a run of a session's spans, checked once, and the buffer events are written in
 * (kept from one call to the next). */
typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    Texts name;           /* the span's name (a null one already "None") */
    Arr pid, tid;         /* int32 process, int64 track id */
    Times start, end;
    Arr attr;             /* int32 code of the span's attrs among the distinct ones */
    Texts inner;          /* per code: the attrs' members as args text, each with its comma */
    Arr slow;             /* uint8 per code: the args are given whole in `exact` */
    Arr index, has_index; /* int64 index, uint8 whether it is one */
    Texts id;
    Arr has_id, open;     /* uint8 */
    PyObject *exact;      /* dict: position in these columns -> the args' bytes */
    Buf out;
    int busy;             /* an encode is writing into out (without the GIL) */
} SpansObject;

static void spans_dealloc(PyObject *self) {
    SpansObject *c = (SpansObject *)self;
    Texts *texts[] = {&c->name, &c->inner, &c->id};
    times_release(&c->start);
    times_release(&c->end);
    Arr *arrs[] = {&c->pid, &c->tid, &c->attr, &c->slow, &c->index, &c->has_index, &c->has_id, &c->open};
    for (size_t k = 0; k < sizeof texts / sizeof texts[0]; k++) texts_release(texts[k]);
    for (size_t k = 0; k < sizeof arrs / sizeof arrs[0]; k++) arr_release(arrs[k]);
    Py_XDECREF(c->exact);
    buf_free(&c->out);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *spans_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *name_off, *names, *pid, *tid, *starts, *ends, *attr, *inner_off, *inner, *slow, *index, *has_index,
        *id_off, *ids, *has_id, *open, *exact;
    static char *kwlist[] = {"name_off", "names", "pid", "tid", "starts", "ends", "attr", "args_off", "args",
                             "slow", "index", "has_index", "id_off", "ids", "has_id", "open", "exact", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOOOOOOOOOO!:Spans", kwlist, &name_off, &names, &pid, &tid,
                                     &starts, &ends, &attr, &inner_off, &inner, &slow, &index, &has_index, &id_off,
                                     &ids, &has_id, &open, &PyDict_Type, &exact))
        return NULL;
    SpansObject *c = (SpansObject *)type->tp_alloc(type, 0); /* zeroed */
    if (c == NULL) return NULL;
    c->exact = Py_NewRef(exact);
    if (arr_get(pid, &c->pid, 4, "pid") < 0 || arr_get(tid, &c->tid, 8, "tid") < 0 ||
        arr_get(attr, &c->attr, 4, "attrs codes") < 0 || arr_get(slow, &c->slow, 1, "slow args") < 0 ||
        arr_get(index, &c->index, 8, "index") < 0 || arr_get(has_index, &c->has_index, 1, "has index") < 0 ||
        arr_get(has_id, &c->has_id, 1, "has id") < 0 || arr_get(open, &c->open, 1, "open") < 0)
        goto fail;
    Py_ssize_t n = c->n = c->pid.n;
    if (c->tid.n != n || c->attr.n != n || c->index.n != n || c->has_index.n != n || c->has_id.n != n ||
        c->open.n != n) {
        PyErr_SetString(PyExc_ValueError, "span columns of different lengths");
        goto fail;
    }
    if (texts_get(name_off, names, n, &c->name, "names") < 0 || texts_get(id_off, ids, n, &c->id, "ids") < 0 ||
        texts_get(inner_off, inner, c->slow.n, &c->inner, "args") < 0 ||
        times_get(starts, n, &c->start, "starts") < 0 || times_get(ends, n, &c->end, "ends") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        if (I32(c->attr)[i] < 0 || I32(c->attr)[i] >= c->slow.n) {
            PyErr_SetString(PyExc_ValueError, "span columns: an attrs code out of range");
            goto fail;
        }
    return (PyObject *)c;
fail:
    Py_DECREF(c);
    return NULL;
}

/* The args object of span i: {members of its attrs,"index":N,"span_id":ID[,"cirron.open":true]}. */
static int put_args(Buf *b, const SpansObject *c, Py_ssize_t i) {
    int32_t code = I32(c->attr)[i];
    if (U8(c->slow)[code]) {
        PyObject *key = PyLong_FromSsize_t(i);
        if (key == NULL) return -1;
        PyObject *text = PyDict_GetItemWithError(c->exact, key);
        Py_DECREF(key);
        if (text == NULL) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_KeyError, "no args given for span %zd", i);
            return -1;
        }
        if (!PyBytes_Check(text)) {
            PyErr_SetString(PyExc_TypeError, "exact args must be bytes");
            return -1;
        }
        return buf_put(b, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text));
    }
    Py_ssize_t inner_len, id_len;
    const char *inner = text_at(&c->inner, code, &inner_len);
    const char *id = text_at(&c->id, i, &id_len);
    if (buf_reserve(b, inner_len + JT_STR_MAX(id_len) + JT_INT64_MAX + 64) < 0) return -1;
    char *o = b->data + b->len;
    *o++ = '{';
    memcpy(o, inner, inner_len);
    o += inner_len;
    if (U8(c->has_index)[i]) {
        LIT(o, "\"index\":");
        o = jt_write_int64(o, I64(c->index)[i]);
        *o++ = ',';
    }
    LIT(o, "\"span_id\":");
    if (U8(c->has_id)[i]) o = jt_write_str(o, id, id_len);
    else LIT(o, "null");
    if (U8(c->open)[i]) LIT(o, ",\"cirron.open\":true");
    *o++ = '}';
    b->len = o - b->data;
    return 0;
}

static int put_span_event(Buf *b, const SpansObject *c, Py_ssize_t i, int kind) {
    static const char *heads[] = {"{\"ph\":\"B\",\"name\":", "{\"ph\":\"E\",\"name\":", "{\"ph\":\"X\",\"name\":"};
    Py_ssize_t name_len;
    const char *name = text_at(&c->name, i, &name_len);
    const Times *ts = kind == EV_E ? &c->end : &c->start;
    if (buf_reserve(b, JT_STR_MAX(name_len) + time_room(ts, i) + 2 * JT_INT64_MAX + 96) < 0) return -1;
    char *o = b->data + b->len;
    memcpy(o, heads[kind], 17);
    o += 17;
    o = jt_write_str(o, name, name_len);
    LIT(o, ",\"cat\":\"cirron\",\"pid\":");
    o = jt_write_int64(o, I32(c->pid)[i]);
    LIT(o, ",\"tid\":");
    o = jt_write_int64(o, I64(c->tid)[i]);
    LIT(o, ",\"ts\":");
    o = put_time(o, ts, i);
    if (kind == EV_B) {
        *o++ = '}';
        b->len = o - b->data;
        return 0;
    }
    if (kind == EV_X) LIT(o, ",\"dur\":0.0,\"args\":");
    else LIT(o, ",\"args\":");
    b->len = o - b->data;
    if (put_args(b, c, i) < 0 || buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = '}';
    return 0;
}

/* Failures of an encoder that let the GIL go: set once it holds it again. */
enum { ENC_OK = 0, ENC_SET, ENC_NO_MEMORY };

static int encoder_claim(int *busy) {
    if (*busy) {
        PyErr_SetString(PyExc_RuntimeError, "encode: already encoding in another thread");
        return -1;
    }
    *busy = 1;
    return 0;
}

static PyObject *spans_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    SpansObject *c = (SpansObject *)self;
    if (nargs != 3 || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode(events, texts: list, row_base)");
        return NULL;
    }
    int64_t base = PyLong_AsLongLong(args[2]);
    if (base == -1 && PyErr_Occurred()) return NULL;
    Arr events = {0};
    if (arr_get(args[0], &events, 8, "events") < 0) return NULL;
    PyObject *texts = args[1], *result = NULL;
    Buf *out = &c->out;
    Py_ssize_t spans = 0;
    /* checked with the GIL: every span row is in the columns, every text is there */
    for (Py_ssize_t k = 0; k < events.n; k++) {
        int64_t code = I64(events)[k], row = code >> 2;
        if ((code & 3) == EV_TEXT) {
            if (row < 0 || row >= PyList_GET_SIZE(texts) || !PyBytes_Check(PyList_GET_ITEM(texts, row))) {
                PyErr_SetString(PyExc_ValueError, "encode: no such text");
                goto done;
            }
        } else if (row - base < 0 || row - base >= c->n) {
            PyErr_Format(PyExc_ValueError, "encode: span row %lld is not in the columns", (long long)row);
            goto done;
        }
    }
    if (encoder_claim(&c->busy) < 0) goto done;
    Py_INCREF(texts); /* held while the GIL is let go */
    int err = ENC_OK;
    out->len = 0;
    PyThreadState *ts = PyEval_SaveThread();
    for (Py_ssize_t k = 0; k < events.n && err == ENC_OK; k++) {
        int64_t code = I64(events)[k], row = code >> 2;
        int kind = (int)(code & 3);
        if (k && buf_put(out, ",", 1) < 0) {
            err = ENC_NO_MEMORY;
            break;
        }
        if (kind == EV_TEXT) {
            PyEval_RestoreThread(ts);
            PyObject *t = PyList_GET_ITEM(texts, row);
            if (buf_put(out, PyBytes_AS_STRING(t), PyBytes_GET_SIZE(t)) < 0) err = ENC_NO_MEMORY;
            ts = PyEval_SaveThread();
            continue;
        }
        Py_ssize_t i = (Py_ssize_t)(row - base);
        if (U8(c->slow)[I32(c->attr)[i]] && kind != EV_B) { /* its args are in the dict */
            PyEval_RestoreThread(ts);
            if (put_span_event(out, c, i, kind) < 0) err = PyErr_Occurred() ? ENC_SET : ENC_NO_MEMORY;
            ts = PyEval_SaveThread();
        } else if (put_span_event(out, c, i, kind) < 0) {
            err = ENC_NO_MEMORY;
        }
        spans += kind != EV_E;
    }
    PyEval_RestoreThread(ts);
    c->busy = 0;
    Py_DECREF(texts);
    if (err == ENC_NO_MEMORY) PyErr_NoMemory();
    if (err == ENC_OK) {
        PyObject *data = PyBytes_FromStringAndSize(out->data ? out->data : "", out->len);
        if (data != NULL) result = Py_BuildValue("(Nn)", data, spans);
    }
done:
    arr_release(&events);
    return result;
}

static PyMethodDef spans_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))spans_encode, METH_FASTCALL,
     "encode($self, events, texts, row_base, /)\n--\n\n"
     "(the JSON of events (row * 4 + kind; kind 3: texts[row] as it is), comma-separated, and the\n"
     "number of spans they begin). Their span rows less row_base are positions in these columns."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpansType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron.export._cperfetto.Spans",
    .tp_basicsize = sizeof(SpansObject),
    .tp_dealloc = spans_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The columns of a run of a session's spans that trace events are written from.",
    .tp_methods = spans_methods,
    .tp_new = spans_new,
};

/* ------------------------------------------------------------------ mark events */

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    Texts name, value;
    Times ts;
    Arr pid, plain; /* int32 process; uint8 whether the mark is a plain counter */
    PyObject *exact; /* dict: position -> the event's bytes, or None for no event */
    Buf out;
    int busy;        /* an encode is writing into out (without the GIL) */
} MarksObject;

static void marks_dealloc(PyObject *self) {
    MarksObject *c = (MarksObject *)self;
    texts_release(&c->name);
    times_release(&c->ts);
    texts_release(&c->value);
    arr_release(&c->pid);
    arr_release(&c->plain);
    Py_XDECREF(c->exact);
    buf_free(&c->out);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *marks_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *name_off, *names, *pid, *ts, *values, *plain, *exact;
    static char *kwlist[] = {"name_off", "names", "pid", "ts", "values", "plain", "exact", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOO!:Marks", kwlist, &name_off, &names, &pid, &ts, &values,
                                     &plain, &PyDict_Type, &exact))
        return NULL;
    MarksObject *c = (MarksObject *)type->tp_alloc(type, 0);
    if (c == NULL) return NULL;
    c->exact = Py_NewRef(exact);
    if (arr_get(pid, &c->pid, 4, "pid") < 0 || arr_get(plain, &c->plain, 1, "plain") < 0) goto fail;
    Py_ssize_t n = c->n = c->pid.n;
    if (c->plain.n != n) {
        PyErr_SetString(PyExc_ValueError, "mark columns of different lengths");
        goto fail;
    }
    if (texts_get(name_off, names, n, &c->name, "names") < 0 || times_get(ts, n, &c->ts, "ts") < 0 ||
        texts_of_list(values, n, &c->value, "values") < 0)
        goto fail;
    return (PyObject *)c;
fail:
    Py_DECREF(c);
    return NULL;
}

static PyObject *marks_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    MarksObject *c = (MarksObject *)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode(a, b)");
        return NULL;
    }
    Py_ssize_t a = PyLong_AsSsize_t(args[0]), b = PyLong_AsSsize_t(args[1]);
    if ((a == -1 || b == -1) && PyErr_Occurred()) return NULL;
    if (a < 0 || b < a || b > c->n) {
        PyErr_SetString(PyExc_ValueError, "encode: marks out of range");
        return NULL;
    }
    if (encoder_claim(&c->busy) < 0) return NULL;
    Buf *out = &c->out;
    out->len = 0;
    int err = ENC_OK;
    PyThreadState *ts = PyEval_SaveThread();
    for (Py_ssize_t i = a; i < b && err == ENC_OK; i++) {
        if (!U8(c->plain)[i]) { /* the per-record event, or none */
            PyEval_RestoreThread(ts);
            PyObject *key = PyLong_FromSsize_t(i);
            PyObject *text = key == NULL ? NULL : PyDict_GetItemWithError(c->exact, key);
            Py_XDECREF(key);
            if (text == NULL && PyErr_Occurred()) {
                err = ENC_SET;
            } else if (text != NULL && text != Py_None) {
                if (!PyBytes_Check(text)) {
                    PyErr_SetString(PyExc_TypeError, "exact mark events must be bytes");
                    err = ENC_SET;
                } else if ((out->len && buf_put(out, ",", 1) < 0) ||
                           buf_put(out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text)) < 0) {
                    err = ENC_NO_MEMORY;
                }
            }
            ts = PyEval_SaveThread();
            continue;
        }
        Py_ssize_t nl, vl;
        const char *nm = text_at(&c->name, i, &nl), *v = text_at(&c->value, i, &vl);
        if (buf_reserve(out, 2 * JT_STR_MAX(nl) + time_room(&c->ts, i) + vl + JT_INT64_MAX + 64) < 0) {
            err = ENC_NO_MEMORY;
            break;
        }
        char *o = out->data + out->len;
        if (out->len) *o++ = ',';
        LIT(o, "{\"ph\":\"C\",\"name\":");
        char *quoted = o;
        o = jt_write_str(o, nm, nl);
        Py_ssize_t ql = o - quoted;
        LIT(o, ",\"pid\":");
        o = jt_write_int64(o, I32(c->pid)[i]);
        LIT(o, ",\"ts\":");
        o = put_time(o, &c->ts, i);
        LIT(o, ",\"args\":{");
        memcpy(o, quoted, ql);
        o += ql;
        *o++ = ':';
        memcpy(o, v, vl);
        o += vl;
        LIT(o, "}}");
        out->len = o - out->data;
    }
    PyEval_RestoreThread(ts);
    c->busy = 0;
    if (err == ENC_NO_MEMORY) PyErr_NoMemory();
    if (err != ENC_OK) return NULL;
    return PyBytes_FromStringAndSize(out->data ? out->data : "", out->len);
}

static PyMethodDef marks_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))marks_encode, METH_FASTCALL,
     "encode($self, a, b, /)\n--\n\n"
     "The events of marks a..b, comma-separated: a plain one's counter event, another's given whole\n"
     "(or none)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MarksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron.export._cperfetto.Marks",
    .tp_basicsize = sizeof(MarksObject),
    .tp_dealloc = marks_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The columns of a session's marks that counter events are written from.",
    .tp_methods = marks_methods,
    .tp_new = marks_new,
};

static PyMethodDef module_methods[] = {
    {"sort_ties", (PyCFunction)(void (*)(void))sort_ties, METH_FASTCALL,
     "sort_ties($module, order, track, start, end, /)\n--\n\n"
     "Rows sorted by thread and start (in order, in place) put longest first, then by row, where\n"
     "those are equal."},
    {"sweep", (PyCFunction)(void (*)(void))sweep, METH_FASTCALL,
     "sweep($module, order, track, start, end, parent, bounds, /)\n--\n\n"
     "The B/E/X events (row * 4 + kind, int64 bytes) of a session's threads in output order, each\n"
     "row's lane (int32 bytes) and the (event position, thread, lane) where each lane opens."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cperfetto", "C encoder of trace events from a session's columns.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__cperfetto(void) {
    if (PyType_Ready(&SpansType) < 0 || PyType_Ready(&MarksType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Spans", (PyObject *)&SpansType) < 0 ||
        PyModule_AddObjectRef(m, "Marks", (PyObject *)&MarksType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
