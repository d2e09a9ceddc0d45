// dequant.cuh: exact conversions of stored weight dtypes to f32 for the CUDA kernels
// (elementwise.cu's embedding, matmul.cu, mla.cu, moe.cu) and of bf16 KV-cache elements
// (attention.cu, mla.cu), the device twins of engine/common.h and engine/weights.c's
// eng_weight_row_f32.
//
// Invariant: every conversion is exact (bf16, f16 and e4m3 values are all representable in f32)
// and returns the value engine/common.h returns, bit for bit except the payload and sign of a
// NaN; a dequantized weight is value * scale as one f32 product, as the CPU reference forms it.
// The scalar helpers, dq_load and dq_weight_at are __host__ __device__ (plain loads on the host)
// so they can be checked against the engine on a machine without a GPU. Nothing here depends on
// flush-to-zero being off.
#ifndef PP_DEQUANT_CUH
#define PP_DEQUANT_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

static __host__ __device__ __forceinline__ float dq_bits_to_f32(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

static __host__ __device__ __forceinline__ uint32_t dq_f32_to_bits(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

static __host__ __device__ __forceinline__ float dq_bf16(uint16_t h)
{
    return dq_bits_to_f32((uint32_t)h << 16);
}

// A KV-cache element (kernels.h's kv_dtype: KERN_DT_F32 stored as float, KERN_DT_BF16 as
// uint16_t) as the f32 it stands for. attention.cu and mla.cu template their kernels on the
// element type and widen with this where a key/value tile is staged, so everything after the
// staging is the f32 path's code.
static __host__ __device__ __forceinline__ float dq_kv(float x) { return x; }
static __host__ __device__ __forceinline__ float dq_kv(uint16_t h) { return dq_bf16(h); }

// cvt.f32.f16 on the device (exact, subnormals included).
static __host__ __device__ __forceinline__ float dq_f16(uint16_t h)
{
    __half_raw r;
    r.x = h;
    return __half2float(__half(r));
}

// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, 0x7f/0xff are NaN.
static __host__ __device__ __forceinline__ float dq_e4m3(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t mag = v & 0x7fu;
    if (mag == 0x7fu)
        return dq_bits_to_f32(sign | 0x7fc00000u);
    if (mag < 0x08u) // zero or subnormal: man * 2^-9, a normal f32 (no FTZ hazard)
        return dq_bits_to_f32(dq_f32_to_bits((float)mag * (1.0f / 512.0f)) | sign);
    // exponent field e (1..15) moves to bits 23.. and is rebiased by 127 - 7 = 120
    return dq_bits_to_f32(sign | ((mag << 20) + (120u << 23)));
}

// Two e4m3 values (low byte = first) through the hardware cvt.rn.f16x2.e4m3x2 (sm_89+; the
// cuda_fp8.h emulation elsewhere), each f16 widened exactly to f32.
static __host__ __device__ __forceinline__ float2 dq_e4m3x2_cvt(uint16_t v)
{
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3);
    return __half22float2(__half2(h));
}

// Four e4m3 values packed little-endian in v (byte e = element e).
static __host__ __device__ __forceinline__ void dq_e4m3x4(uint32_t v, float (&out)[4])
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    float2 lo = dq_e4m3x2_cvt((uint16_t)(v & 0xffffu));
    float2 hi = dq_e4m3x2_cvt((uint16_t)(v >> 16));
    out[0] = lo.x;
    out[1] = lo.y;
    out[2] = hi.x;
    out[3] = hi.y;
#else
    for (int e = 0; e < 4; e++)
        out[e] = dq_e4m3((uint8_t)(v >> (8 * e)));
#endif
}

// Nibble e (0 = lowest column) of an INT4_GROUP word as the signed value u - 8.
static __host__ __device__ __forceinline__ float dq_int4(uint32_t word, int e)
{
    return (float)((int)((word >> (4 * e)) & 0xfu) - 8);
}

// An INT8_CHANNEL byte as the signed value it stores (-128 .. 127).
static __host__ __device__ __forceinline__ float dq_int8(uint8_t v)
{
    return (float)(int8_t)v;
}

