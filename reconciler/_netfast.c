/* reconciler._netfast: the per-member loops of big ipsets, in C.
 *
 * Optional: every caller has the pure-Python code this replaces and uses it when this
 * module is not built, or when a function here returns None ("not the common case: do it
 * your way"). Each function gives exactly the answer of the Python code it stands for
 * (tests/test_netfast.py compares them on generated input); it never decides a refusal
 * itself. Addresses are parsed by libc's inet_pton, as Python's socket.inet_pton does.
 *
 * scan()    the fast path of a set's member check (ipset/checks.py) and list parse
 *           (ipset/lists.py): clean networks go into the seen dicts, the rest to a callback;
 * sort()    sorted(members, key=cidr.sort_key);
 * encode()  ipset/netlink.py's ADD/DEL entries, one per member;
 * format4() an IPv4 dump's fixed-layout entries as "a.b.c.d/n" strings, and same4()
 *           whether they are exactly a set of member strings, without making strings;
 * runs()    the runs of network items yamlparse._fold_runs folds (its _RUN regex's matches);
 * ops()     plan.member_ops's Op per member, and dicts() Change.to_dict's dict per op;
 * members() the member of each op of a run (ipset/render.py's log events, apply's batches).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ADDR_MAX 64 /* longer than any address inet_pton accepts */

static PyObject *KEY_OP, *KEY_MEMBER; /* "op" and "member", interned once */

typedef struct {
    int version;            /* 4 or 6 */
    int prefix;             /* the prefix length (the host length without a slash) */
    int slash;              /* the text has "/prefix" */
    unsigned char addr[16]; /* packed, network order */
} net_t;

/* Python's str.strip() on ASCII text strips these (str.isspace). */
static int is_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* The prefix as ipaddress writes it ("0".."max", no leading zero); -1 otherwise. With
 * `lenient`, any run of ASCII digits up to max (netlink.py's encoder: int(plen)). */
static int parse_prefix(const char *s, Py_ssize_t n, int max, int lenient) {
    if (n < 1 || n > (lenient ? 8 : 3))
        return -1;
    if (!lenient && n > 1 && s[0] == '0')
        return -1;
    int v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

/* Parse "address" or "address/prefix" as cidr.py's fast path does. 0: not one of its
 * forms (valid or not; the caller's Python decides). Only [0-9a-fA-F.:/] are accepted, so a
 * NUL, a zone (%) or anything odd is never read here. An IPv6 address with a dotted quad
 * is left to Python (ipaddress writes it its own way). */
static int parse_net(const char *s, Py_ssize_t n, int lenient, net_t *out) {
    char buf[ADDR_MAX];
    Py_ssize_t slash = -1;
    int colon = 0, dot = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '/') {
            if (slash >= 0)
                return 0;
            slash = i;
        } else if (c == ':') {
            if (slash < 0)
                colon = 1;
        } else if (c == '.') {
            if (slash < 0)
                dot = 1;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
            return 0;
        }
    }
    Py_ssize_t alen = slash >= 0 ? slash : n;
    if (alen <= 0 || alen >= ADDR_MAX)
        return 0;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    if (colon) {
        if (dot)
            return 0;
        if (inet_pton(AF_INET6, buf, out->addr) != 1)
            return 0;
        out->version = 6;
    } else {
        if (inet_pton(AF_INET, buf, out->addr) != 1)
            return 0;
        out->version = 4;
    }
    int host = out->version == 4 ? 32 : 128;
    out->slash = slash >= 0;
    if (slash >= 0) {
        out->prefix = parse_prefix(s + slash + 1, n - slash - 1, host, lenient);
        if (out->prefix < 0)
            return 0;
    } else {
        out->prefix = host;
    }
    return 1;
}

/* parse_net of a str object: 0 also for anything but an ASCII str. */
static int str_net(PyObject *item, int lenient, net_t *out) {
    return PyUnicode_CheckExact(item) && PyUnicode_IS_ASCII(item) &&
           parse_net(PyUnicode_DATA(item), PyUnicode_GET_LENGTH(item), lenient, out);
}

/* True if the address has bits set after the prefix. */
static int host_bits(const net_t *net) {
    int len = net->version == 4 ? 4 : 16;
    for (int bit = net->prefix; bit < len * 8; bit++)
        if (net->addr[bit / 8] & (0x80 >> (bit % 8)))
            return 1;
    return 0;
}

