/* fuzz_safetensors.c: libFuzzer entry point for eng_st_parse.
 *
 * Every accepted image must describe tensors that lie inside the buffer: the harness reads the
 * first and last byte of each tensor (ASan reports any escape) and checks the documented
 * invariants (sorted unique names, byte count = elements x dtype size), trapping on a breach.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    eng_err err;
    eng_st_file *file = NULL;
    if (eng_st_parse(data, size, "fuzz", &file, &err) != PP_STATUS_OK) {
        if (file != NULL || memchr(err.msg, '\0', sizeof err.msg) == NULL)
            __builtin_trap();
        return 0;
    }
    volatile uint8_t sink = 0;
    const eng_st_tensor *prev = NULL;
    for (size_t i = 0; i < eng_st_file_count(file); i++) {
        const eng_st_tensor *t = eng_st_file_tensor(file, i);
        if (!t || t->dtype == ENG_DTYPE_UNKNOWN || t->n_dim < 0 || t->n_dim > ENG_ST_MAX_DIM)
            __builtin_trap();
        uint64_t n_elem = 1;
        for (int d = 0; d < t->n_dim; d++)
            n_elem *= (uint64_t)t->shape[d];
        if (n_elem * eng_dtype_size(t->dtype) != t->n_bytes)
            __builtin_trap();
        if (prev && strcmp(prev->name, t->name) >= 0)
            __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || p + t->n_bytes > data + size)
            __builtin_trap();
        if (t->n_bytes > 0)
            sink ^= p[0] ^ p[t->n_bytes - 1];
        prev = t;
    }
    (void)sink;
    eng_st_file_close(file);
    return 0;
}
