/*
 * C versions of the two per-key loops of a durable batch (Store.write_batch and a shard's
 * apply): encoding a KV_BATCH record and inserting the pairs into the memtable; and two
 * loops every flush and merge runs over all its keys: encoding a table's data blocks and
 * building its bloom filter. In Python
 * they cost ~30 us of a 64-key batch whose fdatasync takes ~110 us (docs/benchmarks.md,
 * "Storage engine vs sqlite3"). Each function has a Python twin that defines its meaning
 * (wal_records.KvBatch.encode_pairs, memtable.Memtable.set_many); the tests run both on the
 * same inputs and compare. When this module is not built, the Python twins run.
 *
 * The format (wal_records.py): header "<QI" (sequence, count), then per op "<BII" (kind,
 * key length, value length), the key, the value. Kinds: PUT = 1, DELETE = 2 (no value).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define KV_BATCH_HEADER_SIZE 12
#define KV_OP_HEADER_SIZE 9
#define OP_PUT 1
#define OP_DELETE 2

static void put_u32(char *out, uint32_t v) {
    out[0] = (char)(v & 0xff);
    out[1] = (char)((v >> 8) & 0xff);
    out[2] = (char)((v >> 16) & 0xff);
    out[3] = (char)((v >> 24) & 0xff);
}

static void put_u64(char *out, uint64_t v) {
    put_u32(out, (uint32_t)(v & 0xffffffffu));
    put_u32(out + 4, (uint32_t)(v >> 32));
}

/* The bytes a (key, value-or-None) pair adds to a KV_BATCH after its op header, or -1 when
 * the pair is off the fast path: not an exact 2-tuple, a key not exactly `bytes` of
 * key_min..key_max bytes, a value neither None nor exactly `bytes` of at most value_max.
 * Exact types only: the hash and comparisons of a subclass could run Python code. */
static Py_ssize_t fast_pair_size(PyObject *pair, Py_ssize_t key_min, Py_ssize_t key_max,
                                 Py_ssize_t value_max) {
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
        return -1;
    }
    PyObject *key = PyTuple_GET_ITEM(pair, 0);
    PyObject *value = PyTuple_GET_ITEM(pair, 1);
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) < key_min ||
        PyBytes_GET_SIZE(key) > key_max) {
        return -1;
    }
    if (value == Py_None) {
        return PyBytes_GET_SIZE(key);
    }
    if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > value_max) {
        return -1;
    }
    return PyBytes_GET_SIZE(key) + PyBytes_GET_SIZE(value);
}

/* encode_kv_batch(sequence, pairs, key_size_bytes_max, value_size_bytes_max) -> bytes | None
 *
 * None when any pair is off the fast path (a key that is not exactly `bytes` of
 * 1..key_size_bytes_max bytes, a value neither None nor exactly `bytes` of at most
 * value_size_bytes_max bytes): the caller then runs the Python encoder, which raises the
 * precise error or accepts the pair. Nothing is half-written: the sizes are checked in a first
 * pass, the bytes written in a second. */
static PyObject *encode_kv_batch(PyObject *Py_UNUSED(self), PyObject *args) {
    unsigned long long sequence;
    PyObject *pairs;
    Py_ssize_t key_max, value_max;
    if (!PyArg_ParseTuple(args, "KOnn", &sequence, &pairs, &key_max, &value_max)) {
        return NULL;
    }
    /* A tuple (the caller's own when it passed one): nothing below can change it, even
     * Python code run by a garbage collection between the two passes. */
    PyObject *seq = PySequence_Tuple(pairs);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    if ((unsigned long long)count > 0xffffffffULL) {
        Py_DECREF(seq);
        Py_RETURN_NONE;
    }
    Py_ssize_t total = KV_BATCH_HEADER_SIZE;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t size = fast_pair_size(items[i], 1, key_max, value_max);
        if (size < 0) {
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        total += KV_OP_HEADER_SIZE + size;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    char *p = PyBytes_AS_STRING(out);
    put_u64(p, (uint64_t)sequence);
    put_u32(p + 8, (uint32_t)count);
    p += KV_BATCH_HEADER_SIZE;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyTuple_GET_ITEM(items[i], 0);
        PyObject *value = PyTuple_GET_ITEM(items[i], 1);
        Py_ssize_t key_len = PyBytes_GET_SIZE(key);
        Py_ssize_t value_len = value == Py_None ? 0 : PyBytes_GET_SIZE(value);
        p[0] = (char)(value == Py_None ? OP_DELETE : OP_PUT);
        put_u32(p + 1, (uint32_t)key_len);
        put_u32(p + 5, (uint32_t)value_len);
        p += KV_OP_HEADER_SIZE;
        memcpy(p, PyBytes_AS_STRING(key), (size_t)key_len);
        p += key_len;
        if (value_len) {
            memcpy(p, PyBytes_AS_STRING(value), (size_t)value_len);
            p += value_len;
        }
    }
    Py_DECREF(seq);
    return out;
}

