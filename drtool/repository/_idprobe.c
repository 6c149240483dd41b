/* The disk index's lookup of a blob id once its id table is paged
 * (drtool/repository/idtable.py, IdTable.answerer), in C.
 *
 * Why (docs/performance.md, "Issue 21: the paged lookup in C"): past the
 * residency budget the id table's buckets are read with pread instead of
 * mapped, and a present id then cost 3.5-5.8 us in Python, above the 2 us a
 * backup's lookup may take: the Bloom filter's four bit tests through a
 * memoryview (~0.9 us), the pread (~1.1 us from Python), the window search
 * and the seqlock's token slices.  The kernel's part of it, one pread of
 * 256 bytes from the page cache, is a fraction of that.
 *
 * A PagedProbe answers exactly what the Python closure answers: False when
 * the filter rules the id out or the table holds the token's state and the
 * id is in neither of its two buckets; True when it is in one; None (ask
 * LMDB) when the table's token is not the snapshot's, before or after the
 * read, or the home bucket overflowed, or the id is a slot marker.
 *
 * The read is tried first with RWF_NOWAIT while holding the GIL (a page in
 * the page cache: a fraction of a microsecond; handing the GIL over under
 * contention would cost a switch interval); a page that must come from disk
 * is read with the GIL released.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define ID_SIZE 32
#define WINDOW (8 * ID_SIZE)   /* an id's home bucket and the next: 8 slots */
#define TOKEN_AT 8
#define TOKEN_SIZE 8
#define FILTER_BLOCK 64        /* bytes: the Bloom filter's blocks are one cache line */

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

static int nowait_supported = 1;

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *filter_map;      /* the filter's mmap, or NULL */
    Py_ssize_t filter_offset;  /* its bits start here */
    uint64_t filter_blocks;
    PyObject *table_map;       /* the table's mmap (its header's token is read per lookup) */
    char token[TOKEN_SIZE];
    int fd;
    uint64_t buckets;
    Py_ssize_t base;           /* file offset of bucket 0 */
    Py_ssize_t flags;          /* file offset of the overflow flags */
} PagedProbe;

static uint64_t
load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t
load_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* 1: maybe in the filter, 0: certainly not, -1: error set. */
static int
filter_maybe(PagedProbe *self, const unsigned char *id)
{
    Py_buffer view;
    if (PyObject_GetBuffer(self->filter_map, &view, PyBUF_SIMPLE) < 0)
        return -1;
    uint64_t a = load_le64(id), b = load_le64(id + 8);
    Py_ssize_t block = self->filter_offset + (Py_ssize_t)((a % self->filter_blocks) * FILTER_BLOCK);
    int maybe = 0;
    if (block + FILTER_BLOCK <= view.len) {
        const unsigned char *bits = (const unsigned char *)view.buf + block;
        maybe = ((bits[b >> 3 & 63] >> (b & 7)) & 1)
             && ((bits[b >> 12 & 63] >> (b >> 9 & 7)) & 1)
             && ((bits[b >> 21 & 63] >> (b >> 18 & 7)) & 1)
             && ((bits[b >> 30 & 63] >> (b >> 27 & 7)) & 1);
    } else {
        PyErr_SetString(PyExc_ValueError, "filter block outside its mapping");
        PyBuffer_Release(&view);
        return -1;
    }
    PyBuffer_Release(&view);
    return maybe;
}

