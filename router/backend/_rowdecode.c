/* The pipelined connections' DataRow decoder in C (router/backend/pgrows.py is the same in
 * Python, and says what both do).
 *
 * decode_rows(buf, pos, decoders, rows) reads the run of complete DataRow messages that
 * starts at `pos` in `buf`, appends one list per row to `rows`, and returns the position after
 * the last one it read: at a message of another kind, an incomplete message or the end of the
 * buffer. A value that cannot be returned (one of the `value_errors` raised for a well-framed
 * value) stops it after that row's message, returning (position, column index, exception);
 * the row is not appended. A malformed row raises ValueError: the stream is lost.
 *
 * Each column's decoder is looked up in the `kinds` table given to configure(): the common
 * kinds are decoded here, exactly as the Python decoder would, and anything else (another
 * decoder, a fixed-width value of another width, a timestamp or date out of Python's range or
 * infinite) is handed to the Python decoder itself, so that its result or error is the one
 * returned.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Kinds: router/backend/pgrows.py's RowKind has the same numbers. */
enum {
    K_PYTHON = 0,
    K_BOOL = 1,
    K_BYTES = 2,
    K_TEXT = 3,
    K_INT2 = 4,
    K_INT4 = 5,
    K_INT8 = 6,
    K_UINT4 = 7,
    K_FLOAT4 = 8,
    K_FLOAT8 = 9,
    K_EXT16 = 10,      /* ext type of exactly 16 bytes (uuid) */
    K_EXT_BYTES = 11,  /* ext type of the value's bytes (json, jsonb) */
    K_TIMESTAMP = 12,  /* int64 microseconds since 2000-01-01 -> ext type of 1970-based */
    K_DATE = 13,       /* int32 days since 2000-01-01 -> ext type of 1970-based */
    K_DECIMAL = 14,    /* numeric in text form -> Decimal */
    K_LAST = 14,
};

#define MAX_MESSAGE (1 << 30)            /* PostgreSQL's MaxAllocSize; pgwire.py's too */
#define PG_EPOCH_MICROS 946684800000000LL  /* 2000-01-01 - 1970-01-01 */
#define PG_EPOCH_DAYS 10957

typedef struct {
    int kind;
    int ext_code;
    PyObject *decoder; /* borrowed from the decoders tuple */
} Column;

/* Set once by configure(); strong references kept for the life of the process. */
static PyObject *g_kinds;        /* dict: decoder -> kind | ext_code << 8 */
static PyObject *g_ext_type;     /* msgpack.ExtType */
static PyObject *g_decimal;      /* decimal.Decimal */
static PyObject *g_value_errors; /* tuple of exception classes */
static long long g_min_micros, g_max_micros, g_min_days, g_max_days;

