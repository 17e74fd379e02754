/* The scope's enter and exit in C: the optional fast path of cirron._record.span.
 *
 * `ScopeBase` holds the same fields as the pure-Python `Scope` and does exactly what its
 * `__enter__`/`__exit__` do (span.py is the reference; keep the two in step). Everything rare
 * (re-entering a scope object, an exception inside the scope, a closing in another context)
 * calls back into Python methods that span.py defines on the subclass. Nothing here raises into
 * the caller: a failure of cirron's own goes to `Recorder.note_internal_error`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "../_u128.h"
#include "../_row.h"

/* Every object field of a scope, for the declaration, GC traversal and clearing. */
#define SCOPE_FIELDS(X) X(rec) X(name) X(attrs) X(index) X(id) X(parent) X(start_ns) X(end_ns) X(cpu_ns) \
    X(thread_id) X(token) X(cpu0) X(outer) X(more)

typedef struct {
    PyObject_HEAD
#define DECLARE(f) PyObject *f;
    SCOPE_FIELDS(DECLARE)
#undef DECLARE
} ScopeObject;

static PyTypeObject ScopeBase_Type;
static PyTypeObject RecorderBase_Type;

/* The fields of cirron._record.span.Recorder that enter and exit read on every call. */
typedef struct {
    PyObject_HEAD
    PyObject *current, *open, *root, *local, *buffers;
    PyObject *dict;
    /* The buffer of the thread that recorded last, so that the next record from the same thread
     * skips the thread-local lookup: the thread state's unique id, the ThreadBuffer, its
     * spans.append, its thread_id and its span_capacity (both fixed when a buffer is made).
     * Emptied by forget_thread() after a fork. */
    uint64_t cached_thread;
    PyObject *cached_tb, *cached_append, *cached_tid, *cached_spans;
    Py_ssize_t cached_capacity;
    /* Set by `ci.profile(enabled=False)` / CIRRON_ENABLED=0: mark() records nothing. */
    char disabled;
} RecorderObject;

#define REC(o) ((RecorderObject *)(o))

static int cache_thread(RecorderObject *rec);

/* Set once by span.py (`configure`): the process's id source (its `ids` attribute is replaced
 * after a fork), the mark value coercion for values that are not float/int/bool, and the error
 * raised for a bad mark kind. */
static PyObject *id_source = NULL, *coerce_mark_value = NULL, *mark_type_error = NULL;
/* The Scope class (ScopeBase + span.py's methods) that start_span makes. */
static PyTypeObject *scope_type = NULL;

static PyObject *s_ids, *s_tb, *s_new_thread_buffer, *s_marks, *s_mark_capacity, *s_marks_dropped, *s_popleft;
static PyObject *s_thread_id, *s_kind, *s_point, *s_summary;
static PyObject *s_spans, *s_span_capacity, *s_spans_dropped, *s_append, *s_gpu_ns, *s_memory_peak_bytes;
static PyObject *s_note_internal_error, *s_reenter, *s_note_exception, *s_id, *s_exit;

#define IS_NONE(x) ((x) == NULL || (x) == Py_None)

/* PyLong_AsLongLong, minus its detour: for an int of more than one digit (any clock reading in ns)
 * PyLong_AsLongLongAndOverflow is the cheaper public call. */
static inline long long as_long_long(PyObject *v) {
    int overflow = 0;
    if (!PyLong_Check(v)) return PyLong_AsLongLong(v); /* __index__, None's TypeError */
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "int too big to convert");
        return -1;
    }
    return x;
}

static inline long long clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- Row: a record outside the cyclic GC (see _row.h) ---- */

static PyTypeObject Row_Type;

/* A row of `n` fields; a NULL field is stored as None. */
static PyObject *row_new(PyObject *const *items, Py_ssize_t n) {
    RowObject *row = PyObject_NewVar(RowObject, &Row_Type, n);
    if (row == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) row->item[i] = Py_NewRef(items[i] ? items[i] : Py_None);
    return (PyObject *)row;
}