/* The canonical text of a clean network (no host bits), as cidr.parse_network gives it;
 * NULL with no exception set: leave it to Python; NULL with one: an error. */
static PyObject *canonical(PyObject *text, const char *s, Py_ssize_t n, const net_t *net) {
    if (net->version == 4) {
        if (!net->slash) { /* n < ADDR_MAX: parse_net checked */
            char buf[ADDR_MAX + 3];
            memcpy(buf, s, n);
            memcpy(buf + n, "/32", 3);
            return PyUnicode_FromStringAndSize(buf, n + 3);
        }
        if (PyUnicode_GET_LENGTH(text) == n) { /* nothing was stripped: the text itself */
            Py_INCREF(text);
            return text;
        }
        return PyUnicode_FromStringAndSize(s, n);
    }
    char buf[INET6_ADDRSTRLEN];
    if (inet_ntop(AF_INET6, net->addr, buf, sizeof buf) == NULL || strchr(buf, '.') != NULL)
        return NULL; /* an IPv4-mapped form: ipaddress writes it differently */
    return PyUnicode_FromFormat("%s/%d", buf, net->prefix);
}

/* scan(items, start, seen4, seen6, comments, slow) -> None
 *
 * For each item i: an ASCII str that, stripped as str.strip() does (and cut at "#" when
 * `comments`), is empty is skipped when `comments` (a blank or comment line); one that is a
 * clean network (fast form, no host bits, prefix > 0) of a version whose seen dict is given
 * and not yet in it is recorded there as seen[canonical] = start + i. Every other item is
 * handed to slow(start + i, item), in order, so it sees the dicts as the Python loop would. */
static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *items, *seen4, *seen6, *slow;
    Py_ssize_t start;
    int comments;
    if (!PyArg_ParseTuple(args, "O!nOOpO", &PyList_Type, &items, &start, &seen4, &seen6,
                          &comments, &slow))
        return NULL;
    if ((seen4 != Py_None && !PyDict_CheckExact(seen4)) ||
        (seen6 != Py_None && !PyDict_CheckExact(seen6))) {
        PyErr_SetString(PyExc_TypeError, "seen4 and seen6 must be dicts or None");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        int handled = 0;
        if (PyUnicode_CheckExact(item) && PyUnicode_IS_ASCII(item)) {
            const char *s = (const char *)PyUnicode_DATA(item);
            Py_ssize_t n = PyUnicode_GET_LENGTH(item);
            if (comments) {
                const char *hash = memchr(s, '#', n);
                if (hash != NULL)
                    n = hash - s;
            }
            while (n > 0 && is_space((unsigned char)s[n - 1]))
                n--;
            while (n > 0 && is_space((unsigned char)s[0])) {
                s++;
                n--;
            }
            net_t net;
            if (n == 0 && comments) {
                handled = 1;
            } else if (parse_net(s, n, 0, &net) && net.prefix > 0 && !host_bits(&net)) {
                PyObject *seen = net.version == 4 ? seen4 : seen6;
                if (seen != Py_None) {
                    PyObject *canon = canonical(item, s, n, &net);
                    if (canon == NULL && PyErr_Occurred())
                        return NULL;
                    if (canon != NULL) {
                        int has = PyDict_Contains(seen, canon);
                        if (has == 0) {
                            PyObject *index = PyLong_FromSsize_t(start + i);
                            int err = index == NULL ? -1 : PyDict_SetItem(seen, canon, index);
                            Py_XDECREF(index);
                            if (err < 0) {
                                Py_DECREF(canon);
                                return NULL;
                            }
                            handled = 1;
                        }
                        Py_DECREF(canon);
                        if (has < 0)
                            return NULL;
                    }
                }
            }
        }
        if (!handled) {
            Py_INCREF(item); /* the callback may change the list */
            PyObject *r = PyObject_CallFunction(slow, "nO", start + i, item);
            Py_DECREF(item);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
    }
    Py_RETURN_NONE;
}

typedef struct {
    /* cidr.sort_key's order (version, address, prefix) as three integers */
    uint64_t k0, k1, k2;
    Py_ssize_t index;
} keyed_t;

static uint64_t key_word(const keyed_t *k, int word) {
    return word == 0 ? k->k0 : word == 1 ? k->k1 : k->k2;
}

/* Sort by (k0, k1, k2): a least-significant-digit radix sort, a byte a pass, passes where
 * every key has the same byte skipped (an IPv4 set needs 4 or 5 of 24). Stable, as sorted()
 * is; ~5x faster than qsort here. Returns the buffer holding the result (a or tmp). */