static inline uint16_t be16(const unsigned char *p) {
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

static inline void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void put_be64(unsigned char *p, uint64_t v) {
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* msgpack.ExtType(code, data) without its argument checks, as the Python decoders make it
 * (tuple.__new__(ExtType, (code, data))). Steals `data`. */
static PyObject *make_ext(int code, PyObject *data) {
    if (data == NULL)
        return NULL;
    PyObject *code_obj = PyLong_FromLong(code);
    if (code_obj == NULL) {
        Py_DECREF(data);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030E0000
    /* What tuple.__new__ does for a subclass before 3.14 (tuple_subtype_new): allocate it
     * and fill it in. From 3.14 a tuple caches its hash, which that function resets after
     * allocating: there, the function itself is called. */
    PyTypeObject *type = (PyTypeObject *)g_ext_type;
    PyObject *ext = type->tp_alloc(type, 2);
    if (ext == NULL) {
        Py_DECREF(code_obj);
        Py_DECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(ext, 0, code_obj);
    PyTuple_SET_ITEM(ext, 1, data);
    return ext;
#else
    PyObject *pair = PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(code_obj);
        Py_DECREF(data);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, code_obj);
    PyTuple_SET_ITEM(pair, 1, data);
    PyObject *args = PyTuple_Pack(1, pair);
    Py_DECREF(pair);
    if (args == NULL)
        return NULL;
    PyObject *ext = PyTuple_Type.tp_new((PyTypeObject *)g_ext_type, args, NULL);
    Py_DECREF(args);
    return ext;
#endif
}

/* The Python decoder's own answer: decoder(buf, p, n). */
static PyObject *call_decoder(const Column *col, PyObject *buf, Py_ssize_t p, Py_ssize_t n) {
    PyObject *args[3];
    args[0] = buf;
    args[1] = PyLong_FromSsize_t(p);
    if (args[1] == NULL)
        return NULL;
    args[2] = PyLong_FromSsize_t(n);
    if (args[2] == NULL) {
        Py_DECREF(args[1]);
        return NULL;
    }
    PyObject *value = PyObject_Vectorcall(col->decoder, args, 3, NULL);
    Py_DECREF(args[1]);
    Py_DECREF(args[2]);
    return value;
}

static PyObject *decode_value(const Column *col, PyObject *buf, const unsigned char *v,
                              Py_ssize_t p, Py_ssize_t n) {
    switch (col->kind) {
    case K_BOOL:
        if (n != 1)
            break;
        return PyBool_FromLong(v[0] != 0);
    case K_BYTES:
        return PyBytes_FromStringAndSize((const char *)v, n);
    case K_TEXT:
        return PyUnicode_DecodeUTF8((const char *)v, n, NULL);
    case K_INT2:
        if (n != 2)
            break;
        return PyLong_FromLong((int16_t)be16(v));
    case K_INT4:
        if (n != 4)
            break;
        return PyLong_FromLong((int32_t)be32(v));
    case K_INT8:
        if (n != 8)
            break;
        return PyLong_FromLongLong((long long)(int64_t)be64(v));
    case K_UINT4:
        if (n != 4)
            break;
        return PyLong_FromUnsignedLong(be32(v));
    case K_FLOAT4: {
        if (n != 4)
            break;
        double d = PyFloat_Unpack4((const char *)v, 0);
        if (d == -1.0 && PyErr_Occurred())
            return NULL;
        return PyFloat_FromDouble(d);
    }
    case K_FLOAT8: {
        if (n != 8)
            break;
        double d = PyFloat_Unpack8((const char *)v, 0);
        if (d == -1.0 && PyErr_Occurred())
            return NULL;
        return PyFloat_FromDouble(d);
    }
    case K_EXT16:
        if (n != 16)
            break;
        return make_ext(col->ext_code, PyBytes_FromStringAndSize((const char *)v, 16));
    case K_EXT_BYTES:
        return make_ext(col->ext_code, PyBytes_FromStringAndSize((const char *)v, n));
    case K_TIMESTAMP: {
        if (n != 8)
            break;
        long long micros = (long long)(int64_t)be64(v);
        if (micros < g_min_micros || micros > g_max_micros)
            break; /* infinity, or out of Python's range: the Python decoder's answer */
        PyObject *data = PyBytes_FromStringAndSize(NULL, 8);
        if (data == NULL)
            return NULL;
        put_be64((unsigned char *)PyBytes_AS_STRING(data), (uint64_t)(micros + PG_EPOCH_MICROS));
        return make_ext(col->ext_code, data);
    }
    case K_DATE: {
        if (n != 4)
            break;
        long long days = (int32_t)be32(v);
        if (days < g_min_days || days > g_max_days)
            break;
        PyObject *data = PyBytes_FromStringAndSize(NULL, 4);
        if (data == NULL)
            return NULL;
        put_be32((unsigned char *)PyBytes_AS_STRING(data), (uint32_t)(days + PG_EPOCH_DAYS));
        return make_ext(col->ext_code, data);
    }
    case K_DECIMAL: {
        PyObject *text = PyUnicode_DecodeUTF8((const char *)v, n, NULL);
        if (text == NULL)
            return NULL;
        PyObject *value = PyObject_CallOneArg(g_decimal, text);
        Py_DECREF(text);
        return value;
    }
    default:
        break;
    }
    return call_decoder(col, buf, p, n);
}

/* The exception being raised, taken (normalized, with its traceback). */
static PyObject *take_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static int columns_of(PyObject *decoders, Column *cols, Py_ssize_t width) {
    for (Py_ssize_t i = 0; i < width; i++) {
        PyObject *decoder = PyTuple_GET_ITEM(decoders, i);
        PyObject *spec = PyDict_GetItemWithError(g_kinds, decoder);
        cols[i].decoder = decoder;
        cols[i].kind = K_PYTHON;
        cols[i].ext_code = 0;
        if (spec == NULL) {
            if (PyErr_Occurred())
                return -1;
            continue;
        }
        long packed = PyLong_AsLong(spec);
        if (packed == -1 && PyErr_Occurred())
            return -1;
        cols[i].kind = (int)(packed & 0xff);
        cols[i].ext_code = (int)(packed >> 8);
    }
    return 0;
}

#define STACK_COLUMNS 32

static PyObject *decode_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_rows(buf, pos, decoders, rows)");
        return NULL;
    }
    if (g_kinds == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_rowdecode.configure() was not called");
        return NULL;
    }
    PyObject *buf = args[0];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    PyObject *decoders = args[2];
    PyObject *rows = args[3];
    if (!PyTuple_Check(decoders) || !PyList_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "decoders must be a tuple and rows a list");
        return NULL;
    }
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "negative position");
        return NULL;
    }
    Py_ssize_t width = PyTuple_GET_SIZE(decoders);
    Column stack_cols[STACK_COLUMNS];
    Column *cols = stack_cols;
    if (width > STACK_COLUMNS) {
        cols = PyMem_New(Column, (size_t)width);
        if (cols == NULL)
            return PyErr_NoMemory();
    }
    PyObject *result = NULL;
    /* Held for the whole call: a bytearray with an export cannot be resized, so a decoder
     * that tried would get BufferError rather than leave this reading freed memory. */
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0)
        goto free_cols;
    if (columns_of(decoders, cols, width) < 0)
        goto release;
    const unsigned char *b = (const unsigned char *)view.buf;
    Py_ssize_t size = view.len;

    while (size - pos >= 5 && b[pos] == 'D') {
        int32_t length = (int32_t)be32(b + pos + 1);
        if (length < 4 || length > MAX_MESSAGE) {
            PyErr_Format(PyExc_ValueError, "message 'D' of length %d", (int)length);
            goto release;
        }
        Py_ssize_t end = pos + 1 + length;
        if (end > size)
            break;
        Py_ssize_t p = pos + 7; /* past the header and the column count */
        if (p > end || (int16_t)be16(b + pos + 5) != width) {
            PyErr_SetString(PyExc_ValueError,
                            "a row with another number of columns than described");
            goto release;
        }
        PyObject *row = PyList_New(width);
        if (row == NULL)
            goto release;
        for (Py_ssize_t i = 0; i < width; i++) {
            if (end - p < 4) {
                Py_DECREF(row);
                PyErr_SetString(PyExc_ValueError, "a column length past the end of its row");
                goto release;
            }
            int32_t n = (int32_t)be32(b + p);
            p += 4;
            PyObject *value;
            if (n < 0) {
                if (n != -1) {
                    Py_DECREF(row);
                    PyErr_Format(PyExc_ValueError, "a column of length %d", (int)n);
                    goto release;
                }
                value = Py_NewRef(Py_None);
            } else if (n > end - p) {
                Py_DECREF(row);
                PyErr_SetString(PyExc_ValueError, "a column value past the end of its row");
                goto release;
            } else {
                value = decode_value(&cols[i], buf, b + p, p, n);
                if (value == NULL) {
                    Py_DECREF(row);
                    if (!PyErr_ExceptionMatches(g_value_errors))
                        goto release;
                    /* A value Python cannot hold: the caller fails this request only. */
                    PyObject *exc = take_exception();
                    if (exc == NULL)
                        goto release;
                    result = Py_BuildValue("(nnN)", end, i, exc);
                    goto release;
                }
                p += n;
            }
            PyList_SET_ITEM(row, i, value);
        }
        if (p != end) {
            Py_DECREF(row);
            PyErr_SetString(PyExc_ValueError, "bytes after the last column of a row");
            goto release;
        }
        int appended = PyList_Append(rows, row);
        Py_DECREF(row);
        if (appended < 0)
            goto release;
        pos = end;
    }
    result = PyLong_FromSsize_t(pos);