static void Row_dealloc(RowObject *self) {
    for (Py_ssize_t i = 0; i < Py_SIZE(self); i++) Py_XDECREF(self->item[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *row_as_tuple(RowObject *self) {
    PyObject *t = PyTuple_New(Py_SIZE(self));
    if (t == NULL) return NULL;
    for (Py_ssize_t i = 0; i < Py_SIZE(self); i++) PyTuple_SET_ITEM(t, i, Py_NewRef(self->item[i]));
    return t;
}

static PyObject *Row_new(PyTypeObject *Py_UNUSED(type), PyObject *args, PyObject *kwds) {
    PyObject *iterable;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || !PyArg_ParseTuple(args, "O:Row", &iterable)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "Row() takes one iterable");
        return NULL;
    }
    PyObject *t = PySequence_Tuple(iterable);
    if (t == NULL) return NULL;
    PyObject *row = row_new(&PyTuple_GET_ITEM(t, 0), PyTuple_GET_SIZE(t));
    Py_DECREF(t);
    return row;
}

static Py_ssize_t Row_length(RowObject *self) { return Py_SIZE(self); }

static PyObject *Row_item(RowObject *self, Py_ssize_t i) {
    if (i < 0 || i >= Py_SIZE(self)) {
        PyErr_SetString(PyExc_IndexError, "row index out of range");
        return NULL;
    }
    return Py_NewRef(self->item[i]);
}

static PyObject *Row_subscript(RowObject *self, PyObject *key) {
    if (PyIndex_Check(key)) {
        Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
        if (i == -1 && PyErr_Occurred()) return NULL;
        return Row_item(self, i < 0 ? i + Py_SIZE(self) : i);
    }
    PyObject *t = row_as_tuple(self);
    if (t == NULL) return NULL;
    PyObject *out = PyObject_GetItem(t, key);
    Py_DECREF(t);
    return out;
}

/* Compared, hashed and shown as the tuple of its fields. */
static PyObject *as_tuple_or_none(PyObject *o) {
    if (Py_IS_TYPE(o, &Row_Type)) return row_as_tuple((RowObject *)o);
    if (PyTuple_Check(o)) return Py_NewRef(o);
    return NULL;
}

static PyObject *Row_richcompare(PyObject *a, PyObject *b, int op) {
    PyObject *ta = as_tuple_or_none(a), *tb = ta ? as_tuple_or_none(b) : NULL;
    PyObject *out = NULL;
    if (ta != NULL && tb != NULL) out = PyObject_RichCompare(ta, tb, op);
    else if (!PyErr_Occurred()) out = Py_NewRef(Py_NotImplemented);
    Py_XDECREF(ta); Py_XDECREF(tb);
    return out;
}

static Py_hash_t Row_hash(RowObject *self) {
    PyObject *t = row_as_tuple(self);
    if (t == NULL) return -1;
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *Row_repr(RowObject *self) {
    PyObject *t = row_as_tuple(self);
    if (t == NULL) return NULL;
    PyObject *out = PyUnicode_FromFormat("Row%R", t);
    Py_DECREF(t);
    return out;
}

static PyObject *Row_reduce(RowObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *t = row_as_tuple(self);
    if (t == NULL) return NULL;
    return Py_BuildValue("(O(N))", (PyObject *)&Row_Type, t);
}

static PySequenceMethods Row_as_sequence = {
    .sq_length = (lenfunc)Row_length,
    .sq_item = (ssizeargfunc)Row_item,
};

static PyMappingMethods Row_as_mapping = {
    .mp_length = (lenfunc)Row_length,
    .mp_subscript = (binaryfunc)Row_subscript,
};

static PyMethodDef Row_methods[] = {
    {"__reduce__", (PyCFunction)Row_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Row_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.Row",
    .tp_doc = "Row(iterable): the fields of one buffered record, read like a tuple. Not tracked by the "
              "cyclic GC, so buffering many of them sets off no garbage collections.",
    .tp_basicsize = sizeof(RowObject) - sizeof(PyObject *),
    .tp_itemsize = sizeof(PyObject *),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Row_new,
    .tp_dealloc = (destructor)Row_dealloc,
    .tp_free = PyObject_Free,
    .tp_as_sequence = &Row_as_sequence,
    .tp_as_mapping = &Row_as_mapping,
    .tp_richcompare = Row_richcompare,
    .tp_hash = (hashfunc)Row_hash,
    .tp_repr = (reprfunc)Row_repr,
    .tp_methods = Row_methods,
};

/* ---- Attrs: a closed record's attributes, frozen outside the cyclic GC ---- */

/* A span's or mark's attrs dict is a GC allocation; buffered with its record until the next
 * flush (and kept for ci.trace() after), each one would count towards the next collection, and
 * at a few thousand records a second set off collections of the user's heap, now and then a full
 * one. When the dict holds only str keys and plain values (None, bool, int, float, str) it cannot
 * be part of a cycle, so the record keeps a frozen copy outside the GC instead: the key/value
 * pairs in a row-shaped object that reads like a read-only dict. Anything else stays a dict. */
static PyTypeObject Attrs_Type;

static inline int is_plain_attr(PyObject *key, PyObject *value) {
    return PyUnicode_CheckExact(key) && (value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value) ||
                                         PyFloat_CheckExact(value) || PyBool_Check(value));
}

/* What a record keeps of `attrs` (new reference): None for none, a frozen Attrs for a plain dict,
 * the object itself otherwise. One pass: the copy is dropped at the first value that is not plain. */
static PyObject *freeze_attrs(PyObject *attrs) {
    if (IS_NONE(attrs) || (PyDict_CheckExact(attrs) && PyDict_GET_SIZE(attrs) == 0)) return Py_NewRef(Py_None);
    if (!PyDict_CheckExact(attrs)) return Py_NewRef(attrs);
    Py_ssize_t pos = 0, i = 0;
    RowObject *frozen = PyObject_NewVar(RowObject, &Attrs_Type, 2 * PyDict_GET_SIZE(attrs));
    if (frozen == NULL) return NULL;
    PyObject *key, *value;
    while (i < Py_SIZE(frozen) && PyDict_Next(attrs, &pos, &key, &value)) {
        if (!is_plain_attr(key, value)) break;
        frozen->item[i++] = Py_NewRef(key);
        frozen->item[i++] = Py_NewRef(value);
    }
    int complete = i == Py_SIZE(frozen);
    Py_SET_SIZE(frozen, i); /* what Row_dealloc releases */
    if (complete) return (PyObject *)frozen;
    Py_DECREF(frozen);
    return Py_NewRef(attrs);
}

static PyObject *attrs_as_dict(RowObject *self) {
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    for (Py_ssize_t i = 0; i + 1 < Py_SIZE(self); i += 2) {
        if (PyDict_SetItem(d, self->item[i], self->item[i + 1]) < 0) {
            Py_DECREF(d);
            return NULL;
        }
    }
    return d;
}

/* The value for `key`, a borrowed reference; NULL (no exception set) when absent. */
static PyObject *attrs_find(RowObject *self, PyObject *key, int *failed) {
    *failed = 0;
    for (Py_ssize_t i = 0; i + 1 < Py_SIZE(self); i += 2) {
        int eq = self->item[i] == key ? 1 : PyObject_RichCompareBool(self->item[i], key, Py_EQ);
        if (eq < 0) {
            *failed = 1;
            return NULL;
        }
        if (eq) return self->item[i + 1];
    }
    return NULL;
}

static Py_ssize_t Attrs_length(RowObject *self) { return Py_SIZE(self) / 2; }

static PyObject *Attrs_subscript(RowObject *self, PyObject *key) {
    int failed;
    PyObject *v = attrs_find(self, key, &failed);
    if (v != NULL) return Py_NewRef(v);
    if (!failed) PyErr_SetObject(PyExc_KeyError, key);
    return NULL;
}

static int Attrs_contains(RowObject *self, PyObject *key) {
    int failed;
    PyObject *v = attrs_find(self, key, &failed);
    return failed ? -1 : v != NULL;
}

static PyObject *Attrs_get(RowObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get() takes a key and an optional default");
        return NULL;
    }
    int failed;
    PyObject *v = attrs_find(self, args[0], &failed);
    if (failed) return NULL;
    return Py_NewRef(v != NULL ? v : nargs == 2 ? args[1] : Py_None);
}

/* keys(), values(), items(), copy(), iteration, ==, repr and pickling go through a plain dict. */
static PyObject *attrs_dict_call(RowObject *self, const char *method) {
    PyObject *d = attrs_as_dict(self);
    if (d == NULL) return NULL;
    PyObject *out = method ? PyObject_CallMethod(d, method, NULL) : PyObject_GetIter(d);
    Py_DECREF(d);
    return out;
}

static PyObject *Attrs_keys(RowObject *self, PyObject *Py_UNUSED(x)) { return attrs_dict_call(self, "keys"); }
static PyObject *Attrs_values(RowObject *self, PyObject *Py_UNUSED(x)) { return attrs_dict_call(self, "values"); }
static PyObject *Attrs_items(RowObject *self, PyObject *Py_UNUSED(x)) { return attrs_dict_call(self, "items"); }
static PyObject *Attrs_copy(RowObject *self, PyObject *Py_UNUSED(x)) { return attrs_as_dict(self); }
static PyObject *Attrs_iter(RowObject *self) { return attrs_dict_call(self, NULL); }

static PyObject *Attrs_richcompare(PyObject *a, PyObject *b, int op) {
    if ((op != Py_EQ && op != Py_NE) || !(PyDict_Check(b) || Py_IS_TYPE(b, &Attrs_Type)))
        Py_RETURN_NOTIMPLEMENTED;
    PyObject *da = attrs_as_dict((RowObject *)a);
    PyObject *db = da == NULL ? NULL : Py_IS_TYPE(b, &Attrs_Type) ? attrs_as_dict((RowObject *)b) : Py_NewRef(b);
    PyObject *out = db == NULL ? NULL : PyObject_RichCompare(da, db, op);
    Py_XDECREF(da); Py_XDECREF(db);
    return out;
}

static PyObject *Attrs_repr(RowObject *self) {
    PyObject *d = attrs_as_dict(self);
    if (d == NULL) return NULL;
    PyObject *out = PyUnicode_FromFormat("Attrs(%R)", d);
    Py_DECREF(d);
    return out;
}

static PyObject *Attrs_reduce(RowObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *d = attrs_as_dict(self);
    if (d == NULL) return NULL;
    return Py_BuildValue("(O(N))", (PyObject *)&PyDict_Type, d);
}

static PySequenceMethods Attrs_as_sequence = {
    .sq_contains = (objobjproc)Attrs_contains,
};

static PyMappingMethods Attrs_as_mapping = {
    .mp_length = (lenfunc)Attrs_length,
    .mp_subscript = (binaryfunc)Attrs_subscript,
};

static PyMethodDef Attrs_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Attrs_get, METH_FASTCALL, NULL},
    {"keys", (PyCFunction)Attrs_keys, METH_NOARGS, NULL},
    {"values", (PyCFunction)Attrs_values, METH_NOARGS, NULL},
    {"items", (PyCFunction)Attrs_items, METH_NOARGS, NULL},
    {"copy", (PyCFunction)Attrs_copy, METH_NOARGS, NULL},
    {"__reduce__", (PyCFunction)Attrs_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Attrs_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.Attrs",
    .tp_doc = "The attributes of a buffered record: a read-only mapping of str keys to plain values, "
              "not tracked by the cyclic GC. copy() gives a dict.",
    .tp_basicsize = sizeof(RowObject) - sizeof(PyObject *),
    .tp_itemsize = sizeof(PyObject *),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Row_dealloc,
    .tp_free = PyObject_Free,
    .tp_as_sequence = &Attrs_as_sequence,
    .tp_as_mapping = &Attrs_as_mapping,
    .tp_iter = (getiterfunc)Attrs_iter,
    .tp_richcompare = Attrs_richcompare,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_repr = (reprfunc)Attrs_repr,
    .tp_methods = Attrs_methods,
};

/* Hand the pending exception to rec.note_internal_error and clear it. */
static void note_internal_error(PyObject *rec) {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) return;
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *r = PyObject_CallMethodOneArg(rec, s_note_internal_error, value ? value : Py_None);
    Py_XDECREF(r);
    PyErr_Clear();
    Py_XDECREF(type); Py_XDECREF(value); Py_XDECREF(tb);
}

