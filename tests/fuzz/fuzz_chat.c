/* fuzz_chat.c: libFuzzer entry point for eng_chat_render, all three chat formats.
 *
 * Input layout: byte 0 picks options (bit 0: pass the tools text, bit 1: also check the
 * generation prompt invariant); the rest is the messages JSON up to the first NUL byte and the
 * tools JSON after it. Every format renders the same input. The harness traps when a call breaks
 * what chat.h promises: on failure no output and a message; on success a NUL-terminated prompt,
 * deterministic, and the add_generation_prompt=true render equal to the false one followed by
 * the format's generation prompt.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(int ok)
{
    if (!ok)
        __builtin_trap();
}

static char *copy_text(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    require(s != NULL);
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static const char *const generation_prompt[] = {
    "<|im_assistant|>assistant<|im_middle|>", /* ENG_CHAT_KIMI_K2 */
    "<|im_start|>assistant\n",                /* ENG_CHAT_QWEN3_CODER */
    "<|im_start|>assistant<|im_sep|>",        /* ENG_CHAT_PHI4 */
};

/* Renders once and checks the status contract; returns the status. */
static pp_status render(eng_chat_format fmt, const char *messages, const char *tools, bool agp,
                        char **out, size_t *len)
{
    eng_err err;
    memset(&err, 0x55, sizeof err); /* a message must be written, not left over */
    pp_status st = eng_chat_render(fmt, messages, tools, agp, out, len, &err);
    if (st == PP_STATUS_OK) {
        require(*out != NULL && (*out)[*len] == '\0');
    } else {
        require(*out == NULL && *len == 0);
        require(st == PP_STATUS_BAD_FORMAT || st == PP_STATUS_INVALID_ARG ||
                st == PP_STATUS_OUT_OF_MEMORY);
        require(memchr(err.msg, '\0', sizeof err.msg) != NULL && err.msg[0] != '\0');
    }
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    const uint8_t *sep = memchr(data, 0, size);
    size_t n_messages = sep ? (size_t)(sep - data) : size;
    char *messages = copy_text(data, n_messages);
    char *tools = NULL;
    if ((ctl & 1) && sep)
        tools = copy_text(sep + 1, size - n_messages - 1); /* stops at any later NUL */

    for (int f = 0; f < 3; f++) {
        eng_chat_format fmt = (eng_chat_format)f;
        char *bare = NULL, *full = NULL;
        size_t n_bare = 0, n_full = 0;
        pp_status st = render(fmt, messages, tools, false, &bare, &n_bare);
        if (ctl & 2) {
            pp_status st_full = render(fmt, messages, tools, true, &full, &n_full);
            require(st_full == st);
            if (st == PP_STATUS_OK) {
                size_t ng = strlen(generation_prompt[f]);
                require(n_full == n_bare + ng);
                require(memcmp(full, bare, n_bare) == 0);
                require(memcmp(full + n_bare, generation_prompt[f], ng) == 0);
            }
        } else if (st == PP_STATUS_OK) {
            st = render(fmt, messages, tools, false, &full, &n_full);
            require(st == PP_STATUS_OK && n_full == n_bare && memcmp(full, bare, n_bare) == 0);
        }
        free(bare);
        free(full);
    }
    free(messages);
    free(tools);
    return 0;
}