static keyed_t *radix_sort(keyed_t *a, keyed_t *tmp, Py_ssize_t n) {
    for (int word = 2; word >= 0; word--) {
        for (int shift = 0; shift < 64; shift += 8) {
            Py_ssize_t count[257] = {0};
            for (Py_ssize_t i = 0; i < n; i++)
                count[((key_word(&a[i], word) >> shift) & 0xff) + 1]++;
            if (n == 0 || count[((key_word(&a[0], word) >> shift) & 0xff) + 1] == n)
                continue;
            for (int b = 0; b < 256; b++)
                count[b + 1] += count[b];
            for (Py_ssize_t i = 0; i < n; i++)
                tmp[count[(key_word(&a[i], word) >> shift) & 0xff]++] = a[i];
            keyed_t *t = a;
            a = tmp;
            tmp = t;
        }
    }
    return a;
}

static uint64_t be_bytes(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static void make_key(const net_t *net, keyed_t *k) {
    if (net->version == 4) {
        k->k0 = 4ULL << 56 | be_bytes(net->addr, 4) << 8 | (uint64_t)net->prefix;
        k->k1 = k->k2 = 0;
    } else {
        k->k0 = 6ULL << 56 | be_bytes(net->addr, 7);
        k->k1 = be_bytes(net->addr + 7, 8);
        k->k2 = (uint64_t)net->addr[15] << 8 | (uint64_t)net->prefix;
    }
}

/* The indexes of items[0..n) in the order of the objects' addresses (in `buf`, 2n long;
 * returns where). A set's members come in hash order, scattered in memory: read in address
 * order they are read as they lie, at about twice the speed (200,000 members). */
static keyed_t *by_address(PyObject **items, Py_ssize_t n, keyed_t *buf) {
    for (Py_ssize_t i = 0; i < n; i++) {
        buf[i].k0 = (uint64_t)(uintptr_t)items[i];
        buf[i].k1 = buf[i].k2 = 0;
        buf[i].index = i;
    }
    return radix_sort(buf, buf + n, n);
}

/* Room for `times` arrays of n keys (MemoryError set and NULL when there is none). */
static keyed_t *new_keys(Py_ssize_t n, Py_ssize_t times) {
    if (n > PY_SSIZE_T_MAX / (Py_ssize_t)(times * sizeof(keyed_t))) {
        PyErr_NoMemory();
        return NULL;
    }
    keyed_t *keys = PyMem_Malloc(sizeof(keyed_t) * times * (n ? n : 1));
    if (keys == NULL)
        PyErr_NoMemory();
    return keys;
}

/* The key of each network string items[i] into keys[i], read in address order (scratch:
 * 2n keys); 0 when one is not "address/prefix" as written canonically (of IP `version`
 * when that is not 0): cidr.sort_key reads any prefix 0..128, either family. */
static int member_keys(PyObject **items, Py_ssize_t n, keyed_t *keys, keyed_t *scratch,
                       int version) {
    keyed_t *order = by_address(items, n, scratch);
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_ssize_t i = order[j].index;
        PyObject *item = items[i];
        net_t net;
        if (!str_net(item, 0, &net) || !net.slash || (version && net.version != version))
            return 0;
        make_key(&net, &keys[i]);
        keys[i].index = i;
    }
    return 1;
}

/* sort(members) -> list | None: sorted(members, key=cidr.sort_key), or None when a member
 * is not a network in a form the key reads here (the caller sorts in Python). */
static PyObject *sort(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "sort() needs an iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    /* keys (in the items' order) and their radix buffer, then the address order's two */
    keyed_t *keys = new_keys(n, 4);
    if (keys == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = Py_None;
    if (member_keys(items, n, keys, keys + 2 * n, 0)) {
        keyed_t *done = radix_sort(keys, keys + n, n);
        out = PyList_New(n);
        if (out != NULL)
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *item = items[done[i].index];
                Py_INCREF(item);
                PyList_SET_ITEM(out, i, item);
            }
    } else {
        Py_INCREF(out);
    }
    PyMem_Free(keys);
    Py_DECREF(seq);
    return out;
}

