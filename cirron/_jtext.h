/* JSON text pieces the compiled encoders share: int64 decimals and strings escaped exactly as
 * orjson writes them (the reference of every exporter): '"' and '\\' get a backslash; \b \t \n \f
 * \r their short forms; the other bytes below 0x20 \u00XX with lower-case hex; everything else,
 * DEL and non-ASCII included, is copied as it is (UTF-8 stays UTF-8, no \u escapes).
 *
 * The input of a string must be valid UTF-8 (Arrow's string columns are; a str's UTF-8 from
 * PyUnicode_AsUTF8AndSize is, and fails on lone surrogates, which orjson refuses too). */
#ifndef CIRRON_JTEXT_H
#define CIRRON_JTEXT_H

#include <stdint.h>

#include "_buf.h"

/* The most bytes an int64 takes: "-9223372036854775808". */
#define JT_INT64_MAX 20

/* The most bytes jt_write_str writes for n bytes of input (every byte \u00XX, and the quotes). */
#define JT_STR_MAX(n) ((n) * 6 + 2)

static const char JT_DIGIT_PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* What follows the backslash for a byte that needs escaping: 0 for none, 'u' for \u00XX. */
static const char JT_ESCAPE[256] = {
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'b', 't', 'n', 'u', 'f', 'r', 'u', 'u',
    'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u', 'u',
    0, 0, '"', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '\\', 0, 0, 0,
    /* 0x60-0xff: none */
};

/* Writes the decimal text of x so that it ends just before `end`; returns where it starts
 * (at most JT_INT64_MAX bytes before `end`). */
static inline char *jt_int64_text(int64_t x, char *end) {
    char *p = end;
    uint64_t u = x < 0 ? 0ULL - (uint64_t)x : (uint64_t)x;
    while (u >= 100) {
        unsigned d = (unsigned)(u % 100) * 2;
        u /= 100;
        *--p = JT_DIGIT_PAIRS[d + 1];
        *--p = JT_DIGIT_PAIRS[d];
    }
    if (u >= 10) {
        *--p = JT_DIGIT_PAIRS[u * 2 + 1];
        *--p = JT_DIGIT_PAIRS[u * 2];
    } else {
        *--p = (char)('0' + u);
    }
    if (x < 0) *--p = '-';
    return p;
}

/* Writes x's decimal text at `o` (JT_INT64_MAX bytes of room); returns the end. */
static inline char *jt_write_int64(char *o, int64_t x) {
    char tmp[JT_INT64_MAX], *end = tmp + sizeof tmp;
    char *p = jt_int64_text(x, end);
    memcpy(o, p, (size_t)(end - p));
    return o + (end - p);
}

static inline int jt_put_int64(Buf *b, int64_t x) {
    if (buf_reserve(b, JT_INT64_MAX) < 0) return -1;
    b->len = jt_write_int64(b->data + b->len, x) - b->data;
    return 0;
}

/* Writes s[0..n) as a quoted JSON string at `o` (JT_STR_MAX(n) bytes of room); returns the end.
 * Runs that need no escape are copied whole. */
static inline char *jt_write_str(char *o, const char *s, Py_ssize_t n) {
    static const char hexd[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s, *stop = p + n;
    *o++ = '"';
    while (p < stop) {
        const unsigned char *run = p;
        while (p < stop && !JT_ESCAPE[*p]) p++;
        memcpy(o, run, (size_t)(p - run));
        o += p - run;
        if (p == stop) break;
        unsigned char c = *p++;
        char e = JT_ESCAPE[c];
        *o++ = '\\';
        if (e == 'u') {
            *o++ = 'u'; *o++ = '0'; *o++ = '0';
            *o++ = hexd[c >> 4]; *o++ = hexd[c & 15];
        } else {
            *o++ = e;
        }
    }
    *o++ = '"';
    return o;
}

static inline int jt_put_str(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, JT_STR_MAX(n)) < 0) return -1;
    b->len = jt_write_str(b->data + b->len, s, n) - b->data;
    return 0;
}

#endif
