/* safetensors.c: parse and memory-map safetensors files; merge the shards of a model directory.
 *
 * Invariant: a tensor leaves this file only after its header entry has been checked in full
 * (known dtype, non-negative shape whose element count times the dtype size equals its byte
 * range, range inside the data section, data aligned to the dtype size, no overlap with another
 * tensor). Every failure path releases what it acquired: mappings, descriptors, JSON objects.
 */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The Rust safetensors crate refuses headers above 100 MB (MAX_HEADER_SIZE); so do we. */
#define MAX_HEADER_BYTES ((uint64_t)100000000)
/* A model.safetensors.index.json is a name -> shard map: tens of MB for the largest models. */
#define MAX_INDEX_BYTES ((size_t)1 << 30)

static const char index_name[] = "model.safetensors.index.json";

struct eng_st_file {
    char *label;            /* path or caller's label, for messages */
    void *map;              /* mmap base when opened from a file, else NULL */
    size_t map_len;
    size_t n_tensors;
    eng_st_tensor *tensors; /* [n_tensors], sorted by name */
    char *names;            /* arena holding every tensor name */
};

struct eng_st_set {
    size_t n_files;
    eng_st_file **files;            /* [n_files], owned */
    size_t n_tensors;
    const eng_st_tensor **tensors;  /* [n_tensors], sorted by name, point into files */
    size_t total_bytes;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static uint64_t read_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static bool is_json_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const eng_st_tensor *)a)->name, ((const eng_st_tensor *)b)->name);
}

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
    const eng_st_tensor *x = *(const eng_st_tensor *const *)a;
    const eng_st_tensor *y = *(const eng_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Parses exactly `len` bytes of JSON text (trailing whitespace allowed) into *out. */
static pp_status parse_json(const char *text, size_t len, int flags, const char *label,
                            struct json_object **out, eng_err *err)
{
    *out = NULL;
    if (len > (size_t)INT32_MAX)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: JSON text too large (%zu bytes)", label,
                        len);
    struct json_tokener *tok = json_tokener_new();
    if (!tok)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", label);
    json_tokener_set_flags(tok, flags);
    struct json_object *obj = json_tokener_parse_ex(tok, text, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!obj || jerr != json_tokener_success) {
        json_object_put(obj);
        if (jerr == json_tokener_continue || jerr == json_tokener_success)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: truncated JSON", label);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: invalid JSON at byte %zu: %s", label, end,
                        json_tokener_error_desc(jerr));
    }
    for (size_t i = end; i < len; i++) {
        if (!is_json_space((uint8_t)text[i])) {
            json_object_put(obj);
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: unexpected data after the JSON value at byte %zu", label, i);
        }
    }
    *out = obj;
    return PP_STATUS_OK;
}

/* ---- duplicate keys -------------------------------------------------------------------------
 * json-c keeps only the last of two equal keys, so duplicates are found on the text: count the
 * keys of the root object (strings at depth 1 followed by ':') and compare with what json-c kept.
 * The text has already been accepted by the strict tokener, so this scan can stay simple. */

/* Calls `fn(key_start, key_len, ctx)` for every root-level key (quotes included); returns the
 * number of keys. */
static size_t scan_root_keys(const char *text, size_t len,
                             void (*fn)(const char *key, size_t key_len, void *ctx), void *ctx)
{
    size_t n_keys = 0;
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == '"') {
            size_t start = i++;
            while (i < len && text[i] != '"') {
                if (text[i] == '\\')
                    i++;
                i++;
            }
            if (i >= len)
                break;
            if (depth != 1)
                continue;
            size_t j = i + 1;
            while (j < len && is_json_space((uint8_t)text[j]))
                j++;
            if (j < len && text[j] == ':') {
                n_keys++;
                if (fn)
                    fn(text + start, i + 1 - start, ctx);
            }
        }
    }
    return n_keys;
}

struct key_list {
    char **keys;
    size_t n, cap;
    bool oom;
};

static void collect_key(const char *key, size_t key_len, void *ctx)
{
    struct key_list *list = ctx;
    if (list->oom || list->n == list->cap)
        return;
    struct json_object *s = NULL;
    eng_err ignored;
    char *decoded = NULL;
    if (parse_json(key, key_len, 0, "key", &s, &ignored) == PP_STATUS_OK &&
        json_object_is_type(s, json_type_string))
        decoded = dup_string(json_object_get_string(s));
    json_object_put(s);
    if (!decoded) {
        list->oom = true;
        return;
    }
    list->keys[list->n++] = decoded;
}

