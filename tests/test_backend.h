/* test_backend.h: which backend the end-to-end tests (test_fixtures, test_nano) run on, from the
 * environment: PP_TEST_BACKEND=cpu|cuda, default cpu. ctest runs the same checks, with the same
 * bounds, as gpu_fixtures_* / gpu_nano_* with PP_TEST_BACKEND=cuda; on a machine without a CUDA
 * device (or in a build without CUDA) those report "skipped: no CUDA device" and exit 77
 * (SKIP_RETURN_CODE), so a CPU-only run stays green and honest.
 */
#ifndef PP_TEST_BACKEND_H
#define PP_TEST_BACKEND_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#define TEST_EXIT_SKIP 77

/* Sets *name to the backend to test ("cpu" or "cuda"). Returns 0 to go on, TEST_EXIT_SKIP (after
 * printing why) when cuda is asked for and there is no device, or 2 for a bad value. */
static inline int test_backend_pick(const char **name)
{
    const char *env = getenv("PP_TEST_BACKEND");
    *name = env && env[0] ? env : "cpu";
    if (strcmp(*name, "cpu") == 0)
        return 0;
    if (strcmp(*name, "cuda") != 0) {
        fprintf(stderr, "PP_TEST_BACKEND must be cpu or cuda, got '%s'\n", *name);
        return 2;
    }
#ifdef PP_HAVE_CUDA
    char why[256];
    if (eng_backend_cuda_device_count(why, sizeof why) > 0)
        return 0;
    printf("skipped: no CUDA device (%s)\n", why[0] ? why : "cudaGetDeviceCount returned 0");
#else
    printf("skipped: no CUDA device (this build has no CUDA support)\n");
#endif
    return TEST_EXIT_SKIP;
}

#endif /* PP_TEST_BACKEND_H */
