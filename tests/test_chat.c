/* test_chat.c: engine/chat.c against the official chat templates, byte for byte.
 *
 * Usage: test_chat FIXTURES_CHAT_DIR
 * Renders every case of DIR/kimi_k2.json, DIR/qwen3_coder.json (Jinja renders of the official
 * templates, from ../shared/fixtures/chat) and DIR/extra_cases.json (more cases rendered by
 * DIR/make_extra_cases.py with the same templates), then the hand-written Phi-4 cases (format
 * of docs/MODELS.md 3.6), the inputs chat.c accepts beyond the templates, and the error cases.
 * A mismatch prints the first differing byte with context. Exits 0 when everything passes.
 */
#include <json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

static int n_run, n_fail;

/* Prints s[from..to) with control bytes and quotes escaped. */
static void print_escaped(const char *s, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '\t')
            fputs("\\t", stderr);
        else if (c == '\\' || c == '"')
            fprintf(stderr, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
}

static void print_context(const char *label, const char *s, size_t n, size_t pos)
{
    size_t from = pos > 60 ? pos - 60 : 0, to = pos + 60 < n ? pos + 60 : n;
    fprintf(stderr, "    %s [%zu..%zu) of %zu: \"", label, from, to, n);
    print_escaped(s, from, to);
    fputs("\"\n", stderr);
}

/* Renders and compares with `expected` (n_expected bytes). */
static void check_render(const char *name, eng_chat_format fmt, const char *messages,
                         const char *tools, bool agp, const char *expected, size_t n_expected)
{
    n_run++;
    char *out = NULL;
    size_t len = 0;
    eng_err err = {{0}};
    pp_status st = eng_chat_render(fmt, messages, tools, agp, &out, &len, &err);
    if (st != PP_STATUS_OK) {
        fprintf(stderr, "FAIL %s: %s: %s\n", name, pp_status_str(st), err.msg);
        n_fail++;
        return;
    }
    if (len != strlen(out) && memchr(out, '\0', len) == NULL) {
        fprintf(stderr, "FAIL %s: len %zu but strlen %zu\n", name, len, strlen(out));
        n_fail++;
    } else if (len != n_expected || memcmp(out, expected, len) != 0) {
        size_t pos = 0;
        while (pos < len && pos < n_expected && out[pos] == expected[pos])
            pos++;
        fprintf(stderr, "FAIL %s: output differs at byte %zu (got %zu bytes, expected %zu)\n",
                name, pos, len, n_expected);
        print_context("got     ", out, len, pos);
        print_context("expected", expected, n_expected, pos);
        n_fail++;
    } else if (out[len] != '\0') {
        fprintf(stderr, "FAIL %s: output not NUL-terminated\n", name);
        n_fail++;
    }
    free(out);
}

static void check_text(const char *name, eng_chat_format fmt, const char *messages,
                       const char *tools, bool agp, const char *expected)
{
    check_render(name, fmt, messages, tools, agp, expected, strlen(expected));
}

/* Expects status `want`, no output and a message containing `want_msg`. */
static void check_error(const char *name, eng_chat_format fmt, const char *messages,
                        const char *tools, pp_status want, const char *want_msg)
{
    n_run++;
    char *out = (char *)"untouched";
    size_t len = 12345;
    eng_err err = {{0}};
    pp_status st = eng_chat_render(fmt, messages, tools, true, &out, &len, &err);
    if (st != want || out != NULL || len != 0 || strstr(err.msg, want_msg) == NULL) {
        fprintf(stderr, "FAIL %s: got %s (out %s, len %zu, msg \"%s\"), expected %s with \"%s\"\n",
                name, pp_status_str(st), out ? "set" : "NULL", len, err.msg, pp_status_str(want),
                want_msg);
        n_fail++;
        if (st == PP_STATUS_OK)
            free(out);
    }
}

/* ---- fixture files ------------------------------------------------------------------------- */

static json_object *load_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        char *grown = realloc(buf, cap * 2);
        if (!grown) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = grown;
        cap *= 2;
    }
    fclose(f);
    if (!buf)
        return NULL;
    struct json_tokener *tok = json_tokener_new_ex(256);
    json_object *obj = tok ? json_tokener_parse_ex(tok, buf, (int)n) : NULL;
    if (tok)
        json_tokener_free(tok);
    free(buf);
    return obj;
}

