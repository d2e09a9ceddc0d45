/* prompt.c: the smallest server-side use of paraphym, written only against paraphym.h.
 *
 *   cc prompt.c $(pkg-config --cflags --libs paraphym) -o prompt && ./prompt [KEY] [TEXT]
 *
 * Looks a model up in the registry (default: the embedded Qwen3-Coder nano model), sends one
 * prompt through the text-to-text pool (which cold-starts the model's workers) and streams the
 * completion to stdout.
 */
#include <paraphym.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    const char *key = argc > 1 ? argv[1] : "paraphym/qwen3-coder-nano";
    const char *text = argc > 2 ? argv[2] : "def fibonacci(n):\n";

    pp_model *model = NULL;
    pp_status st = pp_registry_get(key, &model);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "%s: %s\n", pp_status_str(st), pp_last_error());
        return 1;
    }
    const pp_model_info *info = pp_model_info_get(model);
    fprintf(stderr, "%s (%s, %llu parameters): one worker needs %llu MB of host RAM\n", info->registry_key,
            info->family, (unsigned long long)info->n_params,
            (unsigned long long)info->memory.first_worker_host_mb);

    pp_prompt prompt = {.text = text};
    pp_completion_params params;
    pp_completion_params_default(&params); /* greedy, 256 tokens */
    params.max_tokens = 48;

    pp_stream *stream = pp_model_prompt(model, &prompt, &params);
    pp_chunk chunk;
    while ((st = pp_stream_next(stream, &chunk, -1)) == PP_STATUS_OK) {
        fwrite(chunk.text, 1, chunk.text_len, stdout);
        if (chunk.finish_reason != PP_FINISH_NONE)
            fprintf(stderr, "\n[%zu prompt + %zu generated tokens]\n", chunk.prompt_tokens,
                    chunk.completion_tokens);
    }
    int rc = st == PP_STATUS_END ? 0 : 1;
    if (rc)
        fprintf(stderr, "%s: %s\n", pp_status_str(st), pp_stream_error(stream));
    pp_stream_free(stream);
    pp_pool_shutdown(pp_text_to_text_pool());
    return rc;
}
