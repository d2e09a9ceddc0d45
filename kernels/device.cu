// device.cu: device discovery and a self-test kernel. Every CUDA call is checked; nothing here
// aborts: failures come back as -1 with the CUDA error text.
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "kernels.h"

static void set_err(char *err, size_t err_len, const char *what, cudaError_t e)
{
    if (err && err_len)
        snprintf(err, err_len, "%s: %s (%s)", what, cudaGetErrorName(e), cudaGetErrorString(e));
}

extern "C" int kern_device_count(char *err, size_t err_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        set_err(err, err_len, "cudaGetDeviceCount", e);
        cudaGetLastError(); // clear the sticky-free error state
        return 0;
    }
    return n;
}

extern "C" int kern_device_info_get(int device, kern_device_info *info, char *err, size_t err_len)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        set_err(err, err_len, "cudaGetDeviceProperties", e);
        return -1;
    }
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", p.name);
    info->major = p.major;
    info->minor = p.minor;
    info->n_sm = p.multiProcessorCount;
    info->total_mem_bytes = p.totalGlobalMem;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaMemGetInfo(&info->free_mem_bytes, &info->total_mem_bytes)) != cudaSuccess) {
        set_err(err, err_len, "cudaMemGetInfo", e);
        return -1;
    }
    return 0;
}

extern "C" int kern_device_mem_used(int device, size_t *used, char *err, size_t err_len)
{
    int current = 0;
    cudaError_t e = cudaGetDevice(&current);
    size_t free_b = 0, total_b = 0;
    if (e == cudaSuccess && (e = cudaSetDevice(device)) == cudaSuccess) {
        e = cudaMemGetInfo(&free_b, &total_b);
        cudaError_t back = cudaSetDevice(current);
        if (e == cudaSuccess)
            e = back;
    }
    if (e != cudaSuccess) {
        set_err(err, err_len, "cudaMemGetInfo", e);
        return -1;
    }
    *used = total_b - free_b;
    return 0;
}

extern "C" int kern_device_total_mem(int device, size_t *bytes, char *err, size_t err_len)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, device);
    if (e != cudaSuccess) {
        set_err(err, err_len, "cudaGetDeviceProperties", e);
        return -1;
    }
    *bytes = p.totalGlobalMem;
    return 0;
}

// One thread per element.
static __global__ void affine_kernel(float *out, int n, float a, float b)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = a * (float)i + b;
}

extern "C" int kern_device_selftest(int n, char *err, size_t err_len)
{
    float *d = NULL;
    float *h = NULL;
    int rc = -1;
    cudaError_t e;
    if (n <= 0)
        n = 1;
    h = (float *)malloc((size_t)n * sizeof(float));
    if (!h) {
        if (err && err_len)
            snprintf(err, err_len, "out of host memory");
        return -1;
    }
    if ((e = cudaMalloc(&d, (size_t)n * sizeof(float))) != cudaSuccess) {
        set_err(err, err_len, "cudaMalloc", e);
        goto done;
    }
    affine_kernel<<<(n + 255) / 256, 256>>>(d, n, 2.0f, 1.0f);
    if ((e = cudaGetLastError()) != cudaSuccess || (e = cudaDeviceSynchronize()) != cudaSuccess) {
        set_err(err, err_len, "affine_kernel", e);
        goto done;
    }
    if ((e = cudaMemcpy(h, d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess) {
        set_err(err, err_len, "cudaMemcpy", e);
        goto done;
    }
    rc = 0;
    for (int i = 0; i < n; i++) {
        if (h[i] != 2.0f * (float)i + 1.0f) {
            if (err && err_len)
                snprintf(err, err_len, "element %d: got %g, expected %g", i, (double)h[i],
                         (double)(2.0f * (float)i + 1.0f));
            rc = -1;
            break;
        }
    }
done:
    cudaFree(d);
    free(h);
    return rc;
}