static bool format_named(const char *name, eng_chat_format *fmt)
{
    if (strcmp(name, "kimi_k2") == 0)
        *fmt = ENG_CHAT_KIMI_K2;
    else if (strcmp(name, "qwen3_coder") == 0)
        *fmt = ENG_CHAT_QWEN3_CODER;
    else if (strcmp(name, "phi4") == 0)
        *fmt = ENG_CHAT_PHI4;
    else
        return false;
    return true;
}

static char *dup_json(json_object *v)
{
    const char *s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN |
                                                          JSON_C_TO_STRING_NOSLASHESCAPE);
    return s ? strdup(s) : NULL;
}

/* Runs every case of DIR/FILE; the format comes from the file's "family" or the case's
 * "format". Returns the number of cases. */
static int run_fixture_file(const char *dir, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_object *doc = load_json(path), *family = NULL, *cases = NULL;
    if (!doc || !json_object_object_get_ex(doc, "cases", &cases) ||
        !json_object_is_type(cases, json_type_array)) {
        fprintf(stderr, "FAIL %s: missing or malformed fixture file\n", path);
        n_run++;
        n_fail++;
        json_object_put(doc);
        return 0;
    }
    json_object_object_get_ex(doc, "family", &family);
    size_t n = json_object_array_length(cases);
    for (size_t i = 0; i < n; i++) {
        json_object *c = json_object_array_get_idx(cases, i), *v;
        char name[512];
        const char *fname = family ? json_object_get_string(family) : "?";
        if (json_object_object_get_ex(c, "format", &v))
            fname = json_object_get_string(v);
        snprintf(name, sizeof name, "%s:%s:%s", file, fname,
                 json_object_object_get_ex(c, "name", &v) ? json_object_get_string(v) : "?");
        eng_chat_format fmt;
        json_object *msgs, *rendered, *agp, *tools = NULL;
        if (!format_named(fname, &fmt) || !json_object_object_get_ex(c, "messages", &msgs) ||
            !json_object_object_get_ex(c, "rendered", &rendered) ||
            !json_object_object_get_ex(c, "add_generation_prompt", &agp)) {
            fprintf(stderr, "FAIL %s: malformed case\n", name);
            n_run++;
            n_fail++;
            continue;
        }
        json_object_object_get_ex(c, "tools", &tools);
        char *mtext = dup_json(msgs);
        char *ttext = tools ? dup_json(tools) : NULL;
        check_render(name, fmt, mtext, ttext, json_object_get_boolean(agp),
                     json_object_get_string(rendered),
                     (size_t)json_object_get_string_len(rendered));
        free(mtext);
        free(ttext);
    }
    json_object_put(doc);
    return (int)n;
}

/* ---- Phi-4 (MODELS.md 3.6: <|im_start|>{role}<|im_sep|>{content}<|im_end|>, no newlines, and
 * the default system turn first) ---- */

/* Phi-4-reasoning's system prompt (MODELS.md 3.6), injected when the conversation has no
 * system turn first. */
#define PHI_SYS_TURN \
    "<|im_start|>system<|im_sep|>" \
    "You are Phi, a language model trained by Microsoft to help users. Your role as an " \
    "assistant involves thoroughly exploring questions through a systematic thinking process " \
    "before providing the final precise and accurate solutions. This requires engaging in a " \
    "comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, " \
    "backtracing, and iteration to develop well-considered thinking process. Please structure " \
    "your response into two main sections: Thought and Solution using the specified format: " \
    "<think> {Thought section} </think> {Solution section}. In the Thought section, detail " \
    "your reasoning process in steps. Each step should include detailed considerations such " \
    "as analysing questions, summarizing relevant findings, brainstorming new ideas, " \
    "verifying the accuracy of the current steps, refining any errors, and revisiting " \
    "previous steps. In the Solution section, based on various attempts, explorations, and " \
    "reflections from the Thought section, systematically present the final solution that you " \
    "deem correct. The Solution section should be logical, accurate, and concise and detail " \
    "necessary steps needed to reach the conclusion. Now, try to solve the following question " \
    "through the above guidelines:" \
    "<|im_end|>"

