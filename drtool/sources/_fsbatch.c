/* Directory listings and small-file reads with the GIL released once per directory
 * (per 1,024 entries) and once per batch of files.
 *
 * Why (docs/performance.md, "Many files, cold: one GIL release per directory
 * and per batch"): Python's os.scandir, lstat, open, posix_fadvise, readv,
 * fstat and close each release the GIL and take it back, ~7 times per file
 * of a backup.  With the walk, the chunk workers and the other listing or
 * reading thread wanting it, each of those became a hand-off between threads
 * (a futex wake-up of the other vCPU), and on the 2-core VM a fifth of a cold
 * backup's samples were those hand-offs.  Here a directory is listed and
 * lstat'ed (1,024 entries at a time), or a whole batch of small files opened,
 * prefetched, read, fstat'ed and closed, without the GIL and without touching
 * a Python object; the Python objects are made afterwards with the GIL held.
 *
 * The rules about what an outcome means (vanished, replaced, grown, changed)
 * stay in Python (drtool/sources/fsbatch.py, drtool/backup/readers.py); this
 * file only makes the system calls the pure-Python path makes, in the same
 * order, and reports each one's result.  drtool works without it (the
 * pure-Python path is the fallback; setup.py builds it as optional).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef O_NOATIME
#define O_NOATIME 0
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

/* The outcomes of one file of read_batch (mirrored in drtool/sources/fsbatch.py). */
enum { READ_OK = 0, OPEN_FAILED = 1, READ_FAILED = 2, GREW = 3, FSTAT_FAILED = 4 };

static PyTypeObject *stat_result;  /* os.stat_result: listings carry what os.lstat gives */

/* ------------------------------------------------------------------ stat_result */

static PyObject *
from_id(unsigned long id)
{
    if (id == (unsigned long)(uid_t)-1)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLong(id);
}

/* sec * 10**9 + nsec as a Python int, exact at any time (not only within 64 bits). */
static PyObject *
ns_of(time_t sec, unsigned long nsec)
{
    if (sec > -9000000000LL && sec < 9000000000LL)
        return PyLong_FromLongLong((long long)sec * 1000000000LL + (long long)nsec);
    PyObject *s = PyLong_FromLongLong((long long)sec);
    PyObject *billion = PyLong_FromLong(1000000000L);
    PyObject *frac = PyLong_FromUnsignedLong(nsec);
    PyObject *mul = (s && billion && frac) ? PyNumber_Multiply(s, billion) : NULL;
    PyObject *ns = mul ? PyNumber_Add(mul, frac) : NULL;
    Py_XDECREF(s);
    Py_XDECREF(billion);
    Py_XDECREF(frac);
    Py_XDECREF(mul);
    return ns;
}

/* Seconds, float seconds and nanoseconds of one time, as posixmodule's fill_time. */
static int
fill_time(PyObject *v, int index, time_t sec, unsigned long nsec)
{
    PyObject *s = PyLong_FromLongLong((long long)sec);
    PyObject *f = PyFloat_FromDouble(sec + nsec * 1e-9);
    PyObject *ns = ns_of(sec, nsec);
    if (s == NULL || f == NULL || ns == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(f);
        Py_XDECREF(ns);
        return -1;
    }
    PyStructSequence_SET_ITEM(v, index, s);
    PyStructSequence_SET_ITEM(v, index + 3, f);
    PyStructSequence_SET_ITEM(v, index + 6, ns);
    return 0;
}

/* An os.stat_result equal, field by field, to the one os.lstat makes on Linux. */
static PyObject *
make_stat(const struct stat *st)
{
    PyObject *v = PyStructSequence_New(stat_result);
    PyObject *x;
    if (v == NULL)
        return NULL;
#define SET(i, expr) do { x = (expr); if (x == NULL) goto fail; PyStructSequence_SET_ITEM(v, i, x); } while (0)
    SET(0, PyLong_FromLong((long)st->st_mode));
    SET(1, PyLong_FromUnsignedLongLong((unsigned long long)st->st_ino));
    SET(2, PyLong_FromUnsignedLongLong((unsigned long long)st->st_dev));
    SET(3, PyLong_FromLong((long)st->st_nlink));
    SET(4, from_id((unsigned long)st->st_uid));
    SET(5, from_id((unsigned long)st->st_gid));
    SET(6, PyLong_FromLongLong((long long)st->st_size));
    if (fill_time(v, 7, st->st_atim.tv_sec, (unsigned long)st->st_atim.tv_nsec) < 0
        || fill_time(v, 8, st->st_mtim.tv_sec, (unsigned long)st->st_mtim.tv_nsec) < 0
        || fill_time(v, 9, st->st_ctim.tv_sec, (unsigned long)st->st_ctim.tv_nsec) < 0)
        goto fail;
    SET(16, PyLong_FromLong((long)st->st_blksize));
    SET(17, PyLong_FromLong((long)st->st_blocks));
    SET(18, PyLong_FromUnsignedLongLong((unsigned long long)st->st_rdev));
#undef SET
    return v;
fail:
    Py_DECREF(v);
    return NULL;
}