/* encode(members, v6, head, cidr_hdr, lineno_hdr, extra) -> bytes | None
 *
 * The entries of all members, one after the other, each: head (the DATA and IP headers, 12
 * bytes), the packed address, cidr_hdr (4 bytes), the prefix length and 3 pad bytes,
 * lineno_hdr (4 bytes), the 1-based position (u32, host order), then extra. None when a
 * member is not an address or address/prefix of the family (the caller's Python says
 * which, and sends nothing). Members are read in address order (by_address). */
static PyObject *encode(PyObject *self, PyObject *args) {
    PyObject *members;
    int v6;
    const char *head, *cidr_hdr, *lineno_hdr, *extra;
    Py_ssize_t head_n, cidr_n, lineno_n, extra_n;
    if (!PyArg_ParseTuple(args, "O!py#y#y#y#", &PyList_Type, &members, &v6, &head, &head_n,
                          &cidr_hdr, &cidr_n, &lineno_hdr, &lineno_n, &extra, &extra_n))
        return NULL;
    if (head_n != 12 || cidr_n != 4 || lineno_n != 4) {
        PyErr_SetString(PyExc_ValueError, "encode(): header sizes");
        return NULL;
    }
    int alen = v6 ? 16 : 4;
    Py_ssize_t size = 12 + alen + 4 + 4 + 4 + 4 + extra_n;
    Py_ssize_t n = PyList_GET_SIZE(members);
    if (n > PY_SSIZE_T_MAX / size)
        return PyErr_NoMemory();
    keyed_t *buf = new_keys(n, 2);
    if (buf == NULL)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size * n);
    if (out == NULL) {
        PyMem_Free(buf);
        return NULL;
    }
    PyObject **items = ((PyListObject *)members)->ob_item;
    keyed_t *order = by_address(items, n, buf);
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_ssize_t i = order[j].index;
        PyObject *item = items[i];
        net_t net;
        if (!str_net(item, 1, &net) || net.version != (v6 ? 6 : 4)) {
            Py_DECREF(out);
            PyMem_Free(buf);
            Py_RETURN_NONE;
        }
        char *p = PyBytes_AS_STRING(out) + i * size;
        memcpy(p, head, 12);
        p += 12;
        memcpy(p, net.addr, alen);
        p += alen;
        memcpy(p, cidr_hdr, 4);
        p += 4;
        p[0] = (char)net.prefix;
        p[1] = p[2] = p[3] = 0;
        p += 4;
        memcpy(p, lineno_hdr, 4);
        p += 4;
        uint32_t lineno = (uint32_t)(i + 1);
        memcpy(p, &lineno, 4);
        p += 4;
        memcpy(p, extra, extra_n);
    }
    PyMem_Free(buf);
    return out;
}

/* Whether a dump record layout (its size, where the address is, where the prefix is or -1)
 * cannot be read: ValueError set for `what` then. */
static int bad_layout(Py_ssize_t size, Py_ssize_t addr_off, Py_ssize_t cidr_off,
                      const char *what) {
    if (size <= 0 || addr_off < 0 || addr_off + 4 > size || cidr_off >= size || cidr_off < -1 ||
        (cidr_off >= 0 && cidr_off < addr_off + 8)) {
        PyErr_Format(PyExc_ValueError, "%s(): bad layout", what);
        return 1;
    }
    return 0;
}

/* Whether record r carries other header bytes than record first: its first addr_off bytes,
 * and with a prefix the 4 before it (the NLA headers). */
static int other_headers(const unsigned char *r, const unsigned char *first, Py_ssize_t addr_off,
                         Py_ssize_t cidr_off) {
    return memcmp(r, first, addr_off) != 0 ||
           (cidr_off >= 0 && memcmp(r + cidr_off - 4, first + cidr_off - 4, 4) != 0);
}

/* format4(chunk, size, addr_off, cidr_off) -> list[str] | None
 *
 * The IPv4 members of a dump's fixed-size records: "a.b.c.d/n" with n the byte at cidr_off,
 * or "/32" when cidr_off is -1. Every record must carry the first one's header bytes (its
 * first addr_off bytes, and with a prefix the 4 before it: the NLA headers; the caller
 * checked the first's): None when one does not (the caller decodes it attribute by
 * attribute then). */