/* Reports the duplicated root key of the header (known to exist). */
static pp_status fail_duplicate_key(const char *text, size_t len, size_t n_keys,
                                    const char *label, eng_err *err)
{
    struct key_list list = {calloc(n_keys, sizeof(char *)), 0, n_keys, false};
    const char *dup = NULL;
    if (list.keys) {
        scan_root_keys(text, len, collect_key, &list);
        qsort(list.keys, list.n, sizeof(char *), cmp_str_ptr);
        for (size_t i = 1; i < list.n && !dup; i++)
            if (strcmp(list.keys[i - 1], list.keys[i]) == 0)
                dup = list.keys[i];
    }
    pp_status st;
    if (dup)
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: duplicate tensor name '%s' in header", label,
                      dup);
    else
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: duplicate tensor name in header", label);
    for (size_t i = 0; i < list.n; i++)
        free(list.keys[i]);
    free(list.keys);
    return st;
}

/* ---- one tensor entry ------------------------------------------------------------------------ */

/* Reads a JSON integer that is >= 0 into *out; false when it is not one. */
static bool get_nonneg_int(struct json_object *v, int64_t *out)
{
    if (!json_object_is_type(v, json_type_int))
        return false;
    int64_t x = json_object_get_int64(v); /* saturates at INT64_MAX for larger values */
    if (x < 0)
        return false;
    *out = x;
    return true;
}

static pp_status parse_entry(const char *label, const char *name, struct json_object *entry,
                             const uint8_t *data, uint64_t data_len, eng_st_tensor *t,
                             uint64_t *begin_out, uint64_t *end_out, eng_err *err)
{
    if (!json_object_is_type(entry, json_type_object))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: tensor '%s': entry is not an object",
                        label, name);

    struct json_object *v;
    if (!json_object_object_get_ex(entry, "dtype", &v) || !json_object_is_type(v, json_type_string))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: tensor '%s': missing string 'dtype'",
                        label, name);
    t->dtype = eng_dtype_parse(json_object_get_string(v));
    if (t->dtype == ENG_DTYPE_UNKNOWN)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: unknown dtype %s for tensor %s", label,
                        json_object_get_string(v), name);
    uint64_t elem_size = eng_dtype_size(t->dtype);

    if (!json_object_object_get_ex(entry, "shape", &v) || !json_object_is_type(v, json_type_array))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: tensor '%s': missing array 'shape'", label,
                        name);
    size_t n_dim = json_object_array_length(v);
    if (n_dim > ENG_ST_MAX_DIM)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: tensor '%s': %zu dimensions (at most %d)",
                        label, name, n_dim, ENG_ST_MAX_DIM);
    t->n_dim = (int)n_dim;
    int64_t n_elem = 1;
    for (size_t d = 0; d < n_dim; d++) {
        int64_t dim = 0;
        if (!get_nonneg_int(json_object_array_get_idx(v, d), &dim))
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: tensor '%s': shape[%zu] is not a non-negative integer", label,
                            name, d);
        t->shape[d] = dim;
        if (dim != 0 && n_elem > INT64_MAX / dim)
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: tensor '%s': element count overflows", label, name);
        n_elem *= dim;
    }
    for (size_t d = n_dim; d < ENG_ST_MAX_DIM; d++)
        t->shape[d] = 0;
    if ((uint64_t)n_elem > UINT64_MAX / elem_size)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: tensor '%s': byte count overflows", label,
                        name);
    uint64_t want_bytes = (uint64_t)n_elem * elem_size;

    if (!json_object_object_get_ex(entry, "data_offsets", &v) ||
        !json_object_is_type(v, json_type_array) || json_object_array_length(v) != 2)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: tensor '%s': 'data_offsets' must be an array [begin, end]", label,
                        name);
    int64_t begin = 0, end = 0;
    if (!get_nonneg_int(json_object_array_get_idx(v, 0), &begin) ||
        !get_nonneg_int(json_object_array_get_idx(v, 1), &end))
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: tensor '%s': data_offsets must be non-negative integers", label,
                        name);
    if (begin > end || (uint64_t)end > data_len)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: tensor '%s': data_offsets [%lld, %lld] out of range (data section "
                        "is %llu bytes)",
                        label, name, (long long)begin, (long long)end,
                        (unsigned long long)data_len);
    if ((uint64_t)(end - begin) != want_bytes)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: tensor '%s': %lld bytes in data_offsets but shape x %s needs %llu",
                        label, name, (long long)(end - begin), eng_dtype_name(t->dtype),
                        (unsigned long long)want_bytes);
    t->data = data + begin;
    if ((uintptr_t)t->data % elem_size != 0)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: tensor '%s': data is not aligned to its %llu-byte dtype %s", label,
                        name, (unsigned long long)elem_size, eng_dtype_name(t->dtype));
    t->n_bytes = (size_t)want_bytes;
    *begin_out = (uint64_t)begin;
    *end_out = (uint64_t)end;
    return PP_STATUS_OK;
}

