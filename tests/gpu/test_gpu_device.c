/* test_gpu_device.c: the GPU smoke test. Exits 77 (ctest SKIP_RETURN_CODE) with "skipped: no
 * CUDA device" when there is no usable device; otherwise checks the device runs a kernel. */
#include <stdio.h>

#include "kernels.h"

int main(void)
{
    char err[512] = "";
    int n = kern_device_count(err, sizeof err);
    if (n <= 0) {
        printf("skipped: no CUDA device (%s)\n", err[0] ? err : "cudaGetDeviceCount returned 0");
        return 77;
    }
    kern_device_info info;
    if (kern_device_info_get(0, &info, err, sizeof err) != 0) {
        printf("FAIL: %s\n", err);
        return 1;
    }
    printf("device 0: %s, sm_%d%d, %d SMs, %.1f GiB\n", info.name, info.major, info.minor, info.n_sm,
           (double)info.total_mem_bytes / (1 << 30));
    if (kern_device_selftest(1 << 20, err, sizeof err) != 0) {
        printf("FAIL: %s\n", err);
        return 1;
    }
    printf("ok\n");
    return 0;
}
