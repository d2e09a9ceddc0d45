/* bench_util.h: small helpers the benchmark programs share. */
#ifndef PP_BENCH_UTIL_H
#define PP_BENCH_UTIL_H

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double bench_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort comparator for doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* "a,b,c" -> out (at most max values); returns the count. */
static inline int bench_parse_list(const char *p, int *out, int max)
{
    int n = 0;
    while (*p && n < max) {
        out[n++] = atoi(p);
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    return n;
}

#endif /* PP_BENCH_UTIL_H */