static void test_phi4(void)
{
    const eng_chat_format P = ENG_CHAT_PHI4;
    check_text("phi4:single_user", P, "[{\"role\": \"user\", \"content\": \"Hi\"}]", NULL, true,
               PHI_SYS_TURN "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>");
    check_text("phi4:system_user_assistant_no_prompt", P,
               "[{\"role\": \"system\", \"content\": \"Be terse.\"},"
               " {\"role\": \"user\", \"content\": \"2+2?\"},"
               " {\"role\": \"assistant\", \"content\": \"<think>easy</think>4\"}]",
               NULL, false,
               "<|im_start|>system<|im_sep|>Be terse.<|im_end|>"
               "<|im_start|>user<|im_sep|>2+2?<|im_end|>"
               "<|im_start|>assistant<|im_sep|><think>easy</think>4<|im_end|>");
    check_text("phi4:multi_turn_unicode", P,
               "[{\"role\": \"user\", \"content\": \"\\u4f60\\u597d\\n\\ud83d\\ude0a\"},"
               " {\"role\": \"assistant\", \"content\": \"Bonjour ! \"},"
               " {\"role\": \"user\", \"content\": \"\\\"again\\\"\\t\"}]",
               NULL, true,
               PHI_SYS_TURN "<|im_start|>user<|im_sep|>你好\n😊<|im_end|>"
               "<|im_start|>assistant<|im_sep|>Bonjour ! <|im_end|>"
               "<|im_start|>user<|im_sep|>\"again\"\t<|im_end|>"
               "<|im_start|>assistant<|im_sep|>");
    check_text("phi4:tools_ignored_tool_turns_generic", P,
               "[{\"role\": \"user\", \"content\": \"time?\"},"
               " {\"role\": \"assistant\", \"tool_calls\": [{\"type\": \"function\","
               " \"function\": {\"name\": \"now\", \"arguments\": \"{}\"}}]},"
               " {\"role\": \"tool\", \"content\": \"12:00\"}]",
               "[{\"type\": \"function\", \"function\": {\"name\": \"now\"}}]", true,
               PHI_SYS_TURN "<|im_start|>user<|im_sep|>time?<|im_end|>"
               "<|im_start|>assistant<|im_sep|><|im_end|>"
               "<|im_start|>tool<|im_sep|>12:00<|im_end|>"
               "<|im_start|>assistant<|im_sep|>");
    check_text("phi4:default_system_prompt", P, "[{\"role\": \"user\", \"content\": \"\"}]",
               NULL, false, PHI_SYS_TURN "<|im_start|>user<|im_sep|><|im_end|>");
    check_text("phi4:empty_messages", P, "[]", NULL, true, PHI_SYS_TURN "<|im_start|>assistant<|im_sep|>");
    check_text("phi4:empty_messages_no_prompt", P, " [ ] ", NULL, false, PHI_SYS_TURN);
}

/* ---- inputs chat.c accepts beyond the templates, and number spelling ------------------------ */

