/* A Python int read as 128 unsigned bits: shared by the compiled modules (_record/_cscope.c for
 * request ids, _flush/_cencode.c for record ids). */
#ifndef CIRRON_U128_H
#define CIRRON_U128_H

#include <Python.h>

/* Up to 3.13 the digits are read straight from the int (what _PyLong_AsByteArray does, without
 * its byte-at-a-time loop: a tenth of the instructions, and the encoder reads two ids per span).
 * The layout is CPython's own: a signed digit count in ob_size up to 3.11, lv_tag from 3.12. */
#if PY_VERSION_HEX < 0x030E0000 && defined(PyLong_SHIFT)
#define CIRRON_U128_FROM_DIGITS 1
#endif

/* 1: `v` is an int in [0, 2**128), now in `*out`; 0: it is not (nothing raised); -1: an error
 * was raised. */
static inline int u128_value(PyObject *v, unsigned __int128 *out) {
    if (!PyLong_Check(v)) return 0;
#ifdef CIRRON_U128_FROM_DIGITS
    PyLongObject *l = (PyLongObject *)v;
#if PY_VERSION_HEX >= 0x030C0000
    uintptr_t tag = l->long_value.lv_tag;
    if ((tag & _PyLong_SIGN_MASK) == 2) return 0; /* negative */
    Py_ssize_t ndigits = (Py_ssize_t)(tag >> _PyLong_NON_SIZE_BITS);
    const digit *d = l->long_value.ob_digit;
#else
    Py_ssize_t ndigits = Py_SIZE(l);
    if (ndigits < 0) return 0;
    const digit *d = l->ob_digit;
#endif
    unsigned __int128 x = 0;
    for (Py_ssize_t i = ndigits - 1; i >= 0; i--) {
        if (x >> (128 - PyLong_SHIFT)) return 0; /* would not fit */
        x = (x << PyLong_SHIFT) | d[i];
    }
    *out = x;
    return 1;
#else
    unsigned char raw[16];
#if PY_VERSION_HEX >= 0x030E0000
    int sign = 0;
    if (PyLong_GetSign(v, &sign) < 0) return -1;
#else
    int sign = _PyLong_Sign(v);
#endif
    if (sign < 0) return 0;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(v, raw, 16, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    if (need < 0) return -1;
    if (need > 16) return 0;
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, raw, 16, 0, 0) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        return 0;
    }
#endif
    unsigned __int128 x = 0;
    for (int i = 0; i < 16; i++) x = (x << 8) | raw[i];
    *out = x;
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