static int Scope_init(ScopeObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"rec", "name", "attrs", "index", NULL};
    PyObject *rec, *name, *attrs, *index = Py_None;
    if (kwds == NULL && (PyTuple_GET_SIZE(args) == 3 || PyTuple_GET_SIZE(args) == 4)) {
        rec = PyTuple_GET_ITEM(args, 0);
        name = PyTuple_GET_ITEM(args, 1);
        attrs = PyTuple_GET_ITEM(args, 2);
        if (PyTuple_GET_SIZE(args) == 4) index = PyTuple_GET_ITEM(args, 3);
    } else if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|O", kwlist, &rec, &name, &attrs, &index)) {
        return -1;
    }
    if (!PyObject_TypeCheck(rec, &RecorderBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "a compiled scope needs a compiled recorder (RecorderBase)");
        return -1;
    }
    Py_XSETREF(self->rec, Py_NewRef(rec));
    Py_XSETREF(self->name, Py_NewRef(name));
    Py_XSETREF(self->attrs, Py_NewRef(attrs));
    Py_XSETREF(self->index, Py_NewRef(index));
    return 0;
}

static int Scope_traverse(ScopeObject *self, visitproc visit, void *arg) {
#define VISIT(f) Py_VISIT(self->f);
    SCOPE_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int Scope_clear(ScopeObject *self) {
#define CLEAR(f) Py_CLEAR(self->f);
    SCOPE_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void Scope_dealloc(ScopeObject *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Scope_clear(self);
    tp->tp_free((PyObject *)self);  /* a heap subclass's own dealloc drops its type reference */
}

static PyObject *Scope_enter(ScopeObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!IS_NONE(self->id)) /* entered before: span.py records the new entry separately */
        return PyObject_CallMethodNoArgs((PyObject *)self, s_reenter);
    PyObject *rec = self->rec, *cur = NULL, *parent = NULL, *ids = NULL, *sid = NULL, *open = NULL;
    cur = Py_XNewRef(REC(rec)->current);
    if (cur == NULL) goto missing;
    if (PyContextVar_Get(cur, NULL, &parent) < 0) goto error;
    if (IS_NONE(parent)) {
        Py_XDECREF(parent);
        parent = Py_NewRef(REC(rec)->root ? REC(rec)->root : Py_None);
    }
    Py_XSETREF(self->parent, parent);
    parent = NULL;
    if (id_source == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cscope.configure() was not called");
        goto error;
    }
    ids = PyObject_GetAttr(id_source, s_ids);
    if (ids == NULL) goto error;
    sid = PyIter_Next(ids);
    if (sid == NULL) goto error;
    Py_XSETREF(self->id, Py_NewRef(sid));
    if (cache_thread(REC(rec)) < 0) goto error;
    Py_XSETREF(self->thread_id, Py_NewRef(REC(rec)->cached_tid));
    PyObject *token = PyContextVar_Set(cur, (PyObject *)self);
    if (token == NULL) goto error;
    Py_XSETREF(self->token, token);
    open = Py_XNewRef(REC(rec)->open);
    if (open == NULL) goto missing;
    if (PyObject_SetItem(open, sid, (PyObject *)self) < 0) goto error;
    goto done;
missing:
    PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
error:
    note_internal_error(rec);
done:
    Py_XDECREF(cur); Py_XDECREF(parent); Py_XDECREF(ids); Py_XDECREF(sid); Py_XDECREF(open);
    Py_XSETREF(self->start_ns, PyLong_FromLongLong(clock_ns(CLOCK_REALTIME)));
    Py_XSETREF(self->cpu0, PyLong_FromLongLong(clock_ns(CLOCK_THREAD_CPUTIME_ID)));
    if (self->start_ns == NULL || self->cpu0 == NULL) {
        note_internal_error(rec);
    }
    return Py_NewRef(self);
}

/* The span's id as stored in a record: 0 for no parent. */
static PyObject *parent_id(PyObject *parent) {
    if (parent == NULL || parent == Py_None) return PyLong_FromLong(0);
    if (PyObject_TypeCheck(parent, &ScopeBase_Type)) {
        PyObject *pid = ((ScopeObject *)parent)->id;
        return Py_NewRef(pid ? pid : Py_None);
    }
    return PyObject_GetAttr(parent, s_id);
}

static PyObject *more_get(PyObject *more, PyObject *key) {
    if (more == NULL || !PyDict_Check(more)) return Py_NewRef(Py_None);
    PyObject *v = PyDict_GetItemWithError(more, key);
    if (v == NULL) {
        if (PyErr_Occurred()) return NULL;
        v = Py_None;
    }
    return Py_NewRef(v);
}

/* This thread's buffer (a new reference), made on first use: `rec.local.tb`. */
static PyObject *thread_buffer(PyObject *rec) {
    PyObject *local = REC(rec)->local, *buffers = REC(rec)->buffers;
    if (local == NULL || buffers == NULL) {
        PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
        return NULL;
    }
    PyObject *tb = PyObject_GetAttr(local, s_tb);
    if (tb == NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        tb = PyObject_CallMethodNoArgs(buffers, s_new_thread_buffer);
    }
    return tb;
}

/* Add one to an int attribute (a drop counter). */
static int bump(PyObject *obj, PyObject *attr) {
    PyObject *n = PyObject_GetAttr(obj, attr);
    if (n == NULL) return -1;
    PyObject *one = PyLong_FromLong(1);
    PyObject *r = one ? PyNumber_Add(n, one) : NULL;
    Py_XDECREF(one);
    Py_DECREF(n);
    int rc = r ? PyObject_SetAttr(obj, attr, r) : -1;
    Py_XDECREF(r);
    return rc;
}

static void forget_thread(RecorderObject *rec) {
    rec->cached_thread = 0;
    Py_CLEAR(rec->cached_tb); Py_CLEAR(rec->cached_append); Py_CLEAR(rec->cached_tid); Py_CLEAR(rec->cached_spans);
}

/* Point the recorder's cache at this thread's buffer (see RecorderObject); -1 on error. */
static int cache_thread(RecorderObject *rec) {
    uint64_t me = PyThreadState_GetID(PyThreadState_Get());
    if (rec->cached_tb != NULL && rec->cached_thread == me) return 0;
    PyObject *tb = thread_buffer((PyObject *)rec);
    if (tb == NULL) return -1;
    PyObject *spans = PyObject_GetAttr(tb, s_spans);
    PyObject *append = spans ? PyObject_GetAttr(spans, s_append) : NULL;
    PyObject *tid = append ? PyObject_GetAttr(tb, s_thread_id) : NULL;
    PyObject *cap = tid ? PyObject_GetAttr(tb, s_span_capacity) : NULL;
    Py_ssize_t limit = cap ? PyLong_AsSsize_t(cap) : -1;
    Py_XDECREF(cap);
    if (cap == NULL || (limit == -1 && PyErr_Occurred())) {
        Py_DECREF(tb); Py_XDECREF(spans); Py_XDECREF(append); Py_XDECREF(tid);
        return -1;
    }
    forget_thread(rec);
    rec->cached_tb = tb;
    rec->cached_spans = spans;
    rec->cached_append = append;
    rec->cached_tid = tid;
    rec->cached_capacity = limit;
    rec->cached_thread = me;
    return 0;
}

/* Append a closed record to this thread's buffer, or count it as dropped when the buffer is full. */
static int buffer_append(PyObject *rec, PyObject *record) {
    RecorderObject *r = REC(rec);
    if (cache_thread(r) < 0) return -1;
    Py_ssize_t n = PyObject_Size(r->cached_spans);
    if (n < 0) return -1;
    if (n >= r->cached_capacity) return bump(r->cached_tb, s_spans_dropped);
    PyObject *res = PyObject_CallOneArg(r->cached_append, record);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* __exit__(exc_type, exc, tb, cpu1=None, end=None): cpu1/end are only passed by finish(). */
static PyObject *Scope_exit(ScopeObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* A `with` block reads the clocks here, first thing; finish() passes readings it took. */
    int given_cpu = nargs >= 4 && args[3] != Py_None, given_end = nargs >= 5 && args[4] != Py_None;
    long long cpu1 = given_cpu ? 0 : clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long long end = given_end ? 0 : clock_ns(CLOCK_REALTIME);
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 to 5 arguments");
        return NULL;
    }
    PyObject *exc = args[1];
    PyObject *end_obj = NULL;
    if (given_cpu) {
        cpu1 = as_long_long(args[3]);
        if (cpu1 == -1 && PyErr_Occurred()) return NULL;
    }
    if (given_end) end_obj = Py_NewRef(args[4]);
    if (!IS_NONE(self->outer)) { /* leaving the latest re-entry of a reused scope object */
        PyObject *inner = Py_NewRef(self->outer);
        PyObject *next = PyObject_TypeCheck(inner, &ScopeBase_Type) ? ((ScopeObject *)inner)->outer : NULL;
        Py_XSETREF(self->outer, Py_XNewRef(next));
        PyObject *r = PyObject_VectorcallMethod(s_exit, (PyObject *[]){inner, args[0], args[1], args[2]},
                                                4, NULL);
        Py_DECREF(inner);
        Py_XDECREF(end_obj);
        return r;
    }
    if (IS_NONE(self->id) || !IS_NONE(self->end_ns)) {
        Py_XDECREF(end_obj);
        Py_RETURN_NONE;
    }
    if (end_obj == NULL) {
        end_obj = PyLong_FromLongLong(end);
        if (end_obj == NULL) return NULL;
    }
    PyObject *rec = self->rec;
    Py_INCREF(rec);
    PyObject *cur = NULL, *open = NULL, *record = NULL, *pid = NULL, *gpu = NULL, *mem = NULL, *cpu = NULL;
    PyObject *sid = NULL, *attrs = NULL;
    if (!IS_NONE(self->token)) {
        PyObject *token = self->token;
        self->token = Py_NewRef(Py_None);
        cur = Py_XNewRef(REC(rec)->current);
        if (cur == NULL) {
            Py_DECREF(token);
            PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
            goto error;
        }
        int reset = PyContextVar_Reset(cur, token);
        Py_DECREF(token);
        if (reset < 0) {
            if (!PyErr_ExceptionMatches(PyExc_ValueError)) goto error;
            /* Closed in another context than it was opened in: put the parent back. */
            PyErr_Clear();
            PyObject *root = REC(rec)->root ? REC(rec)->root : Py_None;
            PyObject *parent = self->parent ? self->parent : Py_None;
            PyObject *t = PyContextVar_Set(cur, parent == root ? Py_None : parent);
            if (t == NULL) goto error;
            Py_DECREF(t);
        }
    }
    if (!IS_NONE(exc)) {
        PyObject *r = PyObject_CallMethodOneArg((PyObject *)self, s_note_exception, exc);
        if (r == NULL) goto error;
        Py_DECREF(r);
    }
    sid = Py_NewRef(self->id);
    open = Py_XNewRef(REC(rec)->open);
    if (open != NULL && PyDict_Check(open)) {
        PyObject *was = PyDict_GetItemWithError(open, sid);
        if (was == NULL) {
            if (PyErr_Occurred()) goto error;
            /* Not one of ours: a span inherited from the parent process across fork(). */
            Py_XSETREF(self->end_ns, Py_NewRef(end_obj));
            goto done;
        }
        if (PyDict_DelItem(open, sid) < 0) goto error;
    } else {
        PyErr_SetString(PyExc_TypeError, "Recorder.open is not a dict");
        goto error;
    }
    long long cpu0 = as_long_long(self->cpu0 ? self->cpu0 : Py_None);
    if (cpu0 == -1 && PyErr_Occurred()) goto error;
    cpu = PyLong_FromLongLong(cpu1 - cpu0);
    pid = parent_id(self->parent);
    gpu = more_get(self->more, s_gpu_ns);
    mem = more_get(self->more, s_memory_peak_bytes);
    if (cpu == NULL || pid == NULL || gpu == NULL || mem == NULL) goto error;
    if ((attrs = freeze_attrs(self->attrs)) == NULL) goto error;
    record = row_new((PyObject *[]){sid, pid, self->name, self->index, self->start_ns, end_obj, cpu, gpu, mem,
                                    self->thread_id, attrs}, 11);
    if (record == NULL) goto error;
    if (buffer_append(rec, record) < 0) goto error;
    Py_XSETREF(self->cpu_ns, Py_NewRef(cpu));
    Py_XSETREF(self->end_ns, Py_NewRef(end_obj));
    goto done;
error:
    note_internal_error(rec);
done:
    Py_XDECREF(cur); Py_XDECREF(open); Py_XDECREF(record); Py_XDECREF(pid); Py_XDECREF(gpu);
    Py_XDECREF(mem); Py_XDECREF(cpu); Py_XDECREF(sid); Py_XDECREF(end_obj); Py_XDECREF(attrs);
    Py_DECREF(rec);
    Py_RETURN_NONE;
}

static PyMethodDef Scope_methods[] = {
    {"__enter__", (PyCFunction)Scope_enter, METH_NOARGS, "__enter__($self, /)\n--\n\nOpen the span and make it current."},
    {"__exit__", (PyCFunction)(void (*)(void))Scope_exit, METH_FASTCALL,
     "__exit__($self, exc_type, exc, tb, cpu1=None, end=None, /)\n--\n\nClose the span and record it."},
    {NULL, NULL, 0, NULL},
};

#define FIELD(name, member) {name, T_OBJECT, offsetof(ScopeObject, member), 0, NULL}
static PyMemberDef Scope_members[] = {
    FIELD("_rec", rec), FIELD("name", name), FIELD("attrs", attrs), FIELD("index", index), FIELD("id", id),
    FIELD("parent", parent), FIELD("start_ns", start_ns), FIELD("end_ns", end_ns), FIELD("cpu_ns", cpu_ns),
    FIELD("thread_id", thread_id), FIELD("_token", token), FIELD("_cpu0", cpu0), FIELD("_outer", outer),
    FIELD("_more", more),
    {NULL, 0, 0, 0, NULL},
};
#undef FIELD

static PyTypeObject ScopeBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.ScopeBase",
    .tp_basicsize = sizeof(ScopeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Storage and enter/exit of a scope; cirron._record.span.Scope adds the rest.",
    .tp_traverse = (traverseproc)Scope_traverse,
    .tp_clear = (inquiry)Scope_clear,
    .tp_dealloc = (destructor)Scope_dealloc,
    .tp_methods = Scope_methods,
    .tp_members = Scope_members,
    .tp_init = (initproc)Scope_init,
    .tp_new = PyType_GenericNew,
};

/* -- RecorderBase: Recorder's hot fields as C slots (the rest of it lives in its __dict__) -- */

static int Recorder_traverse(RecorderObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->current); Py_VISIT(self->open); Py_VISIT(self->root); Py_VISIT(self->local);
    Py_VISIT(self->buffers); Py_VISIT(self->dict); Py_VISIT(self->cached_tb); Py_VISIT(self->cached_append);
    Py_VISIT(self->cached_tid); Py_VISIT(self->cached_spans);
    return 0;
}