static void test_extensions(void)
{
    const eng_chat_format K = ENG_CHAT_KIMI_K2, Q = ENG_CHAT_QWEN3_CODER;
    static const char qwen_head[] =
        "<|im_start|>system\nYou are Qwen, a helpful AI assistant that can interact with a "
        "computer to solve tasks.\n\nYou have access to the following functions:\n\n<tools>\n"
        "<function>\n<name>now</name>\n<description>Time.</description>\n<parameters>\n"
        "</parameters>\n</function>\n</tools>\n\nIf you choose";
    /* A tool without "parameters" renders as "parameters": null (Jinja fails on it). */
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    n_run++;
    if (eng_chat_render(Q, "[{\"role\": \"user\", \"content\": \"x\"}]",
                        "[{\"function\": {\"name\": \"now\", \"description\": \"Time.\"}}]",
                        true, &a, &la, NULL) != PP_STATUS_OK ||
        eng_chat_render(Q, "[{\"role\": \"user\", \"content\": \"x\"}]",
                        "[{\"function\": {\"name\": \"now\", \"description\": \"Time.\","
                        " \"parameters\": null}}]",
                        true, &b, &lb, NULL) != PP_STATUS_OK ||
        la != lb || memcmp(a, b, la) != 0 || strncmp(a, qwen_head, strlen(qwen_head)) != 0) {
        fprintf(stderr, "FAIL qwen:tool_without_parameters\n");
        n_fail++;
    }
    free(a);
    free(b);

    /* null content on a tool-calling assistant message reads as absent content. */
    check_text("kimi:tool_call_content_null", K,
               "[{\"role\": \"user\", \"content\": \"t\"}, {\"role\": \"assistant\", \"content\":"
               " null, \"tool_calls\": [{\"function\": {\"name\": \"now\", \"arguments\": {}}}]}]",
               NULL, false,
               "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
               "<|im_user|>user<|im_middle|>t<|im_end|>"
               "<|im_assistant|>assistant<|im_middle|><|im_end|>");

    /* Numbers: Python spells NaN / inf, 64-bit edge integers, -0, 1E5 and friends so. */
    check_text(
        "qwen:number_spelling_in_arguments", Q,
        "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
        " \"arguments\": {\"a\": NaN, \"b\": Infinity, \"c\": -Infinity, \"d\": -0,"
        " \"e\": 1E5, \"f\": 9223372036854775807, \"g\": 18446744073709551614,"
        " \"h\": -9223372036854775807, \"i\": 1e400, \"j\": 1e-400, \"k\": 0.30000000000000004,"
        " \"l\": [1.0e-4, 12345678901234567890e-3, 2.5e-5]}}}]}]",
        NULL, false,
        "<|im_start|>assistant\n<tool_call>\n<function=f>\n"
        "<parameter=a>\nnan\n</parameter>\n<parameter=b>\ninf\n</parameter>\n"
        "<parameter=c>\n-inf\n</parameter>\n<parameter=d>\n0\n</parameter>\n"
        "<parameter=e>\n100000.0\n</parameter>\n"
        "<parameter=f>\n9223372036854775807\n</parameter>\n"
        "<parameter=g>\n18446744073709551614\n</parameter>\n"
        "<parameter=h>\n-9223372036854775807\n</parameter>\n"
        "<parameter=i>\ninf\n</parameter>\n<parameter=j>\n0.0\n</parameter>\n"
        "<parameter=k>\n0.30000000000000004\n</parameter>\n"
        "<parameter=l>\n[0.0001, 1.2345678901234568e+16, 2.5e-05]\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n");
    check_text("kimi:number_spelling_in_tools", K, "[]",
               "[{\"v\": [NaN, Infinity, -Infinity, -0, -0.0, 1E5, 1e16, 1e15, 0.0001, 0.00001,"
               " 18446744073709551614, \"\\u0000\\u001f\\u007f/\"]}]",
               false,
               "<|im_system|>tool_declare<|im_middle|>[{\"v\": [NaN, Infinity, -Infinity, 0, "
               "-0.0, 100000.0, 1e+16, 1000000000000000.0, 0.0001, 1e-05, 18446744073709551614, "
               "\"\\u0000\\u001f\x7f/\"]}]<|im_end|>");
    /* tools_json "null" means no tools. */
    check_text("qwen:tools_json_null", Q, "[{\"role\": \"user\", \"content\": \"x\"}]", "null",
               false, "<|im_start|>user\nx<|im_end|>\n");
    /* An embedded NUL survives into the prompt; len counts it. */
    static const char nul_expected[] = PHI_SYS_TURN "<|im_start|>user<|im_sep|>a\0b<|im_end|>";
    check_render("phi4:embedded_nul", ENG_CHAT_PHI4,
                 "[{\"role\": \"user\", \"content\": \"a\\u0000b\"}]", NULL, false, nul_expected,
                 sizeof nul_expected - 1);
}

/* ---- errors -------------------------------------------------------------------------------- */

