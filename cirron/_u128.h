/* A Python int read as 128 unsigned bits: shared by the compiled modules (_record/_cscope.c for
 * request ids, _flush/_cencode.c for record ids). */
#ifndef CIRRON_U128_H
#define CIRRON_U128_H

#include <Python.h>

/* 1: `v` is an int in [0, 2**128) and `raw` holds it big-endian; 0: it is not (nothing raised);
 * -1: an error was raised. */
static int u128_from_long(PyObject *v, unsigned char raw[16]) {
    if (!PyLong_Check(v)) return 0;
#if PY_VERSION_HEX >= 0x030E0000
    int sign = 0;
    if (PyLong_GetSign(v, &sign) < 0) return -1;
#else
    int sign = _PyLong_Sign(v); /* Py_SIZE no longer gives the sign from Python 3.12 on */
#endif
    if (sign < 0) return 0;
#if PY_VERSION_HEX >= 0x030D0000
    Py_ssize_t need = PyLong_AsNativeBytes(v, raw, 16, Py_ASNATIVEBYTES_BIG_ENDIAN | Py_ASNATIVEBYTES_UNSIGNED_BUFFER);
    if (need < 0) return -1;
    return need <= 16;
#else
    if (_PyLong_AsByteArray((PyLongObject *)v, raw, 16, 0, 0) == 0) return 1;
    if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
    PyErr_Clear();
    return 0;
#endif
}

#endif
