/* A Python int read as 128 unsigned bits: shared by the compiled modules (_record/_cscope.c for
 * request ids, _flush/_cencode.c for record ids). Public C API only: no reading of CPython's int
 * layout. */
#ifndef CIRRON_U128_H
#define CIRRON_U128_H

#include <Python.h>

/* 1: `v` is an int in [0, 2**128), now in `*out`; 0: it is not (nothing raised); -1: an error
 * was raised. */
static inline int u128_value(PyObject *v, unsigned __int128 *out) {
    if (!PyLong_Check(v)) return 0;
#if PY_VERSION_HEX >= 0x030D0000
    unsigned char raw[16];
    Py_ssize_t need = PyLong_AsNativeBytes(
        v, raw, 16, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER | Py_ASNATIVEBYTES_REJECT_NEGATIVE);
    if (need < 0) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError)) return -1;
        PyErr_Clear(); /* negative */
        return 0;
    }
    if (need > 16) return 0;
    unsigned __int128 x = 0;
    for (int i = 0; i < 16; i++) x = (x << 8) | raw[i];
    *out = x;
    return 1;
#else
    /* The low 64 bits by the masking conversion, the high ones from v >> 64 (negative or wider
     * than 128 bits: OverflowError there, so not an id). */
    static PyObject *sixty_four = NULL;
    if (sixty_four == NULL && (sixty_four = PyLong_FromLong(64)) == NULL) return -1;
    unsigned long long lo = PyLong_AsUnsignedLongLongMask(v);
    if (lo == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    PyObject *high = PyNumber_Rshift(v, sixty_four);
    if (high == NULL) return -1;
    unsigned long long hi = PyLong_AsUnsignedLongLong(high);
    Py_DECREF(high);
    if (hi == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 0;
    }
    *out = ((unsigned __int128)hi << 64) | lo;
    return 1;
#endif
}

/* The same, big-endian into `raw`. */
static inline int u128_from_long(PyObject *v, unsigned char raw[16]) {
    unsigned __int128 x;
    int ok = u128_value(v, &x);
    if (ok != 1) return ok;
    for (int i = 15; i >= 0; i--, x >>= 8) raw[i] = (unsigned char)x;
    return 1;
}

#endif
