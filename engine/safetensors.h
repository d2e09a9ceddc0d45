/* safetensors.h: memory-mapped safetensors files, single or sharded through
 * model.safetensors.index.json.
 *
 * Invariant: every tensor handed out has been validated: a known dtype, a shape whose element
 * count times the dtype size equals its byte range, a byte range inside the file's data section,
 * no two tensors overlapping. Tensor data stays in its stored dtype in the mapping; nothing is
 * converted or copied at open.
 */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

#define ENG_ST_MAX_DIM 8

typedef struct eng_st_tensor {
    const char *name;               /* owned by the file it came from */
    eng_dtype dtype;
    int n_dim;                      /* 0..ENG_ST_MAX_DIM (0 = scalar) */
    int64_t shape[ENG_ST_MAX_DIM];
    const void *data;               /* [shape...] dtype, host (inside the mapping) */
    size_t n_bytes;
} eng_st_tensor;

/* One parsed safetensors buffer (one shard). */
typedef struct eng_st_file eng_st_file;

/* Parses a safetensors image already in memory (buf, len): 8-byte little-endian header length,
 * JSON header, data section. buf must outlive the file object; nothing is copied from the data
 * section. `label` names the buffer in error messages. Returns PP_STATUS_OK and *out, or
 * PP_STATUS_BAD_FORMAT (truncated, header past the end, bad JSON, unknown dtype, offsets out of
 * range or overlapping, byte count that does not match the shape) with *out = NULL and a message
 * in err. This is the fuzzed entry point. */
pp_status eng_st_parse(const uint8_t *buf, size_t len, const char *label, eng_st_file **out,
                       eng_err *err);

/* Memory-maps and parses one file. PP_STATUS_NOT_FOUND / PP_STATUS_IO when it cannot be opened
 * or mapped, otherwise as eng_st_parse. */
pp_status eng_st_open_file(const char *path, eng_st_file **out, eng_err *err);

void eng_st_file_close(eng_st_file *file); /* NULL-safe; unmaps */

size_t eng_st_file_count(const eng_st_file *file);
const eng_st_tensor *eng_st_file_tensor(const eng_st_file *file, size_t i);

/* All tensors of a model directory: model.safetensors.index.json's weight_map when present
 * (every shard it names must exist and hold the tensors mapped to it), else model.safetensors,
 * else the single *.safetensors file in the directory. */
typedef struct eng_st_set eng_st_set;

pp_status eng_st_open_dir(const char *dir, eng_st_set **out, eng_err *err);
void eng_st_set_close(eng_st_set *set); /* NULL-safe */

/* Looks a tensor up by name; NULL when absent. O(log n). */
const eng_st_tensor *eng_st_find(const eng_st_set *set, const char *name);

/* Number of tensors and the i-th in name order (for listing). */
size_t eng_st_count(const eng_st_set *set);
const eng_st_tensor *eng_st_at(const eng_st_set *set, size_t i);

/* Total bytes of all tensor data in the set. */
size_t eng_st_total_bytes(const eng_st_set *set);

#endif /* ENG_SAFETENSORS_H */
