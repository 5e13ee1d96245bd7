/* CPython binding of irst_label(). Takes the map through the buffer protocol (no numpy headers at build time),
 * releases the GIL while labelling, and returns the targets as bytes holding two column blocks (int64 fields,
 * then double fields; one row per field, one column per target) that the Python side views as numpy arrays
 * (edge_irst/postprocess/records.py). A workspace (a capsule, one per Python thread, held
 * by the caller) keeps the run buffers from call to call: on a VM, first-touch page faults of fresh buffers
 * cost more than the labelling of a dense map. User-facing validation and messages live in the
 * Python wrapper; the checks here only keep memory access safe if this private function is called directly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <string.h>

#include "labeller_core.h"

#if defined(__clang__)
#define COMPILER_NAME "clang " __clang_version__
#elif defined(__GNUC__)
#define COMPILER_NAME "gcc " __VERSION__
#else
#define COMPILER_NAME "an unknown C compiler"
#endif

static int is_native_format(const char *format, char code)
{
    /* '@' and '=' mean native byte order on the platforms the extension builds on; no prefix means '@'. */
    if (format[0] == '@' || format[0] == '=')
        format++;
    return format[0] == code && format[1] == '\0';
}

static int check_map(const Py_buffer *view)
{
    if (view->ndim != 2 || view->itemsize != (Py_ssize_t)sizeof(float) || !view->format ||
        !is_native_format(view->format, 'f')) {
        PyErr_SetString(PyExc_TypeError, "logits must be a 2-D buffer of native float32");
        return -1;
    }
    if (view->strides[0] % (Py_ssize_t)sizeof(float) || view->strides[1] % (Py_ssize_t)sizeof(float) ||
        (uintptr_t)view->buf % sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "logits must be aligned to 4 bytes with strides a multiple of 4");
        return -1;
    }
    return 0;
}

static int check_labels(const Py_buffer *view, const Py_buffer *map)
{
    if (view->ndim != 2 || view->itemsize != (Py_ssize_t)sizeof(int32_t) || !view->format ||
        !is_native_format(view->format, 'i') || view->shape[0] != map->shape[0] ||
        view->shape[1] != map->shape[1]) {
        PyErr_SetString(PyExc_TypeError, "labels must be a writable C-contiguous int32 buffer shaped like logits");
        return -1;
    }
    return 0;
}

static const char WORKSPACE_CAPSULE[] = "edge_irst.postprocess._labeller.workspace";

/* `busy` is read and written with the GIL held: it refuses a workspace shared by two threads at once. */
typedef struct {
    irst_workspace *ws;
    int busy;
} workspace_handle;

static void free_workspace(PyObject *capsule)
{
    workspace_handle *handle = PyCapsule_GetPointer(capsule, WORKSPACE_CAPSULE);
    if (handle) {
        irst_workspace_free(handle->ws);
        PyMem_Free(handle);
    }
}

static PyObject *new_workspace(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    workspace_handle *handle = PyMem_Malloc(sizeof *handle);
    if (!handle)
        return PyErr_NoMemory();
    handle->busy = 0;
    handle->ws = irst_workspace_new();
    if (!handle->ws) {
        PyMem_Free(handle);
        return PyErr_NoMemory();
    }
    PyObject *capsule = PyCapsule_New(handle, WORKSPACE_CAPSULE, free_workspace);
    if (!capsule) {
        irst_workspace_free(handle->ws);
        PyMem_Free(handle);
    }
    return capsule;
}

/* The records transposed into column blocks: rows of the int fields, then rows of the real fields (memcpy: the
 * bytes object's storage carries no alignment promise). */
static PyObject *column_blocks(const irst_result *result)
{
    const ptrdiff_t count = result->count;
    PyObject *blocks = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(count * (ptrdiff_t)sizeof(irst_target)));
    if (!blocks)
        return NULL;
    char *out = PyBytes_AS_STRING(blocks);
#define COPY_COLUMN(name)                                                                                       \
    for (ptrdiff_t k = 0; k < count; k++, out += 8)                                                             \
        memcpy(out, &result->targets[k].name, 8);
    IRST_TARGET_FIELDS(COPY_COLUMN, COPY_COLUMN)
#undef COPY_COLUMN
    return blocks;
}

PyDoc_STRVAR(label_doc,
"label(logits, threshold, labels, workspace, target_filter, threads) -> bytes\n\n"
"logits: 2-D native float32 buffer, any strides. threshold: float (used as float32).\n"
"labels: None, or a zero-filled C-contiguous int32 buffer of the same shape, filled with target labels.\n"
"workspace: from new_workspace(), used by one thread at a time.\n"
"target_filter: None, or (size_min, size_max, ratio_min, ratio_max, inclusive), open sides as -inf / inf.\n"
"threads: row bands scanned at once (1 = the calling thread only); the result does not depend on it.\n"
"Returns the targets as bytes: an int64 block (one row per INT field of TARGET_FIELDS, one column per target)\n"
"followed by a double block (one row per REAL field), native byte order.");

/* METH_FASTCALL, the arguments read one by one: PyArg_ParseTuple took about 80 ns a call, a third of the
 * binding's fixed cost (0.23 against 0.15 us on a 1x1 map), where a sparse frame's labelling takes microseconds. */