static PyObject *format4(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t size, addr_off, cidr_off;
    if (!PyArg_ParseTuple(args, "y*nnn", &view, &size, &addr_off, &cidr_off))
        return NULL;
    if (bad_layout(size, addr_off, cidr_off, "format4") || view.len % size) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "format4(): not whole records");
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *first = view.buf;
    for (Py_ssize_t at = size; at < view.len; at += size)
        if (other_headers(first + at, first, addr_off, cidr_off)) {
            PyBuffer_Release(&view);
            Py_RETURN_NONE;
        }
    Py_ssize_t n = view.len / size;
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const unsigned char *rec = view.buf;
    for (Py_ssize_t i = 0; i < n; i++, rec += size) {
        char buf[24];
        const unsigned char *a = rec + addr_off;
        int len = 0;
        for (int k = 0; k < 5; k++) {
            unsigned v = k < 4 ? a[k] : (cidr_off < 0 ? 32u : rec[cidr_off]);
            if (k)
                buf[len++] = k < 4 ? '.' : '/';
            if (v >= 100)
                buf[len++] = (char)('0' + v / 100);
            if (v >= 10)
                buf[len++] = (char)('0' + v / 10 % 10);
            buf[len++] = (char)('0' + v % 10);
        }
        PyObject *s = PyUnicode_FromStringAndSize(buf, len);
        if (s == NULL) {
            Py_DECREF(out);
            PyBuffer_Release(&view);
            return NULL;
        }
        PyList_SET_ITEM(out, i, s);
    }
    PyBuffer_Release(&view);
    return out;
}

/* same4(chunks, size, addr_off, cidr_off, members) -> bool | None
 *
 * Whether the IPv4 records of a dump's chunks (fixed-size records as format4 reads them;
 * the caller checked each chunk's first) are exactly the networks ``members`` names (an
 * iterable of canonical "a.b.c.d/n" strings): compared as sorted (address, prefix) keys,
 * the members read in address order, no string made. None when a chunk's records do not
 * all carry its first one's header bytes, or a member is not an IPv4 network in that form
 * (the caller decodes and compares strings then). */
static PyObject *same4(PyObject *self, PyObject *args) {
    PyObject *chunks, *members;
    Py_ssize_t size, addr_off, cidr_off;
    if (!PyArg_ParseTuple(args, "O!nnnO", &PyList_Type, &chunks, &size, &addr_off, &cidr_off,
                          &members))
        return NULL;
    if (bad_layout(size, addr_off, cidr_off, "same4"))
        return NULL;
    PyObject *seq = PySequence_Fast(members, "same4() needs an iterable");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), count = 0;
    for (Py_ssize_t c = 0; c < PyList_GET_SIZE(chunks); c++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, c);
        if (!PyBytes_Check(chunk) || PyBytes_GET_SIZE(chunk) % size) {
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        count += PyBytes_GET_SIZE(chunk) / size;
    }
    if (count != n) {
        Py_DECREF(seq);
        Py_RETURN_FALSE;
    }
    /* the dump's keys and their radix buffer, the members' and theirs, the address order's */
    keyed_t *buf = new_keys(n, 6);
    if (buf == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    keyed_t *dump = buf, *want = buf + 2 * n;
    PyObject *answer = Py_None;
    Py_ssize_t k = 0;
    for (Py_ssize_t c = 0; c < PyList_GET_SIZE(chunks) && answer == Py_None; c++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, c);
        const unsigned char *first = (const unsigned char *)PyBytes_AS_STRING(chunk);
        Py_ssize_t len = PyBytes_GET_SIZE(chunk);
        for (Py_ssize_t at = 0; at < len; at += size, k++) {
            const unsigned char *r = first + at;
            if (other_headers(r, first, addr_off, cidr_off)) {
                answer = NULL; /* headers differ: not for here */
                break;
            }
            uint64_t prefix = cidr_off < 0 ? 32 : r[cidr_off];
            dump[k].k0 = 4ULL << 56 | be_bytes(r + addr_off, 4) << 8 | prefix;
            dump[k].k1 = dump[k].k2 = 0;
            dump[k].index = k;
        }
    }
    if (answer == Py_None && !member_keys(PySequence_Fast_ITEMS(seq), n, want, buf + 4 * n, 4))
        answer = NULL;
    if (answer == Py_None) {
        keyed_t *a = radix_sort(dump, dump + n, n), *b = radix_sort(want, want + n, n);
        answer = Py_True;
        for (Py_ssize_t i = 0; i < n; i++)
            if (a[i].k0 != b[i].k0) {
                answer = Py_False;
                break;
            }
    }
    PyMem_Free(buf);
    Py_DECREF(seq);
    if (answer == NULL)
        Py_RETURN_NONE;
    Py_INCREF(answer);
    return answer;
}