// Four INT8_CHANNEL values packed little-endian in v (byte e = element e), dq_int8 of each
// without I2F: int-to-float conversions run at 16 per clock per SM on sm_80/sm_90 (the CUDA C
// Programming Guide's throughput table), and an int8 GEMV at an H100's 3.35 TB/s over 132 SMs
// at 1.98 GHz needs about 13. Instead, byte b ^ 0x80 = b + 128 as the low mantissa bits of 2^23
// is the float 2^23 + b + 128 exactly, and subtracting 2^23 + 128 (8388736) leaves b exactly
// (+0 for b = 0, as the conversion gives).
static __host__ __device__ __forceinline__ void dq_int8x4(uint32_t v, float (&out)[4])
{
    const uint32_t u = v ^ 0x80808080u;
    for (int e = 0; e < 4; e++)
        out[e] = dq_bits_to_f32(0x4b000000u | ((u >> (8 * e)) & 0xffu)) - 8388736.0f;
}

// A read-only load: __ldg on the device, a plain load on the host.
template <typename T> static __host__ __device__ __forceinline__ T dq_ldg(const T *p)
{
#ifdef __CUDA_ARCH__
    return __ldg(p);
#else
    return *p;
#endif
}

// Element i of a scale or norm vector stored as dt, widened to f32 (dt already validated).
static __host__ __device__ __forceinline__ float dq_load(const void *p, kern_dtype dt, int64_t i)
{
    switch (dt) {
    case KERN_DT_BF16: return dq_bf16(dq_ldg((const unsigned short *)p + i));
    case KERN_DT_F16: return dq_f16(dq_ldg((const unsigned short *)p + i));
    default: return dq_ldg((const float *)p + i);
    }
}

static inline bool dq_dtype_valid(kern_dtype dt)
{
    return dt == KERN_DT_F32 || dt == KERN_DT_BF16 || dt == KERN_DT_F16;
}

// Checks a weight descriptor so every dequantization stays inside its tensors: known format,
// data (and scales for the quantized formats) present, block/group sizes positive and scale
// and packed grids at least as wide as the columns need (INT8_CHANNEL: exactly one scale
// column, as its scale is indexed by row alone). n_in <= 2^30 and n_out <= INT32_MAX
// let kernels index columns (and a granule past the last one) and divide row numbers in int.
static inline bool dq_weight_valid(const kern_weight *w)
{
    if (!w || !w->data || w->n_out < 0 || w->n_out > INT32_MAX || w->n_in < 0 ||
        w->n_in > ((int64_t)1 << 30))
        return false;
    switch (w->fmt) {
    case KERN_W_F32:
    case KERN_W_BF16:
    case KERN_W_F16: return true;
    case KERN_W_FP8_BLOCK:
        return w->scale && dq_dtype_valid(w->scale_dtype) && w->block_out > 0 && w->block_in > 0 &&
               w->scale_cols >= (w->n_in + w->block_in - 1) / w->block_in;
    case KERN_W_INT4_GROUP:
        return w->scale && dq_dtype_valid(w->scale_dtype) && w->group > 0 &&
               w->packed_cols >= (w->n_in + 7) / 8 &&
               w->scale_cols >= (w->n_in + w->group - 1) / w->group;
    case KERN_W_INT8_CHANNEL:
        return w->scale && dq_dtype_valid(w->scale_dtype) && w->scale_cols == 1;
    }
    return false;
}

// Dequantized element (n, k) of a validated weight, 0 <= n < n_out, 0 <= k < n_in
// (engine/weights.c's eng_weight_row_f32 for one element).
static __host__ __device__ __forceinline__ float dq_weight_at(const kern_weight &w, int64_t n,
                                                              int64_t k)
{
    switch (w.fmt) {
    case KERN_W_F32: return dq_ldg((const float *)w.data + n * w.n_in + k);
    case KERN_W_BF16: return dq_bf16(dq_ldg((const unsigned short *)w.data + n * w.n_in + k));
    case KERN_W_F16: return dq_f16(dq_ldg((const unsigned short *)w.data + n * w.n_in + k));
    case KERN_W_FP8_BLOCK: {
        float v = dq_e4m3(dq_ldg((const unsigned char *)w.data + n * w.n_in + k));
        return v * dq_load(w.scale, w.scale_dtype,
                           (int64_t)((int)n / w.block_out) * w.scale_cols + (int)k / w.block_in);
    }
    case KERN_W_INT8_CHANNEL:
        return dq_int8(dq_ldg((const unsigned char *)w.data + n * w.n_in + k)) *
               dq_load(w.scale, w.scale_dtype, n);
    default: { // KERN_W_INT4_GROUP
        uint32_t word = dq_ldg((const unsigned int *)w.data + n * w.packed_cols + k / 8);
        return dq_int4(word, (int)(k % 8)) *
               dq_load(w.scale, w.scale_dtype, n * w.scale_cols + (int)k / w.group);
    }
    }
}

#endif // PP_DEQUANT_CUH