/* memtable_set_many(entries, new_keys, pairs, overhead, size, tombstones)
 *     -> (size, tombstones) | None
 *
 * Memtable.set_many's loop: for each (key, value-or-None) pair in order, note a key not yet in
 * `entries` in `new_keys`, set entries[key] = value, and keep the byte size (key + value +
 * overhead per entry) and the tombstone count. None, having changed nothing, unless every key
 * is exactly `bytes` and every value None or exactly `bytes`: then no dict operation below
 * runs Python code (bytes hash and compare in C), so the batch cannot change under the loop. */
static PyObject *memtable_set_many(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *entries, *new_keys, *pairs;
    Py_ssize_t overhead, size, tombstones;
    if (!PyArg_ParseTuple(args, "O!O!Onnn", &PyDict_Type, &entries, &PyList_Type, &new_keys,
                          &pairs, &overhead, &size, &tombstones)) {
        return NULL;
    }
    PyObject *seq = PySequence_Tuple(pairs);
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (fast_pair_size(items[i], 0, PY_SSIZE_T_MAX, PY_SSIZE_T_MAX) < 0) {
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyTuple_GET_ITEM(items[i], 0);
        PyObject *value = PyTuple_GET_ITEM(items[i], 1);
        Py_ssize_t key_len = PyBytes_GET_SIZE(key);
        PyObject *previous = PyDict_GetItemWithError(entries, key); /* borrowed */
        if (previous == NULL) {
            if (PyErr_Occurred() || PyList_Append(new_keys, key) < 0) {
                goto error;
            }
        } else if (previous == Py_None) {
            size -= key_len + overhead;
            tombstones -= 1;
        } else {
            Py_ssize_t previous_len = PyBytes_Check(previous) ? PyBytes_GET_SIZE(previous)
                                                              : PyObject_Length(previous);
            if (previous_len < 0) {
                goto error;
            }
            size -= key_len + previous_len + overhead;
        }
        if (PyDict_SetItem(entries, key, value) < 0) {
            goto error;
        }
        if (value == Py_None) {
            size += key_len + overhead;
            tombstones += 1;
        } else {
            size += key_len + PyBytes_GET_SIZE(value) + overhead;
        }
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nn)", size, tombstones);
error:
    Py_DECREF(seq);
    return NULL;
}

/* Bits a key sets in its bloom word from 12 bits of its hash: two 6-bit bit numbers. */
static uint64_t mask_of_12_bits(uint32_t v) {
    return ((uint64_t)1 << (v & 63)) | ((uint64_t)1 << ((v >> 6) & 63));
}

/* bloom_build_words(word_hashes, bit_hashes, word_count) -> bytes | None
 *
 * bloom.build_words' loop: the filter's words as native-order u64s, from two buffers of
 * u32 hashes (array('I')). None when the buffers are not two equally long u32 arrays, or
 * word_count is not positive: the Python twin then runs and raises what it raises. */
