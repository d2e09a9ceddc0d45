/* common.c: error slot helpers, dtype names, status names, whole-file reads. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

pp_status eng_fail(eng_err *err, pp_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return status;
}

void eng_err_prefix(eng_err *err, const char *fmt, ...)
{
    if (!err)
        return;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    size_t pl = strlen(prefix);
    size_t cap = sizeof err->msg;
    if (pl + 2 >= cap)
        return;
    size_t ol = strnlen(err->msg, cap - 1);
    if (ol > cap - 1 - pl - 2)
        ol = cap - 1 - pl - 2; /* keep the prefix; truncate the old message's tail */
    memmove(err->msg + pl + 2, err->msg, ol);
    memcpy(err->msg, prefix, pl);
    err->msg[pl] = ':';
    err->msg[pl + 1] = ' ';
    err->msg[pl + 2 + ol] = '\0';
}

static const struct {
    eng_dtype dtype;
    const char *name;
    size_t size;
} dtype_table[] = {
    {ENG_DTYPE_F64, "F64", 8},     {ENG_DTYPE_F32, "F32", 4},         {ENG_DTYPE_F16, "F16", 2},
    {ENG_DTYPE_BF16, "BF16", 2},   {ENG_DTYPE_F8_E4M3, "F8_E4M3", 1}, {ENG_DTYPE_F8_E5M2, "F8_E5M2", 1},
    {ENG_DTYPE_I64, "I64", 8},     {ENG_DTYPE_I32, "I32", 4},         {ENG_DTYPE_I16, "I16", 2},
    {ENG_DTYPE_I8, "I8", 1},       {ENG_DTYPE_U8, "U8", 1},           {ENG_DTYPE_BOOL, "BOOL", 1},
};

size_t eng_dtype_size(eng_dtype dtype)
{
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (dtype_table[i].dtype == dtype)
            return dtype_table[i].size;
    return 0;
}

const char *eng_dtype_name(eng_dtype dtype)
{
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (dtype_table[i].dtype == dtype)
            return dtype_table[i].name;
    return "UNKNOWN";
}

eng_dtype eng_dtype_parse(const char *name)
{
    if (!name)
        return ENG_DTYPE_UNKNOWN;
    for (size_t i = 0; i < sizeof dtype_table / sizeof dtype_table[0]; i++)
        if (strcmp(dtype_table[i].name, name) == 0)
            return dtype_table[i].dtype;
    return ENG_DTYPE_UNKNOWN;
}

void eng_msgf(char *msg, size_t msg_len, const char *fmt, ...)
{
    if (!msg || msg_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msg_len, fmt, ap);
    va_end(ap);
}

const char *pp_status_str(pp_status status)
{
    switch (status) {
    case PP_STATUS_OK: return "PP_STATUS_OK";
    case PP_STATUS_END: return "PP_STATUS_END";
    case PP_STATUS_TIMEOUT: return "PP_STATUS_TIMEOUT";
    case PP_STATUS_INVALID_ARG: return "PP_STATUS_INVALID_ARG";
    case PP_STATUS_NOT_FOUND: return "PP_STATUS_NOT_FOUND";
    case PP_STATUS_IO: return "PP_STATUS_IO";
    case PP_STATUS_BAD_FORMAT: return "PP_STATUS_BAD_FORMAT";
    case PP_STATUS_UNSUPPORTED: return "PP_STATUS_UNSUPPORTED";
    case PP_STATUS_OUT_OF_MEMORY: return "PP_STATUS_OUT_OF_MEMORY";
    case PP_STATUS_MEMORY_EXHAUSTED: return "PP_STATUS_MEMORY_EXHAUSTED";
    case PP_STATUS_SPAWN_FAILED: return "PP_STATUS_SPAWN_FAILED";
    case PP_STATUS_CANCELLED: return "PP_STATUS_CANCELLED";
    case PP_STATUS_DEVICE: return "PP_STATUS_DEVICE";
    case PP_STATUS_INTERNAL: return "PP_STATUS_INTERNAL";
    case PP_STATUS_QUEUE_FULL: return "PP_STATUS_QUEUE_FULL";
    case PP_STATUS_WORKER_DIED: return "PP_STATUS_WORKER_DIED";
    }
    return "PP_STATUS_UNKNOWN";
}

const char *pp_version(void) { return PP_VERSION_STRING; }

pp_status eng_read_file(const char *path, size_t max_bytes, char **text_out, size_t *len_out,
                        eng_err *err)
{
    *text_out = NULL;
    *len_out = 0;
    /* O_NONBLOCK: a FIFO planted under a model's file name must not hang the loader */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        return eng_fail(err, e == ENOENT || e == ENOTDIR ? PP_STATUS_NOT_FOUND : PP_STATUS_IO,
                        "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return eng_fail(err, PP_STATUS_IO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)max_bytes) {
        close(fd);
        return eng_fail(err, PP_STATUS_BAD_FORMAT, "%s: %lld bytes exceeds the %zu-byte limit",
                        path, (long long)sb.st_size, max_bytes);
    }
    size_t size = (size_t)sb.st_size, len = 0;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return eng_fail(err, PP_STATUS_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    while (len < size) {
        ssize_t got = read(fd, buf + len, size - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return eng_fail(err, PP_STATUS_IO, "%s: read failed: %s", path, strerror(e));
        }
        if (got == 0)
            break; /* the file shrank meanwhile: parse what is there */
        len += (size_t)got;
    }
    close(fd);
    *text_out = buf;
    *len_out = len;
    return PP_STATUS_OK;
}

char *eng_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t at = a;
    if (a > 0 && dir[a - 1] != '/')
        p[at++] = '/';
    memcpy(p + at, name, b + 1);
    return p;
}