static int Recorder_clear(RecorderObject *self) {
    Py_CLEAR(self->current); Py_CLEAR(self->open); Py_CLEAR(self->root); Py_CLEAR(self->local);
    Py_CLEAR(self->buffers); Py_CLEAR(self->dict);
    forget_thread(self);
    return 0;
}

static void Recorder_dealloc(RecorderObject *self) {
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Recorder.mark(name, value, *, kind="point", **attrs): span.py's Recorder.mark, in C. */
static PyObject *Recorder_mark(PyObject *rec, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *name = nargs > 0 ? args[0] : NULL, *value = nargs > 1 ? args[1] : NULL, *kind = s_point;
    PyObject *attrs = NULL, *result = NULL;
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "mark() takes 2 positional arguments but %zd were given", nargs);
        return NULL;
    }
    if (REC(rec)->disabled) Py_RETURN_NONE;
    if (coerce_mark_value == NULL || mark_type_error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cscope.configure() was not called");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
        if (PyUnicode_Compare(key, s_kind) == 0) kind = v;
        else {  /* name and value are positional-only: a keyword of either name is an attribute */
            if (attrs == NULL && (attrs = PyDict_New()) == NULL) return NULL;
            if (PyDict_SetItem(attrs, key, v) < 0) goto out;
        }
    }
    if (name == NULL || value == NULL) {
        PyErr_Format(PyExc_TypeError, "mark() missing 1 required positional argument: '%s'",
                     name == NULL ? "name" : "value");
        goto out;
    }
    if (PyFloat_CheckExact(value) || PyLong_CheckExact(value) || PyBool_Check(value)) {
        Py_INCREF(value);
    } else if ((value = PyObject_CallOneArg(coerce_mark_value, value)) == NULL) {
        goto out;
    }
    if (!PyUnicode_Check(kind) ||
        (PyUnicode_Compare(kind, s_point) != 0 && PyUnicode_Compare(kind, s_summary) != 0)) {
        if (!PyErr_Occurred()) {
            PyObject *r = PyObject_Repr(kind);
            if (r != NULL) {
                PyErr_Format(mark_type_error, "ci.mark kind must be 'point' or 'summary', not %U", r);
                Py_DECREF(r);
            }
        }
        Py_DECREF(value);
        goto out;
    }
    /* From here on, a failure is cirron's own: counted, never raised. */
    PyObject *tb = NULL, *ring = NULL, *cap = NULL, *span = NULL, *sid = NULL, *ts = NULL, *record = NULL, *r = NULL;
    PyObject *frozen = NULL;
    if (cache_thread(REC(rec)) < 0) goto failed;
    tb = Py_NewRef(REC(rec)->cached_tb);
    if ((ring = PyObject_GetAttr(tb, s_marks)) == NULL || (cap = PyObject_GetAttr(tb, s_mark_capacity)) == NULL)
        goto failed;
    Py_ssize_t n = PyObject_Size(ring), limit = PyLong_AsSsize_t(cap);
    if (n < 0 || (limit == -1 && PyErr_Occurred())) goto failed;
    if (n >= limit && n > 0) {
        PyObject *old = PyObject_CallMethodNoArgs(ring, s_popleft);
        if (old == NULL) goto failed;
        Py_DECREF(old);
        if (bump(tb, s_marks_dropped) < 0) goto failed;
    }
    if (REC(rec)->current == NULL || PyContextVar_Get(REC(rec)->current, NULL, &span) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
        goto failed;
    }
    if (IS_NONE(span)) {
        Py_XDECREF(span);
        span = Py_NewRef(REC(rec)->root ? REC(rec)->root : Py_None);
    }
    if (span == Py_None) sid = PyLong_FromLong(0);
    else if (PyObject_TypeCheck(span, &ScopeBase_Type)) sid = Py_NewRef(((ScopeObject *)span)->id ? ((ScopeObject *)span)->id : Py_None);
    else sid = PyObject_GetAttr(span, s_id);
    if (sid == NULL || (ts = PyLong_FromLongLong(clock_ns(CLOCK_REALTIME))) == NULL) goto failed;
    if ((frozen = freeze_attrs(attrs)) == NULL) goto failed;
    record = row_new((PyObject *[]){sid, name, value, kind, ts, frozen, REC(rec)->cached_tid}, 7);
    if (record == NULL || (r = PyObject_CallMethodOneArg(ring, s_append, record)) == NULL) goto failed;
    goto recorded;
