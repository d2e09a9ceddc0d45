/* common.h: the engine's shared vocabulary: error slot, stored dtypes and their exact
 * conversions to f32, and the f32 -> bf16 rounding of the bf16 compute mode.
 *
 * Invariant: every conversion to f32 here is exact (bf16, f16 and fp8 e4m3 values are all
 * representable in f32), so the CPU reference dequantizes stored weights without rounding;
 * eng_round_bf16 is the one rounding, used only when a bf16 compute mode asks for it.
 */
#ifndef ENG_COMMON_H
#define ENG_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "paraphym.h"

/* Error slot filled by a failing call: a human-readable message naming the file, tensor or key
 * at fault. Callers own it (usually on the stack). */
typedef struct eng_err {
    char msg[1024];
} eng_err;

/* snprintf into a caller's message buffer (msg_len bytes; nothing when msg is NULL or msg_len
 * is 0); a message longer than the buffer is truncated. */
void eng_msgf(char *msg, size_t msg_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Sets err->msg (printf format) when err is non-NULL and returns status, so a failure path
 * reads `return eng_fail(err, PP_STATUS_BAD_FORMAT, "...", ...);`. */
pp_status eng_fail(eng_err *err, pp_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes err->msg with a context string ("loading layer 3: ..."). */
void eng_err_prefix(eng_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reads a whole regular file of at most max_bytes into a malloc'ed buffer (*text_out, not
 * NUL-terminated; *len_out bytes). NOT_FOUND / IO when it cannot be opened or read (a FIFO or
 * directory is IO, never a hang), BAD_FORMAT when larger than max_bytes, OUT_OF_MEMORY. */
pp_status eng_read_file(const char *path, size_t max_bytes, char **text_out, size_t *len_out,
                        eng_err *err);

/* malloc'ed "dir/name" (no second '/' when dir ends with one); NULL when out of memory. */
char *eng_path_join(const char *dir, const char *name);

/* Dtypes a safetensors file may hold. ENG_DTYPE_UNKNOWN never describes a loaded tensor. */
typedef enum eng_dtype {
    ENG_DTYPE_UNKNOWN = 0,
    ENG_DTYPE_F64,
    ENG_DTYPE_F32,
    ENG_DTYPE_F16,
    ENG_DTYPE_BF16,
    ENG_DTYPE_F8_E4M3,
    ENG_DTYPE_F8_E5M2,
    ENG_DTYPE_I64,
    ENG_DTYPE_I32,
    ENG_DTYPE_I16,
    ENG_DTYPE_I8,
    ENG_DTYPE_U8,
    ENG_DTYPE_BOOL,
} eng_dtype;

/* ceil(a / b) for a >= 0, b > 0. */
static inline int64_t eng_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Bytes per element (0 for UNKNOWN). */
size_t eng_dtype_size(eng_dtype dtype);
/* The safetensors spelling ("BF16", "F8_E4M3", ...). */
const char *eng_dtype_name(eng_dtype dtype);
/* Parses the safetensors spelling; ENG_DTYPE_UNKNOWN when not recognised. */
eng_dtype eng_dtype_parse(const char *name);

static inline float eng_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float eng_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((man & 0x400u) == 0) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, 0x7f/0xff are NaN. */
static inline float eng_fp8_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t exp = (v >> 3) & 0xfu;
    uint32_t man = v & 0x7u;
    uint32_t u;
    if (exp == 0xf && man == 0x7) {
        u = sign | 0x7fc00000u;
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: man * 2^-9 */
            float f = (float)man * (1.0f / 512.0f);
            return (v & 0x80u) ? -f : f;
        }
    } else {
        u = sign | ((exp + 127 - 7) << 23) | (man << 20);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* f rounded to the nearest bf16 value, ties to even, returned as the f32 holding it (its low 16
 * bits zero): what torch's float -> bfloat16 cast gives. Works on the bit pattern, so subnormals
 * are rounded, not flushed; values past the largest bf16 (3.3895e38) by half an ulp or more
 * become +-inf; every NaN becomes the quiet NaN 0x7fc00000 (torch's 0x7fc0). Not an exact
 * conversion: the one rounding the engine has (the bf16 compute mode, engine/backend_bf16.c).
 * kernels/elementwise.cu's kern_round_bf16 uses the same integer formula. */
static inline float eng_round_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        u = 0x7fc00000u;
    else
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Reads element i of a vector stored as F32, BF16 or F16 and widens it to f32. */
static inline float eng_load_f32(const void *data, eng_dtype dtype, size_t i)
{
    switch (dtype) {
    case ENG_DTYPE_F32: return ((const float *)data)[i];
    case ENG_DTYPE_BF16: return eng_bf16_to_f32(((const uint16_t *)data)[i]);
    case ENG_DTYPE_F16: return eng_f16_to_f32(((const uint16_t *)data)[i]);
    default: return 0.0f;
    }
}

#endif /* ENG_COMMON_H */