/* ------------------------------------------------------------------ scan */

typedef struct {
    size_t name_at;   /* offset in the names buffer */
    size_t name_len;
    int err;          /* errno of the entry's fstatat, 0 when st holds its result */
    struct stat st;
} Listed;

typedef struct {
    Listed *items;
    size_t count, room;
    char *names;
    size_t names_len, names_room;
} Listing;

static void
listing_free(Listing *l)
{
    free(l->items);
    free(l->names);
}

/* Entries listed per GIL release: a directory of any size is listed through a
 * buffer of this many entries (~160 bytes each, names aside), not held whole in C. */
#define CHUNK_ENTRIES 1024

/* Without the GIL: up to CHUNK_ENTRIES more entries of ``dir`` (. and .. left
 * out), each with its lstat (fstatat on the directory's descriptor).  Sets
 * *done at the end of the directory.  Returns 0 or an errno (readdir, ENOMEM). */
static int
list_some(DIR *dir, Listing *l, int *done)
{
    int dfd = dirfd(dir);
    l->count = 0;
    l->names_len = 0;
    while (l->count < CHUNK_ENTRIES) {
        errno = 0;
        struct dirent *de = readdir(dir);
        if (de == NULL) {
            *done = 1;
            return errno;
        }
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        size_t len = strlen(name);
        if (l->count == l->room) {
            size_t room = l->room ? 2 * l->room : 64;
            Listed *items = realloc(l->items, room * sizeof(Listed));
            if (items == NULL)
                return ENOMEM;
            l->items = items;
            l->room = room;
        }
        if (l->names_len + len > l->names_room) {
            size_t room = l->names_room ? 2 * l->names_room : 4096;
            while (room < l->names_len + len)
                room *= 2;
            char *names = realloc(l->names, room);
            if (names == NULL)
                return ENOMEM;
            l->names = names;
            l->names_room = room;
        }
        Listed *it = &l->items[l->count++];
        memcpy(l->names + l->names_len, name, len);
        it->name_at = l->names_len;
        it->name_len = len;
        l->names_len += len;
        int rc;
        do {
            rc = fstatat(dfd, name, &it->st, AT_SYMLINK_NOFOLLOW);
        } while (rc != 0 && errno == EINTR);
        it->err = rc == 0 ? 0 : errno;
    }
    return 0;
}

/* Appends (path + '/' + name as os.scandir's DirEntry.path, name decoded as
 * os.fsdecode, stat_result) to ``entries`` for each listed entry, and (path, errno)
 * to ``problems`` for each entry whose lstat failed.  -1 with an exception set. */