failed:
    note_internal_error(rec);
recorded:
    Py_XDECREF(tb); Py_XDECREF(ring); Py_XDECREF(cap); Py_XDECREF(span); Py_XDECREF(sid); Py_XDECREF(ts);
    Py_XDECREF(record); Py_XDECREF(r); Py_XDECREF(frozen);
    Py_DECREF(value);
    result = Py_NewRef(Py_None);
out:
    Py_XDECREF(attrs);
    return result;
}

/* Recorder.start_span(name, attrs=None, index=None, parent=None): span.py's PyRecorderBase.start_span. */
static PyObject *Recorder_start_span(PyObject *rec, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    static const char *const names[] = {"name", "attrs", "index", "parent"};
    PyObject *values[4] = {NULL, Py_None, Py_None, Py_None};
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf), nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 4) {
        PyErr_Format(PyExc_TypeError, "start_span() takes at most 4 arguments (%zd given)", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) values[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int j = 0;
        while (j < 4 && PyUnicode_CompareWithASCIIString(key, names[j]) != 0) j++;
        if (j == 4 || j < nargs) {
            PyErr_Format(PyExc_TypeError, "start_span() got an unexpected or repeated keyword argument %R", key);
            return NULL;
        }
        values[j] = args[nargs + i];
    }
    if (values[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "start_span() missing 1 required argument: 'name'");
        return NULL;
    }
    if (scope_type == NULL || id_source == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cscope.configure() was not called");
        return NULL;
    }
    RecorderObject *r = REC(rec);
    if (r->open == NULL || cache_thread(r) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
        return NULL;
    }
    PyObject *ids = PyObject_GetAttr(id_source, s_ids);
    PyObject *sid = ids ? PyIter_Next(ids) : NULL;
    Py_XDECREF(ids);
    if (sid == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "the id source is exhausted");
        return NULL;
    }
    ScopeObject *scope = (ScopeObject *)scope_type->tp_alloc(scope_type, 0);
    if (scope == NULL) {
        Py_DECREF(sid);
        return NULL;
    }
    scope->rec = Py_NewRef(rec);
    scope->name = Py_NewRef(values[0]);
    scope->attrs = Py_NewRef(values[1]);
    scope->index = Py_NewRef(values[2]);
    scope->parent = Py_NewRef(values[3]);
    scope->token = Py_NewRef(Py_None);
    scope->id = sid;
    scope->thread_id = Py_NewRef(r->cached_tid);
    if (PyObject_SetItem(r->open, sid, (PyObject *)scope) < 0) {
        Py_DECREF(scope);
        return NULL;
    }
    scope->start_ns = PyLong_FromLongLong(clock_ns(CLOCK_REALTIME));
    scope->cpu0 = PyLong_FromLongLong(clock_ns(CLOCK_THREAD_CPUTIME_ID));
    if (scope->start_ns == NULL || scope->cpu0 == NULL) {
        Py_DECREF(scope);
        return NULL;
    }
    return (PyObject *)scope;
}

static PyObject *Recorder_forget_thread(PyObject *rec, PyObject *Py_UNUSED(ignored)) {
    forget_thread(REC(rec));
    Py_RETURN_NONE;
}

static PyMethodDef Recorder_methods[] = {
    {"start_span", (PyCFunction)(void (*)(void))Recorder_start_span, METH_FASTCALL | METH_KEYWORDS,
     "start_span($self, /, name, attrs=None, index=None, parent=None)\n--\n\n"
     "Open a span without making it current."},
    {"forget_thread", Recorder_forget_thread, METH_NOARGS,
     "forget_thread($self, /)\n--\n\nDrop the cached thread buffer (after a fork, when the buffers were replaced)."},
    {"mark", (PyCFunction)(void (*)(void))Recorder_mark, METH_FASTCALL | METH_KEYWORDS,
     "mark($self, name, value, /, *, kind='point', **attrs)\n--\n\nRecord a value in the current span."},
    {NULL, NULL, 0, NULL},
};

#define RFIELD(name) {#name, T_OBJECT, offsetof(RecorderObject, name), 0, NULL}
static PyMemberDef Recorder_members[] = {
    RFIELD(current), RFIELD(open), RFIELD(root), RFIELD(local), RFIELD(buffers),
    {"disabled", T_BOOL, offsetof(RecorderObject, disabled), 0, "mark() records nothing while set."},
    {NULL, 0, 0, 0, NULL},
};
#undef RFIELD

static PyGetSetDef Recorder_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RecorderBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.RecorderBase",
    .tp_basicsize = sizeof(RecorderObject),
    .tp_dictoffset = offsetof(RecorderObject, dict),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The fields a compiled scope reads: current, open, root, local, buffers.",
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_members = Recorder_members,
    .tp_methods = Recorder_methods,
    .tp_getset = Recorder_getset,
    .tp_new = PyType_GenericNew,
};

/* -- ScopeFactory: `Cirron.scope` as one C call: factory(name, **attrs) -> Scope(rec, name, attrs) -- */

typedef struct {
    PyObject_HEAD
    PyTypeObject *scope_type;
    PyObject *rec;
    vectorcallfunc vectorcall;
    /* span.py's Python scope() (same signature), taken for `gpu=` and whenever `divert` is set
     * (recording disabled, or GPU timing on for every scope). */
    PyObject *slow;
    char divert;
} FactoryObject;

