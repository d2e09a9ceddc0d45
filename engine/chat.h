/* chat.h: the three families' chat formats, written natively (no template engine), producing the
 * same bytes as the official templates rendered by transformers' apply_chat_template:
 *   - Kimi K2 (Kimi-K2-Instruct's template): optional `<|im_system|>tool_declare<|im_middle|>`
 *     + tools as JSON, a default system turn when the first message is not a system one, turns
 *     `<|im_user|>user<|im_middle|>...<|im_end|>`; generation prompt
 *     `<|im_assistant|>assistant<|im_middle|>`;
 *   - Qwen3-Coder: ChatML `<|im_start|>role\n...<|im_end|>\n`, its XML tool declarations,
 *     `<tool_call><function=...><parameter=...>` calls and grouped `<tool_response>` turns;
 *   - Phi-4-reasoning: `<|im_start|>role<|im_sep|>...<|im_end|>`, with its reasoning system
 *     prompt as the first turn when the conversation does not start with a system message.
 *
 * Messages and tools are JSON as in the OpenAI / transformers convention:
 *   messages: [{"role": "system"|"user"|"assistant"|"tool", "content": "...",
 *               "name"?: "...", "tool_call_id"?: "...",
 *               "tool_calls"?: [{"id", "type": "function",
 *                                "function": {"name", "arguments": {...} or "json string"}}]}]
 *   tools:    [{"type": "function", "function": {"name", "description", "parameters": {...}}}]
 * JSON written into the prompt (tools, arguments) is serialised as Python's json.dumps with
 * ensure_ascii=False does (", " and ": " separators, key order kept, non-ASCII kept).
 */
#ifndef ENG_CHAT_H
#define ENG_CHAT_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"
#include "config.h"

typedef enum eng_chat_format {
    ENG_CHAT_KIMI_K2 = 0,
    ENG_CHAT_QWEN3_CODER,
    ENG_CHAT_PHI4,
} eng_chat_format;

/* The chat format of a model family. */
eng_chat_format eng_chat_format_for(eng_arch arch);

/* Renders messages_json (a JSON array, required) and tools_json (a JSON array or NULL) into a
 * malloc'ed NUL-terminated prompt (*len excludes the NUL; *out = NULL and *len = 0 on failure). BAD_FORMAT / INVALID_ARG with a
 * message for malformed JSON, an unknown role or a missing field. */
pp_status eng_chat_render(eng_chat_format fmt, const char *messages_json, const char *tools_json,
                          bool add_generation_prompt, char **out, size_t *len, eng_err *err);

#endif /* ENG_CHAT_H */