static PyObject *bloom_build_words(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *word_hashes_obj, *bit_hashes_obj;
    Py_ssize_t word_count;
    if (!PyArg_ParseTuple(args, "OOn:bloom_build_words", &word_hashes_obj, &bit_hashes_obj,
                          &word_count)) {
        return NULL;
    }
    if (word_count <= 0) {
        Py_RETURN_NONE;
    }
    Py_buffer word_hashes, bit_hashes;
    if (PyObject_GetBuffer(word_hashes_obj, &word_hashes, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(bit_hashes_obj, &bit_hashes, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        PyBuffer_Release(&word_hashes);
        Py_RETURN_NONE;
    }
    PyObject *result = NULL;
    int is_u32 = word_hashes.itemsize == 4 && bit_hashes.itemsize == 4 &&
                 word_hashes.format != NULL && bit_hashes.format != NULL &&
                 strcmp(word_hashes.format, "I") == 0 && strcmp(bit_hashes.format, "I") == 0;
    if (!is_u32 || word_hashes.len != bit_hashes.len) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, word_count * (Py_ssize_t)sizeof(uint64_t));
    if (result == NULL) {
        goto done;
    }
    uint64_t *words = (uint64_t *)PyBytes_AS_STRING(result);
    memset(words, 0, (size_t)word_count * sizeof(uint64_t));
    const uint32_t *word_of = (const uint32_t *)word_hashes.buf;
    const uint32_t *bits_of = (const uint32_t *)bit_hashes.buf;
    Py_ssize_t keys = word_hashes.len / 4;
    for (Py_ssize_t i = 0; i < keys; i++) {
        uint32_t bits = bits_of[i];
        words[(uint64_t)word_of[i] % (uint64_t)word_count] |=
            mask_of_12_bits(bits & 4095) | mask_of_12_bits((bits >> 12) & 4095) |
            ((uint64_t)1 << ((bits >> 24) & 63));
    }
done:
    PyBuffer_Release(&word_hashes);
    PyBuffer_Release(&bit_hashes);
    return result;
}

/* encode_data_block(keys, values, payload_bytes_max) -> bytes | None
 *
 * sstable_format.encode_data_block's payload (see there for the layout): a u32 header
 * (count, fixed key length or 0, fixed value length or 0, flags), count + 1 value offsets,
 * count + 1 key offsets unless every key has one length, a kind byte per entry when any is a
 * tombstone, the keys, the values. None when keys and values are not two equally long,
 * non-empty lists of exactly `bytes` (values: or None), or the payload would exceed
 * payload_bytes_max: the Python twin then runs (and fails its own checks). */
static PyObject *encode_data_block(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *keys, *values;
    Py_ssize_t payload_max;
    if (!PyArg_ParseTuple(args, "OOn:encode_data_block", &keys, &values, &payload_max)) {
        return NULL;
    }
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(values)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(keys);
    if (count < 1 || count != PyList_GET_SIZE(values) || count > (Py_ssize_t)UINT32_MAX) {
        Py_RETURN_NONE;
    }
    /* First pass: types and sizes; nothing is written before every entry passed. */
    Py_ssize_t key_total = 0, value_total = 0;
    Py_ssize_t first_key_length = -1, first_value_length = -1;
    int keys_equal = 1, values_equal = 1, has_tombstones = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *value = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(key)) {
            Py_RETURN_NONE;
        }
        Py_ssize_t key_length = PyBytes_GET_SIZE(key);
        Py_ssize_t value_length = 0;
        if (value == Py_None) {
            has_tombstones = 1;
        } else if (PyBytes_CheckExact(value)) {
            value_length = PyBytes_GET_SIZE(value);
        } else {
            Py_RETURN_NONE;
        }
        if (i == 0) {
            first_key_length = key_length;
            first_value_length = value_length;
        } else {
            keys_equal &= key_length == first_key_length;
            values_equal &= value_length == first_value_length;
        }
        key_total += key_length;
        value_total += value_length;
        if (key_total > payload_max || value_total > payload_max) {
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t fixed_key_length = keys_equal ? first_key_length : 0;
    Py_ssize_t fixed_value_length = (has_tombstones || !values_equal) ? -1 : first_value_length;
    Py_ssize_t header_size = 16 + 4 * (count + 1);
    if (fixed_key_length == 0) {
        header_size += 4 * (count + 1);
    }
    if (has_tombstones) {
        header_size += count;
    }
    Py_ssize_t total = header_size + key_total + value_total;
    if (total > payload_max || total > (Py_ssize_t)UINT32_MAX) {
        Py_RETURN_NONE;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(result);
    put_u32(out, (uint32_t)count);
    put_u32(out + 4, (uint32_t)fixed_key_length);
    put_u32(out + 8, (uint32_t)(fixed_value_length > 0 ? fixed_value_length : 0));
    put_u32(out + 12, (uint32_t)((has_tombstones ? 1 : 0) | (fixed_value_length >= 0 ? 2 : 0)));
    char *cursor = out + 16;
    uint32_t offset = (uint32_t)(header_size + key_total);
    put_u32(cursor, offset);
    cursor += 4;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        if (value != Py_None) {
            offset += (uint32_t)PyBytes_GET_SIZE(value);
        }
        put_u32(cursor, offset);
        cursor += 4;
    }
    if (fixed_key_length == 0) {
        offset = (uint32_t)header_size;
        put_u32(cursor, offset);
        cursor += 4;
        for (Py_ssize_t i = 0; i < count; i++) {
            offset += (uint32_t)PyBytes_GET_SIZE(PyList_GET_ITEM(keys, i));
            put_u32(cursor, offset);
            cursor += 4;
        }
    }
    if (has_tombstones) {
        for (Py_ssize_t i = 0; i < count; i++) {
            *cursor++ = (char)(PyList_GET_ITEM(values, i) == Py_None ? 1 : 0);
        }
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        memcpy(cursor, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
        cursor += PyBytes_GET_SIZE(key);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = PyList_GET_ITEM(values, i);
        if (value != Py_None) {
            memcpy(cursor, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
            cursor += PyBytes_GET_SIZE(value);
        }
    }
    if (cursor != out + total) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_AssertionError, "encode_data_block: size mismatch");
        return NULL;
    }
    return result;
}

static PyMethodDef methods[] = {
    {"encode_kv_batch", encode_kv_batch, METH_VARARGS,
     "A KV_BATCH payload from (key, value-or-None) pairs, or None off the fast path."},
    {"memtable_set_many", memtable_set_many, METH_VARARGS,
     "Memtable.set_many's loop: (size_bytes, tombstone_count), or None off the fast path."},
    {"encode_data_block", encode_data_block, METH_VARARGS,
     "An SSTable data block's payload, or None off the fast path."},
    {"bloom_build_words", bloom_build_words, METH_VARARGS,
     "bloom.build_words' loop: the words as native u64 bytes, or None off the fast path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups", "C loops of the storage hot path.", -1, methods,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