/* yamlparse._ITEM, matched whole: [0-9A-Fa-f:.]+/[0-9]+ or a dotted quad of 1-3 digits each. */
static int is_item(const unsigned char *t, Py_ssize_t n) {
    Py_ssize_t slash = -1;
    for (Py_ssize_t i = 0; i < n; i++)
        if (t[i] == '/') {
            slash = i;
            break;
        }
    if (slash > 0) {
        for (Py_ssize_t i = 0; i < slash; i++) {
            unsigned char c = t[i];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                  c == ':' || c == '.'))
                return 0;
        }
        if (slash == n - 1)
            return 0;
        for (Py_ssize_t i = slash + 1; i < n; i++)
            if (t[i] < '0' || t[i] > '9')
                return 0;
        return 1;
    }
    if (slash == 0)
        return 0;
    int groups = 0, digits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (t[i] >= '0' && t[i] <= '9') {
            if (++digits > 3)
                return 0;
        } else if (t[i] == '.' && digits > 0 && groups < 3) {
            groups++;
            digits = 0;
        } else {
            return 0;
        }
    }
    return groups == 3 && digits > 0;
}

/* Whether the line at q is "<spaces>- ITEM<blanks>\n" (its indent and the next line's start
 * set then). */
static int item_line(const unsigned char *s, Py_ssize_t n, Py_ssize_t q, Py_ssize_t *indent,
                     Py_ssize_t *next, Py_ssize_t *item, Py_ssize_t *item_end) {
    Py_ssize_t i = q;
    while (i < n && s[i] == ' ')
        i++;
    if (i + 1 >= n || s[i] != '-' || s[i + 1] != ' ')
        return 0;
    *indent = i - q;
    i += 2;
    Py_ssize_t start = i;
    while (i < n && s[i] != ' ' && s[i] != '\t' && s[i] != '\n')
        i++;
    Py_ssize_t end = i;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i >= n || s[i] != '\n' || !is_item(s + start, end - start))
        return 0;
    *next = i + 1;
    *item = start;
    *item_end = end;
    return 1;
}

/* runs(text, minimum) -> list[tuple[int, int, int, list[str]]] | None
 *
 * What yamlparse._RUN.finditer(text) finds, as (start, end, indent length, items) of each
 * match: runs of at least `minimum` consecutive item lines of one indentation, and the item
 * of each line (without its blanks). None for text outside Latin-1 (the caller's regex
 * then). Each line is read once: a run too short is skipped whole, since a match starting
 * inside it would be shorter still. */
static PyObject *runs(PyObject *self, PyObject *args) {
    PyObject *text;
    Py_ssize_t minimum;
    if (!PyArg_ParseTuple(args, "Un", &text, &minimum))
        return NULL;
    if (PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND)
        Py_RETURN_NONE;
    const unsigned char *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0; /* always a line start */
    while (pos < n) {
        Py_ssize_t indent, next, other, after, item, item_end;
        if (!item_line(s, n, pos, &indent, &next, &item, &item_end)) {
            const unsigned char *nl = memchr(s + pos, '\n', n - pos);
            pos = nl == NULL ? n : nl - s + 1;
            continue;
        }
        Py_ssize_t count = 1, q = next;
        while (q < n && item_line(s, n, q, &other, &after, &item, &item_end) && other == indent) {
            count++;
            q = after;
        }
        if (count >= minimum) {
            /* the items, read again line by line: the run is known to be one */
            PyObject *items = PyList_New(count);
            if (items == NULL) {
                Py_DECREF(out);
                return NULL;
            }
            Py_ssize_t at = pos;
            for (Py_ssize_t k = 0; k < count; k++) {
                item_line(s, n, at, &other, &after, &item, &item_end);
                PyObject *str = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, s + item,
                                                          item_end - item);
                if (str == NULL) {
                    Py_DECREF(items);
                    Py_DECREF(out);
                    return NULL;
                }
                PyList_SET_ITEM(items, k, str);
                at = after;
            }
            PyObject *span = Py_BuildValue("(nnnN)", pos, q, indent, items);
            if (span == NULL || PyList_Append(out, span) < 0) {
                Py_XDECREF(span);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(span);
        }
        pos = q;
    }
    return out;
}

/* ops(op_type, verb, members, extra) -> list
 *
 * [op_type(verb, {"member": m, **extra}) for m in members], op_type a tuple subclass of two
 * fields (plan.Op, a named tuple): made as tuple.__new__ makes them. */
