/* paraphym.h: the public C API of paraphym, a CUDA-accelerated LLM inference engine.
 *
 * At this stage the header holds the shared vocabulary: the status codes every fallible call
 * returns and the version. The registry, pool and stream API arrive with their issues.
 *
 * Conventions: every fallible call returns pp_status; outputs go through out-parameters that are
 * set to NULL on failure; destroy functions accept NULL. Nothing here aborts or exits.
 */
#ifndef PARAPHYM_H
#define PARAPHYM_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define PP_API __declspec(dllexport)
#elif defined(__GNUC__)
#define PP_API __attribute__((visibility("default")))
#else
#define PP_API
#endif

#define PP_VERSION_MAJOR 0
#define PP_VERSION_MINOR 1
#define PP_VERSION_PATCH 0
#define PP_VERSION_STRING "0.1.0"

typedef enum pp_status {
    PP_STATUS_OK = 0,
    PP_STATUS_END,               /* a stream has no further chunks */
    PP_STATUS_TIMEOUT,           /* nothing arrived within the wait */
    PP_STATUS_INVALID_ARG,       /* bad input from the caller: bad id, bad option, NULL */
    PP_STATUS_NOT_FOUND,         /* a file, tensor or registry key does not exist */
    PP_STATUS_IO,                /* reading a file failed */
    PP_STATUS_BAD_FORMAT,        /* a file exists but is malformed (config, safetensors) */
    PP_STATUS_UNSUPPORTED,       /* well formed, but a feature this build does not implement */
    PP_STATUS_OUT_OF_MEMORY,     /* an allocation failed */
    PP_STATUS_MEMORY_EXHAUSTED,  /* the pool's memory governor refused a worker */
    PP_STATUS_SPAWN_FAILED,      /* a worker failed to load its model */
    PP_STATUS_CANCELLED,         /* the caller cancelled the stream */
    PP_STATUS_DEVICE,            /* a CUDA / cuBLAS / driver error */
    PP_STATUS_INTERNAL,          /* a bug: an invariant did not hold */
} pp_status;

/* Static name of a status ("PP_STATUS_OK", ...); never NULL, "PP_STATUS_UNKNOWN" for values
 * outside the enum. Thread-safe. */
PP_API const char *pp_status_str(pp_status status);

/* Version of the library this program is linked against, e.g. "0.1.0". Thread-safe. */
PP_API const char *pp_version(void);

#ifdef __cplusplus
}
#endif

#endif /* PARAPHYM_H */