static int
append_listing(PyObject *dirpath, const Listing *l, PyObject *entries, PyObject *problems)
{
    const char *base = PyBytes_AS_STRING(dirpath);
    Py_ssize_t base_len = PyBytes_GET_SIZE(dirpath);
    int sep = base_len > 0 && base[base_len - 1] != '/';
    for (size_t i = 0; i < l->count; i++) {
        const Listed *it = &l->items[i];
        const char *name = l->names + it->name_at;
        PyObject *item, *full = PyBytes_FromStringAndSize(NULL, base_len + sep + (Py_ssize_t)it->name_len);
        if (full == NULL)
            return -1;
        char *out = PyBytes_AS_STRING(full);
        memcpy(out, base, base_len);
        if (sep)
            out[base_len] = '/';
        memcpy(out + base_len + sep, name, it->name_len);
        if (it->err) {
            item = Py_BuildValue("(Ni)", full, it->err);
        }
        else {
            PyObject *decoded = PyUnicode_DecodeFSDefaultAndSize(name, (Py_ssize_t)it->name_len);
            PyObject *st = decoded ? make_stat(&it->st) : NULL;
            item = st ? PyTuple_Pack(3, full, decoded, st) : NULL;
            Py_DECREF(full);
            Py_XDECREF(decoded);
            Py_XDECREF(st);
        }
        if (item == NULL || PyList_Append(it->err ? problems : entries, item) < 0) {
            Py_XDECREF(item);
            return -1;
        }
        Py_DECREF(item);
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(path: bytes) -> (entries, problems)\n\n"
"List a directory and lstat every entry, the GIL released once per 1,024 entries.\n"
"entries: (path, name, os.stat_result) in directory order; problems: (path, errno)\n"
"of entries whose lstat failed.  Raises OSError when the directory cannot be listed.");

static PyObject *
fsbatch_scan(PyObject *module, PyObject *path)
{
    if (!PyBytes_Check(path)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes a bytes path");
        return NULL;
    }
    if ((size_t)PyBytes_GET_SIZE(path) != strlen(PyBytes_AS_STRING(path))) {
        PyErr_SetString(PyExc_ValueError, "scan: embedded null byte");
        return NULL;
    }
    PyObject *entries = PyList_New(0), *problems = PyList_New(0), *result = NULL;
    Listing l = {0};
    DIR *dir = NULL;
    int err = 0, done = 0;
    if (entries == NULL || problems == NULL)
        goto out;
    while (!done) {
        Py_BEGIN_ALLOW_THREADS
        if (dir == NULL) {
            dir = opendir(PyBytes_AS_STRING(path));
            if (dir == NULL)
                err = errno;
        }
        if (dir != NULL)
            err = list_some(dir, &l, &done);
        Py_END_ALLOW_THREADS
        if (err)
            break;
        if (append_listing(path, &l, entries, problems) < 0)
            goto out;
    }
    if (err == ENOMEM)
        PyErr_NoMemory();
    else if (err) {
        errno = err;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path);
    }
    else
        result = PyTuple_Pack(2, entries, problems);
out:
    if (dir != NULL) {
        Py_BEGIN_ALLOW_THREADS
        closedir(dir);
        Py_END_ALLOW_THREADS
    }
    listing_free(&l);
    Py_XDECREF(entries);
    Py_XDECREF(problems);
    return result;
}

/* ------------------------------------------------------------------ read_batch */

typedef struct {
    const char *path;
    Py_ssize_t want;
    int fd;
    int kind;
    int err;
    Py_ssize_t got;
    struct stat st;
} Small;

/* sources.files.open_for_backup without the regular-file check: O_NOATIME
 * first, and without it where it is refused (it needs ownership). */
static int
open_small(const char *path, int *err)
{
    int base = O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC;
    int fd;
    do {
        fd = open(path, base | O_NOATIME);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && O_NOATIME != 0 && (errno == EPERM || errno == EACCES)) {
        do {
            fd = open(path, base);
        } while (fd < 0 && errno == EINTR);
    }
    if (fd < 0)
        *err = errno;
    return fd;
}

static int
fstat_retry(int fd, struct stat *st)
{
    int rc;
    do {
        rc = fstat(fd, st);
    } while (rc != 0 && errno == EINTR);
    return rc;
}

/* Without the GIL: open and prefetch every file, then read each into its place
 * (packed one after the other), fstat and close it; as ReadAhead._read_task. */
static void
read_all(Small *files, Py_ssize_t n, char *buf)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Small *f = &files[i];
        f->fd = open_small(f->path, &f->err);
        if (f->fd < 0) {
            f->kind = OPEN_FAILED;
            continue;
        }
#ifdef POSIX_FADV_WILLNEED
        (void)posix_fadvise(f->fd, 0, 0, POSIX_FADV_WILLNEED);  /* a hint only */
#endif
    }
    Py_ssize_t offset = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Small *f = &files[i];
        if (f->fd < 0)
            continue;
        ssize_t got;
        do {
            got = read(f->fd, buf + offset, (size_t)f->want);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            f->err = errno;
            f->kind = READ_FAILED;
            if (fstat_retry(f->fd, &f->st) != 0) {
                f->kind = FSTAT_FAILED;
                f->err = errno;
            }
        }
        else if (got == f->want) {
            f->kind = GREW;
        }
        else if (fstat_retry(f->fd, &f->st) != 0) {
            f->kind = FSTAT_FAILED;
            f->err = errno;
        }
        else {
            f->kind = READ_OK;
            f->got = got;
            offset += got;
        }
        close(f->fd);
        f->fd = -1;
    }
}

static PyObject *
small_result(const Small *f)
{
    switch (f->kind) {
    case READ_OK:
        return Py_BuildValue("(inLNNl)", READ_OK, f->got, (long long)f->st.st_size,
                             ns_of(f->st.st_mtim.tv_sec, (unsigned long)f->st.st_mtim.tv_nsec),
                             ns_of(f->st.st_ctim.tv_sec, (unsigned long)f->st.st_ctim.tv_nsec),
                             (long)f->st.st_mode);
    case READ_FAILED:
        return Py_BuildValue("(iiiiil)", READ_FAILED, f->err, 0, 0, 0, (long)f->st.st_mode);
    default:
        return Py_BuildValue("(iiiiil)", f->kind, f->err, 0, 0, 0, 0L);
    }
}

