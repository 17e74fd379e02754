/* A record row outside the cyclic GC: shared by the compiled modules (_record/_cscope.c makes
 * rows, _flush/_cencode.c reads them).
 *
 * A closed span or a mark stays buffered until the flush service writes it. Kept as a tuple,
 * each one counts as a live GC allocation until then, so recording at a high rate alone would
 * set off a garbage collection every few hundred records, now and then a full one over the
 * user's whole heap, in the recording thread. A row holds only what the recorder put in it and
 * nothing refers back to it from user code, so it can never be part of a reference cycle: it
 * needs no GC tracking. From Python it reads like a tuple (len, index, slice, iteration, ==). */
#ifndef CIRRON_ROW_H
#define CIRRON_ROW_H

#include <Python.h>

typedef struct {
    PyObject_VAR_HEAD
    PyObject *item[1];
} RowObject;

/* The `n` fields of a record held as a row (of `row_type`) or as a tuple; NULL for anything else. */
static inline PyObject *const *record_fields(PyObject *o, Py_ssize_t n, PyTypeObject *row_type) {
    if (row_type != NULL && Py_IS_TYPE(o, row_type))
        return Py_SIZE(o) == n ? ((RowObject *)o)->item : NULL;
    if (PyTuple_CheckExact(o)) return PyTuple_GET_SIZE(o) == n ? &PyTuple_GET_ITEM(o, 0) : NULL;
    return NULL;
}

#endif
