/* kernels.h: the C-callable launchers of paraphym's CUDA kernels.
 *
 * kernels/ includes nothing from the rest of the tree. At this stage it holds the device query
 * that decides whether GPU tests run; the op kernels arrive with the CUDA backend.
 */
#ifndef PP_KERNELS_H
#define PP_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kern_device_info {
    char name[256];
    int major, minor;           /* compute capability */
    int n_sm;
    size_t total_mem_bytes;
    size_t free_mem_bytes;
} kern_device_info;

/* Number of usable CUDA devices: 0 when there is no driver, no device, or cudaGetDeviceCount
 * fails (the error text goes to err when err_len > 0). Never aborts. */
int kern_device_count(char *err, size_t err_len);

/* Fills *info for device `device`; returns 0, or -1 with the CUDA error text in err. */
int kern_device_info_get(int device, kern_device_info *info, char *err, size_t err_len);

/* Runs a trivial kernel (out[i] = a * i + b over n elements) on device 0 and checks the result;
 * returns 0 when the device computes correctly, -1 with a message otherwise. */
int kern_device_selftest(int n, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* PP_KERNELS_H */