/* ---- overlap check --------------------------------------------------------------------------- */

struct span {
    uint64_t begin, end;
    const char *name;
};

static int cmp_span(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* Empty tensors occupy no bytes and cannot overlap anything. */
static pp_status check_overlap(struct span *spans, size_t n, const char *label, eng_err *err)
{
    qsort(spans, n, sizeof *spans, cmp_span);
    const struct span *last = NULL; /* the non-empty span reaching furthest so far */
    for (size_t i = 0; i < n; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (last && spans[i].begin < last->end)
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: tensors '%s' and '%s' overlap in the data section", label,
                            last->name, spans[i].name);
        if (!last || spans[i].end > last->end)
            last = &spans[i];
    }
    return PP_STATUS_OK;
}

/* ---- eng_st_parse ---------------------------------------------------------------------------- */

static pp_status check_metadata(struct json_object *meta, const char *label, eng_err *err)
{
    if (!json_object_is_type(meta, json_type_object))
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: __metadata__ is not an object", label);
    json_object_object_foreach(meta, key, val) {
        if (!json_object_is_type(val, json_type_string))
            return eng_fail(err, PP_STATUS_BAD_FORMAT,
                            "%s: __metadata__ value for '%s' is not a string", label, key);
    }
    return PP_STATUS_OK;
}

static pp_status fill_tensors(eng_st_file *file, struct json_object *root, const uint8_t *data,
                              uint64_t data_len, eng_err *err)
{
    size_t n_keys = (size_t)json_object_object_length(root);
    size_t names_bytes = 0;
    json_object_object_foreach(root, key0, val0) {
        (void)val0;
        names_bytes += strlen(key0) + 1;
    }
    file->tensors = calloc(n_keys ? n_keys : 1, sizeof *file->tensors);
    file->names = malloc(names_bytes ? names_bytes : 1);
    struct span *spans = calloc(n_keys ? n_keys : 1, sizeof *spans);
    if (!file->tensors || !file->names || !spans) {
        free(spans);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory for %zu tensors",
                        file->label, n_keys);
    }

    pp_status st = PP_STATUS_OK;
    size_t n = 0, name_at = 0;
    json_object_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            st = check_metadata(val, file->label, err);
            if (st != PP_STATUS_OK)
                break;
            continue;
        }
        eng_st_tensor *t = &file->tensors[n];
        size_t key_len = strlen(key) + 1;
        memcpy(file->names + name_at, key, key_len);
        t->name = file->names + name_at;
        name_at += key_len;
        st = parse_entry(file->label, t->name, val, data, data_len, t, &spans[n].begin,
                         &spans[n].end, err);
        if (st != PP_STATUS_OK)
            break;
        spans[n].name = t->name;
        n++;
    }
    if (st == PP_STATUS_OK)
        st = check_overlap(spans, n, file->label, err);
    free(spans);
    if (st != PP_STATUS_OK)
        return st;

    file->n_tensors = n;
    qsort(file->tensors, n, sizeof *file->tensors, cmp_tensor_name);
    for (size_t i = 1; i < n; i++) /* keys cut short by an embedded NUL can still collide */
        if (strcmp(file->tensors[i - 1].name, file->tensors[i].name) == 0)
            return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: duplicate tensor name '%s' in header",
                            file->label, file->tensors[i].name);
    return PP_STATUS_OK;
}

