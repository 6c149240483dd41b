/* The block fingerprints of a sub-page MariaDB full (drtool/databases/subpage_format.py), in C.
 *
 * Why (docs/performance.md, "Physical backup: block fingerprints in C"): a
 * full with sub-page incrementals fingerprints every 512-byte block of every
 * tablespace page it streams, for the next night's block map.  In Python
 * that is one xxhash call per block, 4.9 million for a 2.5 GiB stream (~1 s
 * of CPU), made on the thread that drains mariabackup's pipe and holding the
 * GIL: the bench's full took 0.3-0.8 s longer with sub-page on than off.
 * Here the same XXH3-64 (libxxhash, Debian's libxxhash0) runs over a whole
 * buffer with the GIL released.
 *
 * The values are the ones the Python path computes (xxhash.xxh3_64_intdigest
 * of each block with the chain's seed; 0 made 1, the map's "not known"),
 * returned as native-endian unsigned 64-bit integers (array("Q") reads them).
 * drtool works without it: setup.py builds it as optional, and the pure-Python
 * path is the fallback.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#define BLOCK 512

PyDoc_STRVAR(fingerprints_doc,
"fingerprints(data, seed) -> bytes\n\n"
"XXH3-64 of each 512-byte block of data (a multiple of 512 bytes) with seed, as\n"
"native-endian unsigned 64-bit integers; a fingerprint of 0 is given as 1.");

static PyObject *
fp_fingerprints(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "y*K", &data, &seed))
        return NULL;
    if (data.len % BLOCK) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "data is not a whole number of 512-byte blocks");
        return NULL;
    }
    Py_ssize_t blocks = data.len / BLOCK;
    PyObject *out = PyBytes_FromStringAndSize(NULL, blocks * (Py_ssize_t)sizeof(uint64_t));
    if (out == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    uint64_t *values = (uint64_t *)PyBytes_AS_STRING(out);
    const char *bytes = (const char *)data.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < blocks; i++) {
        uint64_t value = XXH3_64bits_withSeed(bytes + i * BLOCK, BLOCK, (XXH64_hash_t)seed);
        values[i] = value ? value : 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef methods[] = {
    {"fingerprints", fp_fingerprints, METH_VARARGS, fingerprints_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_fingerprint",
    "XXH3-64 of every 512-byte block of a buffer, with the GIL released.",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__fingerprint(void)
{
    return PyModuleDef_Init(&module_def);
}