static PyObject *Factory_vectorcall(FactoryObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *name = nargs >= 1 ? args[0] : NULL, *attrs = NULL, *index = Py_None;
    if (self->divert && self->slow != NULL) return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "scope() takes 1 positional argument but %zd were given", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        if (PyUnicode_CompareWithASCIIString(key, "index") == 0) {
            index = value;
            continue;
        }
        if (self->slow != NULL && PyUnicode_CompareWithASCIIString(key, "gpu") == 0) {
            Py_XDECREF(attrs);
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        }
        if (attrs == NULL && (attrs = PyDict_New()) == NULL) return NULL;
        if (PyDict_SetItem(attrs, key, value) < 0) {
            Py_DECREF(attrs);
            return NULL;
        }
    }
    if (name == NULL) {
        Py_XDECREF(attrs);
        PyErr_SetString(PyExc_TypeError, "scope() missing 1 required positional argument: 'name'");
        return NULL;
    }
    ScopeObject *scope = (ScopeObject *)self->scope_type->tp_alloc(self->scope_type, 0);
    if (scope == NULL) {
        Py_XDECREF(attrs);
        return NULL;
    }
    scope->rec = Py_NewRef(self->rec);
    scope->name = Py_NewRef(name);
    scope->attrs = attrs ? attrs : Py_NewRef(Py_None);
    scope->index = Py_NewRef(index);
    return (PyObject *)scope;
}

static PyObject *Factory_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *scope_type, *rec, *slow = NULL;
    if (!PyArg_ParseTuple(args, "O!O!|O:ScopeFactory", &PyType_Type, &scope_type, &RecorderBase_Type, &rec, &slow))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)scope_type, &ScopeBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "ScopeFactory needs a subclass of ScopeBase");
        return NULL;
    }
    FactoryObject *self = (FactoryObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->scope_type = (PyTypeObject *)Py_NewRef(scope_type);
    self->rec = Py_NewRef(rec);
    self->slow = slow == Py_None ? NULL : Py_XNewRef(slow);
    self->vectorcall = (vectorcallfunc)Factory_vectorcall;
    return (PyObject *)self;
}

static int Factory_traverse(FactoryObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->scope_type); Py_VISIT(self->rec); Py_VISIT(self->slow);
    return 0;
}

static int Factory_clear(FactoryObject *self) {
    Py_CLEAR(self->scope_type); Py_CLEAR(self->rec); Py_CLEAR(self->slow);
    return 0;
}