/* 1: the table's header holds our token, 0: it does not, -1: error set. */
static int
token_current(PagedProbe *self)
{
    Py_buffer view;
    if (PyObject_GetBuffer(self->table_map, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int same = view.len >= TOKEN_AT + TOKEN_SIZE
               && memcmp((const char *)view.buf + TOKEN_AT, self->token, TOKEN_SIZE) == 0;
    PyBuffer_Release(&view);
    return same;
}

/* pread of the page cache without giving up the GIL; from disk with it released. */
static Py_ssize_t
read_at(int fd, void *buf, size_t size, off_t offset)
{
    ssize_t got = -1;
    if (nowait_supported) {
        struct iovec iov = {buf, size};
        got = preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
        if (got >= 0 && (size_t)got == size)
            return got;
        if (got < 0 && (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL))
            nowait_supported = 0;
    }
    Py_BEGIN_ALLOW_THREADS
    do {
        got = pread(fd, buf, size, offset);
    } while (got < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (got < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    return got;
}

static int
is_marker(const unsigned char *id, unsigned char fill)
{
    for (int i = 0; i < ID_SIZE; i++)
        if (id[i] != fill)
            return 0;
    return 1;
}

static PyObject *
probe_answer(PagedProbe *self, const unsigned char *id)
{
    if (self->filter_map != NULL) {
        int maybe = filter_maybe(self, id);
        if (maybe < 0)
            return NULL;
        if (!maybe)
            Py_RETURN_FALSE;
    }
    int same = token_current(self);
    if (same <= 0)
        return same < 0 ? NULL : Py_NewRef(Py_None);
    uint64_t home = (uint64_t)(((unsigned __int128)load_be64(id) * self->buckets) >> 64);
    unsigned char window[WINDOW];
    Py_ssize_t got = read_at(self->fd, window, WINDOW, (off_t)(self->base + (Py_ssize_t)home * (WINDOW / 2)));
    if (got < 0)
        return NULL;
    if (got != WINDOW)
        Py_RETURN_NONE;  /* a short table file: LMDB answers */
    int found = 0;
    for (int slot = 0; slot < WINDOW; slot += ID_SIZE) {
        if (memcmp(window + slot, id, ID_SIZE) == 0) {
            found = 1;
            break;
        }
    }
    if (!found && !is_marker(window + WINDOW - ID_SIZE, 0)) {
        unsigned char flag = 0;
        got = read_at(self->fd, &flag, 1, (off_t)(self->flags + (Py_ssize_t)home));
        if (got < 0)
            return NULL;
        if (got != 1 || flag)
            Py_RETURN_NONE;  /* the window was full once: an id of this bucket may be in LMDB only */
    }
    same = token_current(self);  /* the seqlock: a writer may have begun meanwhile */
    if (same <= 0)
        return same < 0 ? NULL : Py_NewRef(Py_None);
    if (is_marker(id, 0) || is_marker(id, 0xff))
        Py_RETURN_NONE;
    return PyBool_FromLong(found);
}

static PyObject *
probe_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "PagedProbe takes one blob id");
        return NULL;
    }
    PyObject *arg = args[0];
    if (PyBytes_Check(arg)) {
        if (PyBytes_GET_SIZE(arg) != ID_SIZE)
            Py_RETURN_NONE;  /* not an id the table can hold */
        return probe_answer((PagedProbe *)callable, (const unsigned char *)PyBytes_AS_STRING(arg));
    }
    Py_buffer id;
    if (PyObject_GetBuffer(arg, &id, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *answer = id.len == ID_SIZE ? probe_answer((PagedProbe *)callable, id.buf) : Py_NewRef(Py_None);
    PyBuffer_Release(&id);
    return answer;
}

static int
probe_init(PagedProbe *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"filter_map", "filter_offset", "filter_blocks", "table_map", "token", "fd",
                               "buckets", "base", "flags", NULL};
    PyObject *filter_map, *table_map;
    Py_buffer token;
    unsigned long long filter_blocks, buckets;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKOy*iKnn", keywords, &filter_map, &self->filter_offset,
                                     &filter_blocks, &table_map, &token, &self->fd, &buckets, &self->base,
                                     &self->flags))
        return -1;
    if (token.len != TOKEN_SIZE || buckets == 0 || (filter_map != Py_None && filter_blocks == 0)) {
        PyBuffer_Release(&token);
        PyErr_SetString(PyExc_ValueError, "a token of 8 bytes, buckets and filter blocks above 0");
        return -1;
    }
    memcpy(self->token, token.buf, TOKEN_SIZE);
    PyBuffer_Release(&token);
    Py_XSETREF(self->filter_map, filter_map == Py_None ? NULL : Py_NewRef(filter_map));
    Py_XSETREF(self->table_map, Py_NewRef(table_map));
    self->filter_blocks = filter_blocks;
    self->buckets = buckets;
    self->vectorcall = probe_vectorcall;
    return 0;
}

static void
probe_dealloc(PagedProbe *self)
{
    Py_XDECREF(self->filter_map);
    Py_XDECREF(self->table_map);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject PagedProbeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "drtool.repository._idprobe.PagedProbe",
    .tp_doc = PyDoc_STR("PagedProbe(filter_map, filter_offset, filter_blocks, table_map, token, fd, buckets,"
                        " base, flags)(blob_id) -> True, False or None (ask LMDB)"),
    .tp_basicsize = sizeof(PagedProbe),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)probe_init,
    .tp_dealloc = (destructor)probe_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PagedProbe, vectorcall),
};

static struct PyModuleDef idprobe_module = {
    PyModuleDef_HEAD_INIT, "_idprobe",
    "The paged id table's lookup in C (drtool/repository/idtable.py).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__idprobe(void)
{
    if (PyType_Ready(&PagedProbeType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&idprobe_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "PagedProbe", (PyObject *)&PagedProbeType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