pp_status eng_st_parse(const uint8_t *buf, size_t len, const char *label, eng_st_file **out,
                       eng_err *err)
{
    if (!out)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_st_parse: out is NULL");
    *out = NULL;
    if (!label)
        label = "<buffer>";
    if (!buf && len > 0)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "%s: NULL buffer", label);
    if (len < 8)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: %zu bytes is too short for a safetensors file (needs an 8-byte "
                        "header length)",
                        label, len);
    uint64_t header_len = read_le64(buf);
    if (header_len > len - 8)
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: header length %llu runs past the end of the file (%zu bytes)", label,
                        (unsigned long long)header_len, len);
    if (header_len > MAX_HEADER_BYTES)
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: header length %llu exceeds %llu bytes",
                        label, (unsigned long long)header_len,
                        (unsigned long long)MAX_HEADER_BYTES);

    eng_st_file *file = calloc(1, sizeof *file);
    if (!file)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", label);
    file->label = dup_string(label);
    if (!file->label) {
        free(file);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", label);
    }

    const char *text = (const char *)buf + 8;
    size_t text_len = (size_t)header_len;
    struct json_object *root = NULL;
    pp_status st = parse_json(text, text_len, JSON_TOKENER_STRICT, file->label, &root, err);
    if (st == PP_STATUS_OK && !json_object_is_type(root, json_type_object))
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: header is not a JSON object", file->label);
    if (st == PP_STATUS_OK) {
        size_t n_keys = scan_root_keys(text, text_len, NULL, NULL);
        if (n_keys != (size_t)json_object_object_length(root))
            st = fail_duplicate_key(text, text_len, n_keys, file->label, err);
    }
    if (st == PP_STATUS_OK)
        st = fill_tensors(file, root, buf + 8 + header_len, len - 8 - header_len, err);
    json_object_put(root);
    if (st != PP_STATUS_OK) {
        eng_st_file_close(file);
        return st;
    }
    *out = file;
    return PP_STATUS_OK;
}

/* ---- files ----------------------------------------------------------------------------------- */