static void test_errors(void)
{
    const pp_status BAD = PP_STATUS_BAD_FORMAT, INV = PP_STATUS_INVALID_ARG;
    static const char user[] = "[{\"role\": \"user\", \"content\": \"x\"}]";
    /* 100 nested arrays inside a message: past the parser's nesting limit. */
    char deep[512];
    int k = snprintf(deep, sizeof deep, "[{\"role\": \"user\", \"content\": \"x\", \"d\": ");
    for (int i = 0; i < 100; i++)
        deep[k++] = '[';
    for (int i = 0; i < 100; i++)
        deep[k++] = ']';
    snprintf(deep + k, sizeof deep - (size_t)k, "}]");
    for (int f = 0; f < 3; f++) {
        eng_chat_format fmt = (eng_chat_format)f;
        check_error("malformed_json", fmt, "[{\"role\": \"user\", ", NULL, BAD, "malformed JSON");
        check_error("empty_text", fmt, "", NULL, BAD, "truncated JSON");
        check_error("trailing_garbage", fmt, "[] x", NULL, BAD, "malformed JSON");
        check_error("two_values", fmt, "[] []", NULL, BAD, "malformed JSON");
        check_error("trailing_comma", fmt, "[{\"role\": \"user\", \"content\": \"x\"},]", NULL,
                    BAD, "malformed JSON");
        check_error("invalid_utf8", fmt, "[{\"role\": \"user\", \"content\": \"\xff\"}]", NULL,
                    BAD, "utf-8");
        check_error("tools_malformed_json", fmt, user, "[{", BAD, "chat: tools: ");
        check_error("messages_not_array", fmt, "{\"role\": \"user\"}", NULL, INV,
                    "messages must be a JSON array");
        check_error("messages_number", fmt, "42", NULL, INV, "messages must be a JSON array");
        check_error("messages_null", fmt, " null ", NULL, INV,
                    "messages must be a JSON array, not null");
        check_error("message_not_object", fmt, "[\"hi\"]", NULL, INV, "must be an object");
        check_error("unknown_role", fmt, "[{\"role\": \"developer\", \"content\": \"x\"}]", NULL,
                    INV, "unknown role \"developer\"");
        check_error("role_with_nul", fmt, "[{\"role\": \"user\\u0000\", \"content\": \"x\"}]", NULL,
                    INV, "unknown role");
        check_error("missing_role", fmt, "[{\"content\": \"x\"}]", NULL, INV, "missing role");
        check_error("role_not_string", fmt, "[{\"role\": 1, \"content\": \"x\"}]", NULL, INV,
                    "missing role");
        check_error("missing_content", fmt, "[{\"role\": \"user\"}]", NULL, INV, "missing content");
        check_error("null_content", fmt, "[{\"role\": \"user\", \"content\": null}]", NULL, INV,
                    "missing content (null)");
        check_error("number_content", fmt, "[{\"role\": \"user\", \"content\": 3}]", NULL, INV,
                    "content must be a string");
        check_error("assistant_no_content_empty_calls", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": []}]", NULL, INV,
                    "missing content");
        check_error("tool_calls_not_array", fmt,
                    "[{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": {}}]", NULL,
                    INV, "tool_calls: malformed: must be an array");
        check_error("tool_call_not_object", fmt,
                    "[{\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": [1]}]", NULL,
                    INV, "tool_calls[0]: malformed: must be an object");
        check_error("tool_call_function_null", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": null}]}]", NULL,
                    INV, "function: malformed");
        check_error("tool_call_no_name", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {}}]}]", NULL, INV,
                    "function name missing");
        check_error("tool_call_name_not_string", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": 3}}]}]",
                    NULL, INV, "function name missing");
        check_error("arguments_bad_json_string", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
                    " \"arguments\": \"{\\\"a\\\": \"}}]}]",
                    NULL, INV, "arguments string: ");
        check_error("arguments_string_not_object", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
                    " \"arguments\": \"[1, 2]\"}}]}]",
                    NULL, INV, "must hold a JSON object, not array");
        check_error("arguments_number", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
                    " \"arguments\": 5}}]}]",
                    NULL, INV, "arguments must be an object or a JSON string");
        check_error("arguments_null", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
                    " \"arguments\": null}}]}]",
                    NULL, INV, "arguments must be an object or a JSON string, not null");
        check_error("integer_beyond_64_bits", fmt,
                    "[{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\","
                    " \"arguments\": \"{\\\"n\\\": 123456789012345678901234567890}\"}}]}]",
                    NULL, INV, "outside the 64-bit range");
        check_error("integer_beyond_64_bits_in_tools", fmt, user,
                    "[{\"n\": -99999999999999999999}]", INV, "outside the 64-bit range");
        check_error("tools_not_array", fmt, user, "{\"type\": \"function\"}", INV,
                    "tools must be a JSON array");
        check_error("tool_not_object", fmt, user, "[\"f\"]", INV, "tools[0]: must be an object");
        check_error("tool_function_not_object", fmt, user, "[{\"function\": [1]}]", INV,
                    "tools[0].function");
        check_error("tool_properties_not_object", fmt, user,
                    "[{\"function\": {\"name\": \"f\", \"parameters\": {\"properties\": [1]}}}]",
                    INV, "parameters.properties");
        check_error("deep_nesting", fmt, deep, NULL, BAD, "malformed JSON");
    }
    check_error("kimi_part_not_object", ENG_CHAT_KIMI_K2,
                "[{\"role\": \"user\", \"content\": [\"text\"]}]", NULL, PP_STATUS_INVALID_ARG,
                "content part must be an object");
    check_error("qwen_content_parts", ENG_CHAT_QWEN3_CODER,
                "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"x\"}]}]",
                NULL, PP_STATUS_INVALID_ARG, "content must be a string, not array");
    check_error("phi4_content_parts", ENG_CHAT_PHI4,
                "[{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"x\"}]}]",
                NULL, PP_STATUS_INVALID_ARG, "content must be a string, not array");
    check_error("qwen_empty_messages", ENG_CHAT_QWEN3_CODER, "[]", NULL, PP_STATUS_INVALID_ARG,
                "messages is empty");
    check_error("bad_format_enum", (eng_chat_format)7, user, NULL, PP_STATUS_INVALID_ARG,
                "unknown chat format");
    check_error("null_messages", ENG_CHAT_KIMI_K2, NULL, NULL, PP_STATUS_INVALID_ARG,
                "NULL messages_json");

    n_run++;
    size_t len;
    char *out;
    if (eng_chat_render(ENG_CHAT_KIMI_K2, user, NULL, true, NULL, &len, NULL) !=
            PP_STATUS_INVALID_ARG ||
        eng_chat_render(ENG_CHAT_KIMI_K2, user, NULL, true, &out, NULL, NULL) !=
            PP_STATUS_INVALID_ARG ||
        eng_chat_render(ENG_CHAT_KIMI_K2, "[", NULL, true, &out, &len, NULL) !=
            PP_STATUS_BAD_FORMAT) {
        fprintf(stderr, "FAIL null_output_pointers / null err slot\n");
        n_fail++;
    }

    n_run++;
    if (eng_chat_format_for(ENG_ARCH_DEEPSEEK_V3) != ENG_CHAT_KIMI_K2 ||
        eng_chat_format_for(ENG_ARCH_QWEN3_MOE) != ENG_CHAT_QWEN3_CODER ||
        eng_chat_format_for(ENG_ARCH_PHI3) != ENG_CHAT_PHI4) {
        fprintf(stderr, "FAIL eng_chat_format_for\n");
        n_fail++;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURES_CHAT_DIR\n", argv[0]);
        return 2;
    }
    int n_kimi = run_fixture_file(argv[1], "kimi_k2.json");
    int n_qwen = run_fixture_file(argv[1], "qwen3_coder.json");
    int n_extra = run_fixture_file(argv[1], "extra_cases.json");
    test_phi4();
    test_extensions();
    test_errors();
    printf("test_chat: %d fixture cases (kimi %d, qwen %d, extra %d), %d checks in all, "
           "%d failed\n",
           n_kimi + n_qwen + n_extra, n_kimi, n_qwen, n_extra, n_run, n_fail);
    return n_fail ? 1 : 0;
}