static PyObject *ops(PyObject *self, PyObject *args) {
    PyTypeObject *op_type;
    PyObject *verb, *members, *extra;
    if (!PyArg_ParseTuple(args, "O!UO!O!", &PyType_Type, &op_type, &verb, &PyList_Type, &members,
                          &PyDict_Type, &extra))
        return NULL;
    if (!PyType_IsSubtype(op_type, &PyTuple_Type) || op_type->tp_itemsize != sizeof(PyObject *) ||
        op_type->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "ops(): op_type must be a named tuple");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(members);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyDict_New();
        if (d == NULL || PyDict_SetItem(d, KEY_MEMBER, PyList_GET_ITEM(members, i)) < 0 ||
            PyDict_Update(d, extra) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *op = op_type->tp_alloc(op_type, 2);
        if (op == NULL) {
            Py_DECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(verb);
        PyTuple_SET_ITEM(op, 0, verb);
        PyTuple_SET_ITEM(op, 1, d);
        PyList_SET_ITEM(out, i, op);
    }
    return out;
}

/* dicts(ops) -> list[dict] | None
 *
 * [{"op": op.op, **op.args} for op in ops], or None when an op is not a pair of a str and
 * a dict (the caller's Python then). */
static PyObject *dicts(PyObject *self, PyObject *arg) {
    PyObject *seq = PySequence_Fast(arg, "dicts() needs a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *op = items[i];
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(op, 0)) || !PyDict_Check(PyTuple_GET_ITEM(op, 1))) {
            Py_DECREF(out);
            Py_DECREF(seq);
            Py_RETURN_NONE;
        }
        PyObject *d = PyDict_New();
        if (d == NULL || PyDict_SetItem(d, KEY_OP, PyTuple_GET_ITEM(op, 0)) < 0 ||
            PyDict_Update(d, PyTuple_GET_ITEM(op, 1)) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, d);
    }
    Py_DECREF(seq);
    return out;
}

/* members(ops, width) -> list[str] | None
 *
 * [op.args["member"] for op in ops], when every op is a pair whose args are a dict with a
 * "member" (and, with width > 0, exactly width keys); None otherwise (the caller's Python
 * then). */
static PyObject *members(PyObject *self, PyObject *args) {
    PyObject *ops;
    Py_ssize_t width;
    if (!PyArg_ParseTuple(args, "On", &ops, &width))
        return NULL;
    PyObject *seq = PySequence_Fast(ops, "members() needs a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *op = items[i], *d, *m = NULL;
        if (PyTuple_Check(op) && PyTuple_GET_SIZE(op) == 2 &&
            PyDict_Check(d = PyTuple_GET_ITEM(op, 1)) &&
            (width <= 0 || PyDict_GET_SIZE(d) == width))
            m = PyDict_GetItemWithError(d, KEY_MEMBER);
        if (m == NULL) {
            Py_CLEAR(out);
            if (!PyErr_Occurred()) {
                Py_DECREF(seq);
                Py_RETURN_NONE;
            }
            break;
        }
        Py_INCREF(m);
        PyList_SET_ITEM(out, i, m);
    }
    Py_DECREF(seq);
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "The fast path of a member check; the rest to a callback."},
    {"sort", sort, METH_O, "sorted(members, key=cidr.sort_key), or None."},
    {"encode", encode, METH_VARARGS, "Netlink ADD/DEL entries, one per member, or None."},
    {"format4", format4, METH_VARARGS, "IPv4 members of a dump's fixed-size records."},
    {"same4", same4, METH_VARARGS, "Whether a dump's IPv4 records are exactly some members."},
    {"runs", runs, METH_VARARGS, "The runs of network items yamlparse folds."},
    {"ops", ops, METH_VARARGS, "An Op per member."},
    {"dicts", dicts, METH_O, "The JSON plan's dict per op, or None."},
    {"members", members, METH_VARARGS, "The member of each op of a run, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "reconciler._netfast",
    "The per-member loops of big ipsets, in C (optional; see reconciler/_netfast.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__netfast(void) {
    KEY_OP = PyUnicode_InternFromString("op");
    KEY_MEMBER = PyUnicode_InternFromString("member");
    if (KEY_OP == NULL || KEY_MEMBER == NULL)
        return NULL;
    return PyModule_Create(&module);
}