pp_status eng_st_open_file(const char *path, eng_st_file **out, eng_err *err)
{
    if (!out)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_st_open_file: out is NULL");
    *out = NULL;
    if (!path)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_st_open_file: path is NULL");

    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        return eng_fail(err, e == ENOENT || e == ENOTDIR ? PP_STATUS_NOT_FOUND : PP_STATUS_IO,
                        "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return eng_fail(err, PP_STATUS_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return eng_fail(err, PP_STATUS_IO, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return eng_fail(err, PP_STATUS_BAD_FORMAT,
                        "%s: %lld bytes is too short for a safetensors file (needs an 8-byte "
                        "header length)",
                        path, (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return eng_fail(err, PP_STATUS_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (map == MAP_FAILED)
        return eng_fail(err, PP_STATUS_IO, "%s: mmap of %zu bytes failed: %s", path, size,
                        strerror(map_errno));

    eng_st_file *file = NULL;
    pp_status st = eng_st_parse(map, size, path, &file, err);
    if (st != PP_STATUS_OK) {
        munmap(map, size);
        return st;
    }
    file->map = map;
    file->map_len = size;
    *out = file;
    return PP_STATUS_OK;
}

void eng_st_file_close(eng_st_file *file)
{
    if (!file)
        return;
    if (file->map)
        munmap(file->map, file->map_len);
    free(file->tensors);
    free(file->names);
    free(file->label);
    free(file);
}

size_t eng_st_file_count(const eng_st_file *file)
{
    return file ? file->n_tensors : 0;
}

const eng_st_tensor *eng_st_file_tensor(const eng_st_file *file, size_t i)
{
    if (!file || i >= file->n_tensors)
        return NULL;
    return &file->tensors[i];
}

static const eng_st_tensor *file_find(const eng_st_file *file, const char *name)
{
    eng_st_tensor key;
    memset(&key, 0, sizeof key);
    key.name = name;
    return bsearch(&key, file->tensors, file->n_tensors, sizeof *file->tensors, cmp_tensor_name);
}

/* ---- sets ------------------------------------------------------------------------------------ */

/* Takes ownership of files[0..n_files) (closing them on failure) and builds the merged index. */
static pp_status set_build(eng_st_file **files, size_t n_files, const char *dir,
                           eng_st_set **out, eng_err *err)
{
    eng_st_set *set = calloc(1, sizeof *set);
    if (!set) {
        for (size_t i = 0; i < n_files; i++)
            eng_st_file_close(files[i]);
        free(files);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    }
    set->files = files;
    set->n_files = n_files;
    size_t n = 0;
    for (size_t i = 0; i < n_files; i++)
        n += files[i]->n_tensors;
    set->tensors = calloc(n ? n : 1, sizeof *set->tensors);
    if (!set->tensors) {
        eng_st_set_close(set);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory for %zu tensors", dir, n);
    }
    for (size_t i = 0; i < n_files; i++)
        for (size_t j = 0; j < files[i]->n_tensors; j++) {
            set->tensors[set->n_tensors++] = &files[i]->tensors[j];
            set->total_bytes += files[i]->tensors[j].n_bytes;
        }
    qsort(set->tensors, set->n_tensors, sizeof *set->tensors, cmp_tensor_ptr_name);
    for (size_t i = 1; i < set->n_tensors; i++) {
        if (strcmp(set->tensors[i - 1]->name, set->tensors[i]->name) == 0) {
            const char *name = set->tensors[i]->name;
            const char *fa = "?", *fb = "?";
            for (size_t f = 0; f < n_files; f++) {
                const eng_st_tensor *t = file_find(files[f], name);
                if (t == set->tensors[i - 1])
                    fa = files[f]->label;
                if (t == set->tensors[i])
                    fb = files[f]->label;
            }
            pp_status st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                                    "%s: tensor '%s' is present in two shards (%s and %s)", dir,
                                    name, fa, fb);
            eng_st_set_close(set);
            return st;
        }
    }
    *out = set;
    return PP_STATUS_OK;
}

static bool plain_file_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

struct shard_ref {
    const char *tensor;
    const char *shard; /* points into the index JSON */
};

static int cmp_shard_ref(const void *a, const void *b)
{
    return strcmp(((const struct shard_ref *)a)->shard, ((const struct shard_ref *)b)->shard);
}

/* Opens the shards named by DIR/model.safetensors.index.json. */
static pp_status open_sharded(const char *dir, const char *index_path, eng_st_set **out,
                              eng_err *err)
{
    char *text = NULL;
    size_t len = 0;
    pp_status st = eng_read_file(index_path, MAX_INDEX_BYTES, &text, &len, err);
    if (st != PP_STATUS_OK)
        return st;
    struct json_object *root = NULL;
    st = parse_json(text, len, 0, index_path, &root, err);
    free(text);
    if (st != PP_STATUS_OK)
        return st;

    struct shard_ref *refs = NULL;
    eng_st_file **files = NULL;
    size_t n_files = 0, n_refs = 0;
    struct json_object *map = NULL;
    if (!json_object_is_type(root, json_type_object) ||
        !json_object_object_get_ex(root, "weight_map", &map) ||
        !json_object_is_type(map, json_type_object)) {
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: no 'weight_map' object", index_path);
        goto done;
    }
    size_t n_map = (size_t)json_object_object_length(map);
    if (n_map == 0) {
        st = eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: 'weight_map' is empty", index_path);
        goto done;
    }
    refs = calloc(n_map, sizeof *refs);
    if (!refs) {
        st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", index_path);
        goto done;
    }
    json_object_object_foreach(map, tensor, shard_val) {
        if (!json_object_is_type(shard_val, json_type_string)) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                          "%s: weight_map entry for '%s' is not a string", index_path, tensor);
            goto done;
        }
        const char *shard = json_object_get_string(shard_val);
        if (!plain_file_name(shard)) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                          "%s: shard name '%s' for tensor '%s' is not a plain file name",
                          index_path, shard, tensor);
            goto done;
        }
        refs[n_refs].tensor = tensor;
        refs[n_refs].shard = shard;
        n_refs++;
    }
    /* Group references by shard so each distinct shard opens once, in name order. */
    qsort(refs, n_refs, sizeof *refs, cmp_shard_ref);
    files = calloc(n_refs, sizeof *files);
    if (!files) {
        st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < n_refs; i++) {
        if (i == 0 || strcmp(refs[i].shard, refs[i - 1].shard) != 0) {
            char *path = eng_path_join(dir, refs[i].shard);
            if (!path) {
                st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
                goto done;
            }
            st = eng_st_open_file(path, &files[n_files], err);
            free(path);
            if (st == PP_STATUS_NOT_FOUND) {
                st = eng_fail(err, PP_STATUS_NOT_FOUND,
                              "%s: shard '%s' (holding tensor '%s' per %s) not found", dir,
                              refs[i].shard, refs[i].tensor, index_name);
                goto done;
            }
            if (st != PP_STATUS_OK)
                goto done;
            n_files++;
        }
        if (!file_find(files[n_files - 1], refs[i].tensor)) {
            st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                          "%s: tensor '%s' is mapped to shard '%s' by %s but is not in it", dir,
                          refs[i].tensor, refs[i].shard, index_name);
            goto done;
        }
    }
    st = set_build(files, n_files, dir, out, err);
    files = NULL; /* owned by set_build now, even on failure */
    n_files = 0;