release:
    PyBuffer_Release(&view);
free_cols:
    if (cols != stack_cols)
        PyMem_Free(cols);
    return result;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    (void)module;
    PyObject *kinds, *ext_type, *decimal, *value_errors;
    long long min_micros, max_micros, min_days, max_days;
    if (!PyArg_ParseTuple(args, "O!O!OO!(LLLL):configure", &PyDict_Type, &kinds, &PyType_Type,
                          &ext_type, &decimal, &PyTuple_Type, &value_errors, &min_micros,
                          &max_micros, &min_days, &max_days))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)ext_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "the ext type must be a tuple subclass");
        return NULL;
    }
    PyObject *key, *value;
    Py_ssize_t i = 0;
    while (PyDict_Next(kinds, &i, &key, &value)) {
        long packed = PyLong_AsLong(value);
        if (packed == -1 && PyErr_Occurred())
            return NULL;
        if (packed < 0 || (packed & 0xff) > K_LAST || (packed >> 8) > 127) {
            PyErr_Format(PyExc_ValueError, "kind %ld is not one this decoder knows", packed);
            return NULL;
        }
    }
    /* The infinities (the extreme values) must stay outside the bounds, and a value inside
     * them must not overflow when moved to the 1970 epoch. */
    if (min_micros <= INT64_MIN || max_micros >= INT64_MAX - PG_EPOCH_MICROS
        || min_micros > max_micros || min_days <= INT32_MIN
        || max_days >= INT32_MAX - PG_EPOCH_DAYS || min_days > max_days) {
        PyErr_SetString(PyExc_ValueError, "bounds out of range");
        return NULL;
    }
    Py_XSETREF(g_kinds, PyDict_Copy(kinds));
    if (g_kinds == NULL)
        return NULL;
    Py_XSETREF(g_ext_type, Py_NewRef(ext_type));
    Py_XSETREF(g_decimal, Py_NewRef(decimal));
    Py_XSETREF(g_value_errors, Py_NewRef(value_errors));
    g_min_micros = min_micros;
    g_max_micros = max_micros;
    g_min_days = min_days;
    g_max_days = max_days;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_rows", (PyCFunction)(void (*)(void))decode_rows, METH_FASTCALL,
     "decode_rows(buf, pos, decoders, rows) -> position, or (position, column, exception)"},
    {"configure", configure, METH_VARARGS,
     "configure(kinds, ext_type, decimal, value_errors, (min_micros, max_micros, min_days, "
     "max_days))"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_rowdecode",
    .m_doc = "PostgreSQL DataRow messages to row lists (router/backend/pgrows.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__rowdecode(void) {
    return PyModule_Create(&module_def);
}