static void Factory_dealloc(FactoryObject *self) {
    PyObject_GC_UnTrack(self);
    Factory_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* inspect.signature(ci.scope): the signature of the Python scope() this factory stands in for. */
static PyObject *Factory_get_signature(FactoryObject *self, void *closure) {
    if (self->slow == NULL) Py_RETURN_NONE;
    PyObject *inspect = PyImport_ImportModule("inspect");
    if (inspect == NULL) return NULL;
    PyObject *sig = PyObject_CallMethod(inspect, "signature", "O", self->slow);
    Py_DECREF(inspect);
    return sig;
}

static PyGetSetDef Factory_getset[] = {
    {"__signature__", (getter)Factory_get_signature, NULL, "The signature of the Python scope().", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Factory_members[] = {
    {"divert", T_BOOL, offsetof(FactoryObject, divert), 0, "Send every call to `slow`."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject Factory_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.ScopeFactory",
    .tp_basicsize = sizeof(FactoryObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "ScopeFactory(scope_type, recorder, slow=None)(name, index=None, **attrs): a new, not yet entered "
              "scope; `gpu=` and a set `divert` call `slow` with the same arguments.",
    .tp_members = Factory_members,
    .tp_getset = Factory_getset,
    .tp_vectorcall_offset = offsetof(FactoryObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_traverse = (traverseproc)Factory_traverse,
    .tp_clear = (inquiry)Factory_clear,
    .tp_dealloc = (destructor)Factory_dealloc,
    .tp_new = Factory_new,
};

static PyObject *configure(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *ids, *coerce, *error, *type;
    if (!PyArg_ParseTuple(args, "OOOO!:configure", &ids, &coerce, &error, &PyType_Type, &type)) return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)type, &ScopeBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure() needs the Scope class, a subclass of ScopeBase");
        return NULL;
    }
    Py_XSETREF(scope_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(id_source, Py_NewRef(ids));
    Py_XSETREF(coerce_mark_value, Py_NewRef(coerce));
    Py_XSETREF(mark_type_error, Py_NewRef(error));
    Py_RETURN_NONE;
}

static PyObject *uuid4_from_raw(unsigned char raw[16]) {
    raw[6] = (unsigned char)((raw[6] & 0x0F) | 0x40);
    raw[8] = (unsigned char)((raw[8] & 0x3F) | 0x80);
    static const char hexd[] = "0123456789abcdef";
    char out[36], *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hexd[raw[i] >> 4];
        *o++ = hexd[raw[i] & 15];
    }
    return PyUnicode_FromStringAndSize(out, 36);
}

/* uuid4_text(bits) -> "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx" from 128 random bits (version 4, RFC 4122 variant). */
static PyObject *uuid4_text(PyObject *Py_UNUSED(module), PyObject *bits) {
    unsigned char raw[16];
    int ok = u128_from_long(bits, raw);
    if (ok < 0) return NULL;
    if (ok == 0) {
        PyErr_SetString(PyLong_Check(bits) ? PyExc_OverflowError : PyExc_TypeError,
                        "uuid4_text() takes a non-negative int of at most 128 bits");
        return NULL;
    }
    return uuid4_from_raw(raw);
}

/* Request ids come from xoshiro256** (Blackman and Vigna), seeded by seed_request_ids() with bytes
 * from os.urandom when the module is set up and again in every forked child: a couple of
 * nanoseconds per id, where random.getrandbits(128) and reading its result back cost ~1,000
 * instructions. Ids only need to be unique, not secret. Used under the GIL. */
static uint64_t rng_state[4] = {0x9E3779B97F4A7C15ULL, 0xBF58476D1CE4E5B9ULL, 0x94D049BB133111EBULL, 1};

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(void) {
    uint64_t *s = rng_state;
    uint64_t out = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

static PyObject *new_request_id(void) {
    unsigned char raw[16];
    for (int half = 0; half < 2; half++) {
        uint64_t v = rng_next();
        for (int i = 7; i >= 0; i--, v >>= 8) raw[8 * half + i] = (unsigned char)v;
    }
    return uuid4_from_raw(raw);
}

/* seed_request_ids(seed: bytes): 32 bytes, not all zero. */
static PyObject *seed_request_ids(PyObject *Py_UNUSED(module), PyObject *seed) {
    if (!PyBytes_Check(seed) || PyBytes_GET_SIZE(seed) != 32) {
        PyErr_SetString(PyExc_ValueError, "seed_request_ids() takes 32 bytes");
        return NULL;
    }
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(seed);
    uint64_t s[4] = {0, 0, 0, 0};
    for (int i = 0; i < 32; i++) s[i / 8] = (s[i / 8] << 8) | b[i];
    if ((s[0] | s[1] | s[2] | s[3]) == 0) {
        PyErr_SetString(PyExc_ValueError, "seed_request_ids() needs a seed that is not all zero");
        return NULL;
    }
    memcpy(rng_state, s, sizeof rng_state);
    Py_RETURN_NONE;
}

static PyObject *request_id(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored)) {
    return new_request_id();
}

/* ---- RequestBase: the per-call state of @ci.inference (instrument.py's _Request) ----
 *
 * What every request does is here: open the `request` span, copy the caller's context and bind
 * the span and the request in the copy, drive the endpoint's coroutine one step at a time inside
 * that context (counting the steps' thread CPU time), and close the span. Streams, LLM usage and
 * anything else rare are the Python subclass's (`_Request._finish_slow` and friends); the pure-
 * Python twin is instrument.py's `_PyRequestBase`. Keep the two in step. */

typedef struct {
    PyObject_HEAD
    PyObject *rec, *span, *rid, *ctx, *t0, *c0, *coro, *ended, *streaming, *chunks, *first_ns, *last_ns;
    PyObject *stream_usage, *prompt, *completion, *in_generate;
    long long cpu;
    int depth;
} RequestObject;

static PyTypeObject RequestBase_Type;
/* Set by configure_requests(): instrument.py's _CURRENT variable. */
static PyObject *current_request = NULL;
static PyObject *s_request, *s_request_id, *s_endpoint, *s_finish_slow;

#define REQUEST_FIELDS(X) X(rec) X(span) X(rid) X(ctx) X(t0) X(c0) X(coro) X(ended) X(streaming) X(chunks) \
    X(first_ns) X(last_ns) X(stream_usage) X(prompt) X(completion) X(in_generate)

static PyObject *Request_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds)) {
    RequestObject *self = (RequestObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
#define SET_NONE(f) self->f = Py_NewRef(Py_None);
    REQUEST_FIELDS(SET_NONE)
#undef SET_NONE
    Py_SETREF(self->ended, Py_NewRef(Py_False));
    Py_SETREF(self->streaming, Py_NewRef(Py_False));
    Py_SETREF(self->in_generate, Py_NewRef(Py_False));
    Py_SETREF(self->chunks, PyLong_FromLong(0));
    return (PyObject *)self;
}

static int Request_traverse(RequestObject *self, visitproc visit, void *arg) {
#define VISIT(f) Py_VISIT(self->f);
    REQUEST_FIELDS(VISIT)
#undef VISIT
    return 0;
}

static int Request_clear(RequestObject *self) {
#define CLEAR(f) Py_CLEAR(self->f);
    REQUEST_FIELDS(CLEAR)
#undef CLEAR
    return 0;
}

static void Request_dealloc(RequestObject *self) {
    PyObject_GC_UnTrack(self);
    Request_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* RequestBase(rec, endpoint=None): open the request span (attrs request_id and, when given,
 * endpoint) under the caller's current span (or the root) and bind it, with the request, in a
 * copy of the caller's context; the caller's is not touched. */
static int Request_init(RequestObject *self, PyObject *args, PyObject *kwds) {
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) || nargs < 1 || nargs > 2 ||
        !PyObject_TypeCheck(PyTuple_GET_ITEM(args, 0), &RecorderBase_Type)) {
        PyErr_SetString(PyExc_TypeError, "RequestBase(rec, endpoint=None) takes a recorder and an endpoint name");
        return -1;
    }
    PyObject *rec = PyTuple_GET_ITEM(args, 0);
    PyObject *endpoint = nargs == 2 ? PyTuple_GET_ITEM(args, 1) : Py_None;
    if (current_request == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_cscope.configure_requests() was not called");
        return -1;
    }
    RecorderObject *r = REC(rec);
    if (r->current == NULL) {
        PyErr_SetString(PyExc_AttributeError, "recorder not initialised");
        return -1;
    }
    PyObject *rid = new_request_id();
    if (rid == NULL) return -1;
    PyObject *parent = NULL, *attrs = NULL, *span = NULL, *ctx = NULL;
    if (PyContextVar_Get(r->current, NULL, &parent) < 0) goto error;
    if (IS_NONE(parent)) Py_XSETREF(parent, Py_NewRef(r->root ? r->root : Py_None));
    if ((attrs = PyDict_New()) == NULL || PyDict_SetItem(attrs, s_request_id, rid) < 0) goto error;
    if (!IS_NONE(endpoint) && PyDict_SetItem(attrs, s_endpoint, endpoint) < 0) goto error;
    span = Recorder_start_span(rec, (PyObject *[]){s_request, attrs, Py_None, parent}, 4, NULL);
    if (span == NULL) goto error;
    ScopeObject *sp = (ScopeObject *)span;
    if ((ctx = PyContext_CopyCurrent()) == NULL || PyContext_Enter(ctx) < 0) goto opened;
    PyObject *t1 = PyContextVar_Set(r->current, span);
    PyObject *t2 = t1 ? PyContextVar_Set(current_request, (PyObject *)self) : NULL;
    Py_XDECREF(t1);
    Py_XDECREF(t2);
    if (PyContext_Exit(ctx) < 0 || t2 == NULL) goto opened;
    Py_SETREF(self->rec, Py_NewRef(rec));
    Py_SETREF(self->rid, rid);
    Py_SETREF(self->t0, Py_NewRef(sp->start_ns ? sp->start_ns : Py_None));
    /* The span's own CPU reading, taken a moment ago on this thread: the first step (which always
     * runs right after, on the same thread) starts from it instead of reading the clock again. */
    Py_SETREF(self->c0, Py_NewRef(sp->cpu0 ? sp->cpu0 : Py_None));
    Py_SETREF(self->span, span);
    Py_SETREF(self->ctx, ctx);
    Py_DECREF(parent);
    Py_DECREF(attrs);
    return 0;
opened: /* the span never reaches the caller: forget it rather than leave it open forever */
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (PyDict_Check(r->open) && PyDict_DelItem(r->open, sp->id) < 0) PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
error:
    Py_XDECREF(ctx); Py_XDECREF(span); Py_XDECREF(attrs); Py_XDECREF(parent); Py_DECREF(rid);
    return -1;
}

/* Where a step's CPU time starts: the span's own reading for the first step (taken a moment
 * ago on this thread, right before it), the clock for the others. */
static long long step_cpu_start(RequestObject *self) {
    if (IS_NONE(self->c0)) return clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long long c0 = as_long_long(self->c0);
    Py_SETREF(self->c0, Py_NewRef(Py_None));
    if (c0 == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        c0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    }
    return c0;
}

/* Enter the request's context for one step; NULL (with an exception) if it cannot be entered. */
static PyObject *step_enter(RequestObject *self) {
    PyObject *ctx = Py_NewRef(self->ctx);
    if (PyContext_Enter(ctx) < 0) {
        Py_DECREF(ctx);
        return NULL;
    }
    self->depth = 1;
    return ctx;
}

/* Leave it again, keeping whatever exception the step raised, and count the step's CPU time. */
static void step_exit(RequestObject *self, PyObject *ctx, long long c0) {
    self->depth = 0;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (PyContext_Exit(ctx) < 0) PyErr_Clear(); /* cannot fail: entered by step_enter, on this thread */
    PyErr_Restore(type, value, tb);
    Py_DECREF(ctx);
    self->cpu += clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0;
}

/* One step of the endpoint's coroutine: inside the request's context, its thread CPU time added
 * to the request's, unless we are already inside (a stream read by the request's own code) or
 * the request has ended. */
static PySendResult request_step(RequestObject *self, PyObject *arg, PyObject **result) {
    *result = NULL;
    if (IS_NONE(self->coro)) {
        PyErr_SetString(PyExc_RuntimeError, "this request has no coroutine to await");
        return PYGEN_ERROR;
    }
    PyObject *coro = Py_NewRef(self->coro);
    if (self->depth || IS_NONE(self->ctx)) {
        PySendResult status = PyIter_Send(coro, arg, result);
        Py_DECREF(coro);
        return status;
    }
    long long c0 = step_cpu_start(self);
    PyObject *ctx = step_enter(self);
    if (ctx == NULL) {
        Py_DECREF(coro);
        return PYGEN_ERROR;
    }
    PySendResult status = PyIter_Send(coro, arg, result);
    step_exit(self, ctx, c0);
    Py_DECREF(coro);
    return status;
}

/* run(fn, *args, **kwargs): fn(*args, **kwargs) as one step of the request, like request_step. */
static PyObject *Request_run(RequestObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "run() takes the callable to run");
        return NULL;
    }
    PyObject *fn = args[0];
    if (self->depth || IS_NONE(self->ctx)) return PyObject_Vectorcall(fn, args + 1, nargs - 1, kwnames);
    long long c0 = step_cpu_start(self);
    PyObject *ctx = step_enter(self);
    if (ctx == NULL) return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args + 1, nargs - 1, kwnames);
    step_exit(self, ctx, c0);
    return r;
}

static PyObject *Request_await(RequestObject *self) {
    return Py_NewRef(self);
}

static PySendResult Request_am_send(RequestObject *self, PyObject *arg, PyObject **result) {
    return request_step(self, arg, result);
}

/* `await request` on Python 3.12+, which steps a non-coroutine awaitable with next() and reads a
 * return value from StopIteration. */