done:
    for (size_t i = 0; i < n_files; i++)
        eng_st_file_close(files[i]);
    free(files);
    free(refs);
    json_object_put(root);
    return st;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Finds the only *.safetensors entry of DIR; NOT_FOUND when none, BAD_FORMAT when several. */
static pp_status find_single_file(const char *dir, char **path_out, eng_err *err)
{
    *path_out = NULL;
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        return eng_fail(err, e == ENOENT || e == ENOTDIR ? PP_STATUS_NOT_FOUND : PP_STATUS_IO,
                        "cannot open directory %s: %s", dir, strerror(e));
    }
    char *found = NULL;
    size_t n_found = 0;
    pp_status st = PP_STATUS_OK;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.' || !has_suffix(ent->d_name, ".safetensors"))
            continue;
        n_found++;
        if (n_found == 1) {
            found = eng_path_join(dir, ent->d_name);
            if (!found) {
                st = eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
                break;
            }
        }
    }
    closedir(d);
    if (st == PP_STATUS_OK && n_found == 0)
        st = eng_fail(err, PP_STATUS_NOT_FOUND, "no safetensors weights in %s", dir);
    else if (st == PP_STATUS_OK && n_found > 1)
        st = eng_fail(err, PP_STATUS_BAD_FORMAT,
                      "%s holds %zu *.safetensors files but no model.safetensors or %s", dir,
                      n_found, index_name);
    if (st != PP_STATUS_OK) {
        free(found);
        return st;
    }
    *path_out = found;
    return PP_STATUS_OK;
}

static pp_status open_single(const char *dir, const char *path, eng_st_set **out, eng_err *err)
{
    eng_st_file **files = calloc(1, sizeof *files);
    if (!files)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    pp_status st = eng_st_open_file(path, &files[0], err);
    if (st != PP_STATUS_OK) {
        free(files);
        return st;
    }
    return set_build(files, 1, dir, out, err);
}

pp_status eng_st_open_dir(const char *dir, eng_st_set **out, eng_err *err)
{
    if (!out)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_st_open_dir: out is NULL");
    *out = NULL;
    if (!dir)
        return eng_fail(err, PP_STATUS_INVALID_ARG, "eng_st_open_dir: dir is NULL");

    struct stat sb;
    char *path = eng_path_join(dir, index_name);
    if (!path)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    if (stat(path, &sb) == 0) {
        pp_status st = open_sharded(dir, path, out, err);
        free(path);
        return st;
    }
    free(path);

    path = eng_path_join(dir, "model.safetensors");
    if (!path)
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", dir);
    if (stat(path, &sb) != 0) {
        free(path);
        pp_status st = find_single_file(dir, &path, err);
        if (st != PP_STATUS_OK)
            return st;
    }
    pp_status st = open_single(dir, path, out, err);
    free(path);
    return st;
}

void eng_st_set_close(eng_st_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n_files; i++)
        eng_st_file_close(set->files[i]);
    free(set->files);
    free(set->tensors);
    free(set);
}

const eng_st_tensor *eng_st_find(const eng_st_set *set, const char *name)
{
    if (!set || !name)
        return NULL;
    size_t lo = 0, hi = set->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(set->tensors[mid]->name, name);
        if (c == 0)
            return set->tensors[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

size_t eng_st_count(const eng_st_set *set)
{
    return set ? set->n_tensors : 0;
}

const eng_st_tensor *eng_st_at(const eng_st_set *set, size_t i)
{
    if (!set || i >= set->n_tensors)
        return NULL;
    return set->tensors[i];
}

size_t eng_st_total_bytes(const eng_st_set *set)
{
    return set ? set->total_bytes : 0;
}