PyDoc_STRVAR(read_batch_doc,
"read_batch(paths: list[bytes], wants: list[int], buf: bytearray) -> list[tuple]\n\n"
"Open (O_NOATIME where allowed, O_NOFOLLOW, O_NONBLOCK) and prefetch every file, then\n"
"read each once, up to its ``want`` bytes, into ``buf`` packed one after the other, fstat\n"
"and close it: the GIL released once for the whole batch.  One tuple per file:\n"
"(kind, got or errno, size, mtime_ns, ctime_ns, mode) of its fstat after the read.");

static PyObject *
fsbatch_read_batch(PyObject *module, PyObject *args)
{
    PyObject *paths, *wants, *result = NULL;
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "O!O!w*:read_batch", &PyList_Type, &paths, &PyList_Type, &wants, &view))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(paths);
    PyObject *held = NULL;  /* the path objects, kept alive while the GIL is released */
    Small *files = NULL;
    if (PyList_GET_SIZE(wants) != n) {
        PyErr_SetString(PyExc_ValueError, "read_batch: paths and wants differ in length");
        goto done;
    }
    held = PyList_AsTuple(paths);
    files = PyMem_Calloc(n ? n : 1, sizeof(Small));
    if (held == NULL || files == NULL) {
        if (files == NULL)
            PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(held, i);
        if (!PyBytes_Check(p) || (size_t)PyBytes_GET_SIZE(p) != strlen(PyBytes_AS_STRING(p))) {
            PyErr_SetString(PyExc_ValueError, "read_batch: paths must be bytes without null bytes");
            goto done;
        }
        Py_ssize_t want = PyLong_AsSsize_t(PyList_GET_ITEM(wants, i));
        if (want < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "read_batch: a negative size");
            goto done;
        }
        files[i].path = PyBytes_AS_STRING(p);
        files[i].want = want;
        files[i].fd = -1;
        total += want;
    }
    if (total > view.len) {
        PyErr_SetString(PyExc_ValueError, "read_batch: the buffer is smaller than the batch");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    read_all(files, n, (char *)view.buf);
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *one = small_result(&files[i]);
        if (one == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, one);
    }
done:
    PyMem_Free(files);
    Py_XDECREF(held);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"scan", fsbatch_scan, METH_O, scan_doc},
    {"read_batch", fsbatch_read_batch, METH_VARARGS, read_batch_doc},
    {NULL, NULL, 0, NULL},
};

static int
fsbatch_exec(PyObject *module)
{
    PyObject *os = PyImport_ImportModule("os");
    if (os == NULL)
        return -1;
    PyObject *type = PyObject_GetAttrString(os, "stat_result");
    Py_DECREF(os);
    if (type == NULL)
        return -1;
    /* The layout make_stat fills: 10 visible fields, 19 in all (Linux). */
    PyObject *n_fields = PyObject_GetAttrString(type, "n_fields");
    PyObject *n_seq = PyObject_GetAttrString(type, "n_sequence_fields");
    long fields = n_fields ? PyLong_AsLong(n_fields) : -1, seq = n_seq ? PyLong_AsLong(n_seq) : -1;
    Py_XDECREF(n_fields);
    Py_XDECREF(n_seq);
    if (!PyType_Check(type) || fields != 19 || seq != 10) {
        Py_DECREF(type);
        PyErr_Clear();
        PyErr_SetString(PyExc_ImportError, "os.stat_result has another layout here");
        return -1;
    }
    stat_result = (PyTypeObject *)type;  /* a reference held for the process's life */
    if (PyModule_AddIntConstant(module, "READ_OK", READ_OK) < 0
        || PyModule_AddIntConstant(module, "OPEN_FAILED", OPEN_FAILED) < 0
        || PyModule_AddIntConstant(module, "READ_FAILED", READ_FAILED) < 0
        || PyModule_AddIntConstant(module, "GREW", GREW) < 0
        || PyModule_AddIntConstant(module, "FSTAT_FAILED", FSTAT_FAILED) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, fsbatch_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fsbatch",
    "One GIL release per directory listing and per batch of small-file reads.",
    0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fsbatch(void)
{
    return PyModuleDef_Init(&module_def);
}
