/*
 * An example tailor plugin written in C: a filter stage, "redact-email",
 * that replaces e-mail addresses in an answer with "[redacted]".
 *
 * Filter requests are JSON objects ({"text": "..."}). An address never
 * contains a quote or a backslash, so the stage redacts the JSON text as it
 * is and the result is still the same JSON shape: no JSON parser needed.
 *
 * Build: cc -shared -fPIC -I include plugins/examples/redact_email.c -o libredact_email.so
 */
#include <stdlib.h>
#include <string.h>

#include "tailor_plugin.h"

static int is_local(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '%' || c == '+' || c == '-';
}

static int is_domain(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-';
}

static void fail(tailor_sink *error, const char *message) {
  tailor_str s = {message, strlen(message)};
  if (error && error->emit) error->emit(error->ctx, s);
}

static tailor_plugin_status create(tailor_str config_json, void **instance, tailor_sink *error) {
  (void)config_json;
  (void)error;
  *instance = NULL; /* stateless */
  return TAILOR_PLUGIN_OK;
}

/* Emits `text` with every address replaced; returns the sink's status. */
static tailor_plugin_status redact(tailor_str text, tailor_sink *out) {
  size_t start = 0, i = 0;
  while (i < text.len) {
    if (text.ptr[i] != '@') {
      i++;
      continue;
    }
    size_t left = i, right = i + 1;
    int dot = 0;
    while (left > start && is_local(text.ptr[left - 1])) left--;
    while (right < text.len && is_domain(text.ptr[right])) dot |= text.ptr[right++] == '.';
    while (right > i + 1 && text.ptr[right - 1] == '.') right--; /* a sentence's final dot */
    if (left == i || !dot) {
      i++;
      continue;
    }
    tailor_str before = {text.ptr + start, left - start};
    tailor_str mark = {"[redacted]", 10};
    tailor_plugin_status s = out->emit(out->ctx, before);
    if (s == TAILOR_PLUGIN_OK) s = out->emit(out->ctx, mark);
    if (s != TAILOR_PLUGIN_OK) return s;
    start = i = right;
  }
  tailor_str rest = {text.ptr + start, text.len - start};
  return out->emit(out->ctx, rest);
}

static tailor_plugin_status call(void *instance, uint64_t request_id, tailor_str request_json, tailor_sink *out,
                                 tailor_sink *error) {
  (void)instance;
  (void)request_id;
  if (!out || !out->emit) {
    fail(error, "redact-email: no output sink");
    return TAILOR_PLUGIN_ERR_INVALID;
  }
  return redact(request_json, out);
}

static void destroy(void *instance) { (void)instance; }

static const tailor_stage stages[] = {
    {sizeof(tailor_stage), TAILOR_STAGE_FILTER, TAILOR_STAGE_FLAG_CONCURRENT, "redact-email", create, call, destroy},
};

static const tailor_plugin_descriptor descriptor = {
    TAILOR_PLUGIN_MAGIC, TAILOR_PLUGIN_ABI_MAJOR, TAILOR_PLUGIN_ABI_MINOR, sizeof(tailor_plugin_descriptor),
    "redact-email", "1.0.0", 1, stages,
};

const tailor_plugin_descriptor *tailor_plugin_entry(const tailor_host_api *host, uint32_t host_abi_major) {
  (void)host;
  (void)host_abi_major;
  return &descriptor;
}