static PyObject *Request_iternext(RequestObject *self) {
    PyObject *result;
    PySendResult status = request_step(self, Py_None, &result);
    if (status == PYGEN_NEXT) return result;
    if (status == PYGEN_RETURN) {
        if (result != Py_None) {
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

/* finish(exc=None, stream_end=None): close the span once (later calls do nothing). The common
 * case (a plain result, no stream, no token usage) is done here; the rest by _finish_slow. */
static PyObject *Request_finish(RequestObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->ended == Py_True) Py_RETURN_NONE;
    if (nargs > 1 || kwnames != NULL || self->streaming != Py_False || !IS_NONE(self->prompt) ||
        !IS_NONE(self->completion) || !PyObject_TypeCheck(self->span, &ScopeBase_Type)) {
        PyObject *slow = PyObject_GetAttr((PyObject *)self, s_finish_slow);
        if (slow == NULL) return NULL;
        PyObject *r = PyObject_Vectorcall(slow, args, nargsf, kwnames);
        Py_DECREF(slow);
        return r;
    }
    long long end = clock_ns(CLOCK_REALTIME);
    PyObject *exc = nargs ? args[0] : Py_None;
    Py_SETREF(self->ended, Py_NewRef(Py_True));
    PyObject *rec = Py_NewRef(self->rec), *span = Py_NewRef(self->span);
    ScopeObject *sp = (ScopeObject *)span;
    PyObject *cpu1 = NULL, *end_obj = NULL, *r = NULL;
    if (!IS_NONE(sp->id) && IS_NONE(sp->end_ns)) {
        long long cpu0 = as_long_long(sp->cpu0 ? sp->cpu0 : Py_None);
        if (cpu0 == -1 && PyErr_Occurred()) goto failed;
        if ((cpu1 = PyLong_FromLongLong(cpu0 + self->cpu)) == NULL || (end_obj = PyLong_FromLongLong(end)) == NULL)
            goto failed;
        /* A closed stream (GeneratorExit) is no error. */
        if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_GeneratorExit)) exc = Py_None;
        r = Scope_exit(sp, (PyObject *[]){Py_None, exc, Py_None, cpu1, end_obj}, 5);
        if (r == NULL) goto failed;
    }
    /* The context refers back to this object (through _CURRENT): break the cycle so a finished
     * request is freed by reference counting, not left to the cyclic GC. */
    Py_SETREF(self->ctx, Py_NewRef(Py_None));
    Py_SETREF(self->coro, Py_NewRef(Py_None));
    goto done;
failed:
    note_internal_error(rec);
done:
    Py_XDECREF(r); Py_XDECREF(cpu1); Py_XDECREF(end_obj); Py_DECREF(span); Py_DECREF(rec);
    Py_RETURN_NONE;
}

static PyMethodDef Request_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Request_run, METH_FASTCALL | METH_KEYWORDS,
     "run($self, fn, /, *args, **kwargs)\n--\n\nfn(*args, **kwargs) inside the request's context, its thread CPU time counted."},
    {"finish", (PyCFunction)(void (*)(void))Request_finish, METH_FASTCALL | METH_KEYWORDS,
     "finish($self, /, exc=None, stream_end=None)\n--\n\nClose the request span once, with its summary marks."},
    {NULL, NULL, 0, NULL},
};

#define RQ_FIELD(f) {#f, T_OBJECT, offsetof(RequestObject, f), 0, NULL},
static PyMemberDef Request_members[] = {
    REQUEST_FIELDS(RQ_FIELD)
    {"cpu", T_LONGLONG, offsetof(RequestObject, cpu), 0, NULL},
    {"depth", T_INT, offsetof(RequestObject, depth), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
#undef RQ_FIELD

static PyAsyncMethods Request_as_async = {
    .am_await = (unaryfunc)Request_await,
#if PY_VERSION_HEX >= 0x030A0000
    .am_send = (sendfunc)Request_am_send,
#endif
};

static PyTypeObject RequestBase_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cirron._record._cscope.RequestBase",
    .tp_doc = "The per-call state of @ci.inference: its span, its context, its coroutine's steps.",
    .tp_basicsize = sizeof(RequestObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Request_new,
    .tp_init = (initproc)Request_init,
    .tp_traverse = (traverseproc)Request_traverse,
    .tp_clear = (inquiry)Request_clear,
    .tp_dealloc = (destructor)Request_dealloc,
    .tp_as_async = &Request_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Request_iternext,
    .tp_methods = Request_methods,
    .tp_members = Request_members,
};

static PyObject *configure_requests(PyObject *Py_UNUSED(module), PyObject *var) {
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "configure_requests() takes a ContextVar");
        return NULL;
    }
    Py_XSETREF(current_request, Py_NewRef(var));
    Py_RETURN_NONE;
}

static PyObject *untrack(PyObject *Py_UNUSED(module), PyObject *obj) {
    if (PyObject_IS_GC(obj) && PyObject_GC_IsTracked(obj)) PyObject_GC_UnTrack(obj);
    return Py_NewRef(obj);
}

static PyMethodDef module_methods[] = {
    {"uuid4_text", uuid4_text, METH_O,
     "uuid4_text($module, bits, /)\n--\n\nThe version-4 UUID text made from 128 random bits."},
    {"untrack", untrack, METH_O,
     "untrack($module, container, /)\n--\n\nThe container, taken out of the cyclic GC's sight: for the record buffers, "
     "which hold many records and never take part in a reference cycle. Lists and deques stay untracked."},
    {"configure_requests", configure_requests, METH_O,
     "configure_requests($module, current_request_var, /)\n--\n\nThe context variable RequestBase binds each request to."},
    {"seed_request_ids", seed_request_ids, METH_O,
     "seed_request_ids($module, seed, /)\n--\n\nReseed the request id generator with 32 random bytes (os.urandom(32))."},
    {"request_id", request_id, METH_NOARGS,
     "request_id($module, /)\n--\n\nA new random version-4 UUID, as RequestBase gives each request."},
    {"configure", configure, METH_VARARGS,
     "configure($module, id_source, coerce_mark_value, mark_type_error, scope_type, /)\n--\n\nWhere ids come from (an object "
     "whose .ids is an iterator), how mark values other than float/int/bool are made, the error for a bad "
     "kind, and the Scope class start_span makes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_cscope", "C enter/exit for cirron scopes.", -1, module_methods,
};

#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__cscope(void) {
    INTERN(s_ids, "ids"); INTERN(s_tb, "tb"); INTERN(s_marks, "marks"); INTERN(s_mark_capacity, "mark_capacity");
    INTERN(s_marks_dropped, "marks_dropped"); INTERN(s_popleft, "popleft"); INTERN(s_kind, "kind"); INTERN(s_thread_id, "thread_id");
    INTERN(s_point, "point"); INTERN(s_summary, "summary");
    INTERN(s_new_thread_buffer, "new_thread_buffer"); INTERN(s_spans, "spans");
    INTERN(s_span_capacity, "span_capacity"); INTERN(s_spans_dropped, "spans_dropped");
    INTERN(s_append, "append"); INTERN(s_gpu_ns, "gpu_ns"); INTERN(s_memory_peak_bytes, "memory_peak_bytes");
    INTERN(s_note_internal_error, "note_internal_error"); INTERN(s_reenter, "_reenter");
    INTERN(s_note_exception, "_note_exception"); INTERN(s_id, "id"); INTERN(s_exit, "__exit__");
    INTERN(s_request, "request"); INTERN(s_request_id, "request_id"); INTERN(s_endpoint, "endpoint");
    INTERN(s_finish_slow, "_finish_slow");
    if (PyType_Ready(&Row_Type) < 0 || PyType_Ready(&Attrs_Type) < 0 || PyType_Ready(&RequestBase_Type) < 0 || PyType_Ready(&ScopeBase_Type) < 0 || PyType_Ready(&RecorderBase_Type) < 0 ||
        PyType_Ready(&Factory_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "ScopeBase", (PyObject *)&ScopeBase_Type) < 0 ||
        PyModule_AddObjectRef(m, "RecorderBase", (PyObject *)&RecorderBase_Type) < 0 ||
        PyModule_AddObjectRef(m, "ScopeFactory", (PyObject *)&Factory_Type) < 0 ||
        PyModule_AddObjectRef(m, "Row", (PyObject *)&Row_Type) < 0 ||
        PyModule_AddObjectRef(m, "Attrs", (PyObject *)&Attrs_Type) < 0 ||
        PyModule_AddObjectRef(m, "RequestBase", (PyObject *)&RequestBase_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