static PyObject *label(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6)
        return PyErr_Format(PyExc_TypeError, "label() takes 6 arguments (%zd given)", nargs);
    PyObject *const logits_obj = args[0], *const labels_obj = args[2], *const capsule = args[3],
                    *const filter_obj = args[4];
    const double threshold_value = PyFloat_AsDouble(args[1]);
    if (threshold_value == -1.0 && PyErr_Occurred())
        return NULL;
    const float threshold = (float)threshold_value;
    const long threads_value = PyLong_AsLong(args[5]);
    if (threads_value == -1 && PyErr_Occurred())
        return NULL;
    if (threads_value < INT_MIN || threads_value > INT_MAX) /* as PyArg's "i" did; irst_label() clips the rest */
        return PyErr_Format(PyExc_OverflowError, "threads = %ld does not fit a C int", threads_value);
    const int threads = (int)threads_value;
    irst_filter filter;
    if (filter_obj != Py_None &&
        !PyArg_ParseTuple(filter_obj, "ddddp:target_filter", &filter.size_min, &filter.size_max, &filter.ratio_min,
                          &filter.ratio_max, &filter.inclusive))
        return NULL;
    workspace_handle *handle = PyCapsule_GetPointer(capsule, WORKSPACE_CAPSULE);
    if (!handle)
        return NULL;

    Py_buffer map_view, labels_view;
    if (PyObject_GetBuffer(logits_obj, &map_view, PyBUF_STRIDES | PyBUF_FORMAT) != 0)
        return NULL;
    if (check_map(&map_view) != 0) {
        PyBuffer_Release(&map_view);
        return NULL;
    }
    int32_t *labels = NULL;
    if (labels_obj != Py_None) {
        if (PyObject_GetBuffer(labels_obj, &labels_view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) != 0) {
            PyBuffer_Release(&map_view);
            return NULL;
        }
        if (check_labels(&labels_view, &map_view) != 0) {
            PyBuffer_Release(&labels_view);
            PyBuffer_Release(&map_view);
            return NULL;
        }
        labels = (int32_t *)labels_view.buf;
    }

    const irst_map map = {
        (const float *)map_view.buf, map_view.shape[0], map_view.shape[1],
        map_view.strides[0] / (Py_ssize_t)sizeof(float), map_view.strides[1] / (Py_ssize_t)sizeof(float),
    };
    /* The workspace is claimed only now, with no Python code left to run before the call (getting a buffer can
     * run some, e.g. a warning, and let another thread in), and freed only after the records are copied out of
     * it: releasing the buffers can run Python code too (the exporter's last reference going), which may label
     * with this workspace again. */
    PyObject *blocks = NULL;
    if (handle->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this labeller workspace is in use by another thread; use one per thread");
    } else {
        irst_result result;
        int status;
        handle->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        status = irst_label(&map, threshold, labels, filter_obj != Py_None ? &filter : NULL, threads, handle->ws,
                            &result);
        Py_END_ALLOW_THREADS
        if (status == IRST_TOO_LARGE)
            PyErr_Format(PyExc_ValueError, "logits has more than %zd pixels", (Py_ssize_t)IRST_MAX_PIXELS);
        else if (status != IRST_OK)
            PyErr_NoMemory();
        else
            blocks = column_blocks(&result);
        handle->busy = 0;
    }
    if (labels)
        PyBuffer_Release(&labels_view);
    PyBuffer_Release(&map_view);
    return blocks;
}

static PyObject *last_run_count(PyObject *module, PyObject *capsule)
{
    (void)module;
    const workspace_handle *handle = PyCapsule_GetPointer(capsule, WORKSPACE_CAPSULE);
    return handle ? PyLong_FromSsize_t(irst_last_run_count(handle->ws)) : NULL;
}

static PyMethodDef methods[] = {
    {"label", (PyCFunction)(void (*)(void))label, METH_FASTCALL, label_doc},
    {"last_run_count", last_run_count, METH_O,
     "last_run_count(workspace) -> int: foreground runs the workspace's last label() call found, -1 before one."},
    {"new_workspace", new_workspace, METH_NOARGS, "new_workspace() -> capsule: reusable buffers for label()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_labeller", "Run-based 8-connected labeller of float32 logit maps (C99).", -1,
    methods, NULL, NULL, NULL, NULL,
};

/* (name, numpy dtype string) per record field, in struct order: the Python side builds its dtype from this. */
static PyObject *target_fields(void)
{
    PyObject *fields = PyList_New(0);
    if (!fields)
        return NULL;
#define APPEND_FIELD(name, kind)                                                                                \
    do {                                                                                                        \
        PyObject *pair = Py_BuildValue("(ss)", #name, kind);                                                    \
        if (!pair || PyList_Append(fields, pair) != 0) {                                                        \
            Py_XDECREF(pair);                                                                                   \
            Py_DECREF(fields);                                                                                  \
            return NULL;                                                                                        \
        }                                                                                                       \
        Py_DECREF(pair);                                                                                        \
    } while (0);
#define APPEND_INT(name) APPEND_FIELD(name, "i8")
#define APPEND_REAL(name) APPEND_FIELD(name, "f8")
    IRST_TARGET_FIELDS(APPEND_INT, APPEND_REAL)
#undef APPEND_INT
#undef APPEND_REAL
#undef APPEND_FIELD
    PyObject *tuple = PyList_AsTuple(fields);
    Py_DECREF(fields);
    return tuple;
}

PyMODINIT_FUNC PyInit__labeller(void)
{
    PyObject *module = PyModule_Create(&module_def);
    if (!module)
        return NULL;
    PyObject *fields = target_fields();
    if (!fields || PyModule_AddObject(module, "TARGET_FIELDS", fields) != 0) {
        Py_XDECREF(fields);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "RECORD_SIZE", (long)sizeof(irst_target)) != 0 ||
        PyModule_AddStringConstant(module, "COMPILER", COMPILER_NAME) != 0 ||
        PyModule_AddStringConstant(module, "SCAN", irst_scan_name()) != 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
