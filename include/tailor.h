/*
 * tailor.h — the client C API of tailor (libtailor).
 *
 * An application links libtailor (`pkg-config --cflags --libs tailor`) and
 * talks to a running tailord over its Unix socket (or over TCP with a
 * bearer token): chat and plain completion with streaming and
 * cancellation, embeddings, retrieval (search an index, answer from it with
 * sources), adding and deleting documents, listing and dropping indexes,
 * listing the daemon's models with their shapes, counting tokens, LoRA
 * adapters (load, unload, list, and name one per request) and fine-tuning
 * jobs.
 *
 * Conventions
 * - Every function returns a tailor_status; on anything but TAILOR_OK,
 *   tailor_last_error() says what went wrong and every out-pointer is set to
 *   NULL (or left untouched for plain numbers).
 * - Objects are opaque handles. Whoever gets a handle from a tailor_*
 *   function owns it and frees it with the matching *_free / *_close (each
 *   accepts NULL). Strings and arrays read from a handle are borrowed: they
 *   live until that handle is freed.
 * - Params structs start with `struct_size`: fill them from the matching
 *   tailor_*_default_params() and change what you need. A struct from an
 *   older tailor.h (smaller struct_size) is accepted, and the fields it lacks
 *   take their defaults; a struct_size larger than this library knows is
 *   refused with TAILOR_ERR_INVALID_ARGUMENT.
 * - Strings passed in are NUL-terminated UTF-8 and are only read during the
 *   call.
 *
 * Threading
 * - A tailor_client holds only settings: each call opens its own connection,
 *   so one client may be used from many threads at once.
 * - Callbacks run on the calling thread, before the call returns.
 * - Deadlines and cancellation (API 1.4): each call on a client ends within
 *   its timeout_ms (TAILOR_ERR_TIMEOUT). tailor_client_derive makes a client
 *   with its own bound and a tailor_cancel token; raising the token from any
 *   thread ends that client's calls in flight with TAILOR_ERR_CANCELLED
 *   (within about 50 ms), and the daemon stops their work.
 * - tailor_last_error() is per thread.
 * - Result handles (tailor_answer, tailor_sources, …) are immutable: reading
 *   one from several threads is safe; freeing it while another thread reads
 *   it is not.
 *
 * Compatibility: this header changes only by appending (new functions, new
 * fields at the end of params structs, new status codes), and every change
 * bumps TAILOR_API_VERSION.
 */
#ifndef TAILOR_H
#define TAILOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* major * 10000 + minor * 100 + patch of this header. */
/* 1.1: LoRA adapters (load, unload, list; `adapter` on chat and generate). */
/* 1.2: fine-tuning jobs (start, get, events, cancel). */
/* 1.3: stop strings, presence/frequency penalties and JSON output (`output` on chat and generate);
 * TAILOR_ERR_CONFLICT for a taken name, TAILOR_ERR_NOT_FOUND for an unknown index. */
/* 1.4: n choices and log-probabilities; partial answers kept when a stream
 * is cut short; timeout_ms bounds whole calls (TAILOR_ERR_TIMEOUT);
 * tailor_cancel tokens and tailor_client_derive; tailor_tokenize; model
 * context length and embedding size; tailor_indexes_list, tailor_index_drop. */
/* 1.5: a fine-tuning job's method (lora, qlora, full) and a full fine-tune's
 * result folder (tailor_fine_tune_job_result). */
#define TAILOR_API_VERSION 10500

/* ---- status and errors ------------------------------------------------ */

typedef enum tailor_status {
  TAILOR_OK = 0,
  TAILOR_ERR_INVALID_ARGUMENT = 1, /* NULL where a value is needed, bad struct_size, not UTF-8 */
  TAILOR_ERR_CONNECT = 2,          /* tailord is not reachable (not running, wrong socket or address) */
  TAILOR_ERR_UNAUTHORIZED = 3,     /* the daemon wants a (different) bearer token */
  TAILOR_ERR_NOT_FOUND = 4,        /* unknown model, stage, route, index or adapter */
  TAILOR_ERR_BAD_REQUEST = 5,      /* the daemon refused the request: prompt past the context, a field over its limit, … */
  TAILOR_ERR_TOO_LARGE = 6,        /* the request body is over the daemon's limit */
  TAILOR_ERR_UNAVAILABLE = 7,      /* the daemon is busy or a stage is not ready */
  TAILOR_ERR_SERVER = 8,           /* a stage failed inside the daemon */
  TAILOR_ERR_PROTOCOL = 9,         /* the reply was not what the API promises */
  TAILOR_ERR_IO = 10,              /* the connection broke or timed out */
  TAILOR_ERR_CANCELLED = 11,       /* a callback or a tailor_cancel token asked to stop */
  TAILOR_ERR_INTERNAL = 12,        /* a bug in libtailor (it was contained) */
  TAILOR_ERR_CONFLICT = 13,        /* API 1.3: the name is taken (an index or adapter that exists) */
  TAILOR_ERR_TIMEOUT = 14          /* API 1.4: the call's deadline (timeout_ms) passed */
} tailor_status;

/* A static name for a status value ("TAILOR_ERR_CONNECT"); any int is
 * accepted, unknown ones give "TAILOR_ERR_UNKNOWN". */
const char *tailor_status_name(int status);

/* What the last failing call on this thread went wrong with; "" when none
 * has failed. Valid until the next failing call on this thread. */
const char *tailor_last_error(void);

/* The library's version ("0.1.0"); static. */
const char *tailor_version(void);

/* TAILOR_API_VERSION of the header the library was built with. */
uint32_t tailor_api_version(void);

/* ---- client ----------------------------------------------------------- */

typedef struct tailor_client tailor_client;

typedef struct tailor_client_params {
  size_t struct_size;
  /* tailord's Unix socket; default "/run/tailor/tailord.sock", or
   * $TAILOR_SOCKET when set. Ignored when `address` is set. */
  const char *socket_path;
  /* "host:port" of tailord's HTTP listener, instead of the socket; NULL by default. */
  const char *address;
  /* Bearer token, or NULL; default $TAILOR_TOKEN when set. */
  const char *token;
  /* Bound on each whole call, in milliseconds (a streamed generation
   * included); past it the call returns TAILOR_ERR_TIMEOUT. 0: none.
   * Default 300000. (Before API 1.4 it bounded each wait on the socket.) */
  uint32_t timeout_ms;
} tailor_client_params;

tailor_client_params tailor_client_default_params(void);

/* Opens a client and checks that the daemon answers (GET /health):
 * TAILOR_ERR_CONNECT when it does not; with a token, that the daemon takes
 * it (TAILOR_ERR_UNAUTHORIZED when not; API 1.3). The client is freed with
 * tailor_client_close. */
tailor_status tailor_client_open(const tailor_client_params *params, tailor_client **out_client);

void tailor_client_close(tailor_client *client);

/* API 1.4: a token that stops calls from another thread. */
typedef struct tailor_cancel tailor_cancel;

/* A new token, not raised; free with tailor_cancel_free. */
tailor_cancel *tailor_cancel_new(void);

/* Raises the token (from any thread): every call on a client derived with
 * it returns TAILOR_ERR_CANCELLED within about 50 ms, and later calls at
 * once. A streamed generation hands back what it had (see tailor_chat). */
void tailor_cancel_trigger(const tailor_cancel *cancel);

/* Frees the token; clients derived with it keep working (NULL is fine). */
void tailor_cancel_free(tailor_cancel *cancel);

/* A client with `client`'s settings whose calls each end within timeout_ms
 * (0: `client`'s bound) and stop once `cancel` (NULL: none) is raised.
 * Sends nothing; close it with tailor_client_close. One per request, or per
 * group of requests to stop together, is the intended use. */
tailor_status tailor_client_derive(tailor_client *client, uint32_t timeout_ms, const tailor_cancel *cancel,
                                   tailor_client **out_client);

/* ---- models ----------------------------------------------------------- */

typedef struct tailor_models tailor_models;

/* The daemon's configured stages (GET /v1/models). Free with tailor_models_free. */
tailor_status tailor_models_list(tailor_client *client, tailor_models **out_models);

size_t tailor_models_count(const tailor_models *models);

/* The name requests use ("smollm2"); NULL past the end. */
const char *tailor_models_id(const tailor_models *models, size_t index);

/* What the stage does: "generate", "embed", "search", "index", "filter", …; NULL past the end. */
const char *tailor_models_kind(const tailor_models *models, size_t index);

/* API 1.4: tokens of context of a generate stage (prompt and answer
 * together), tokens per text of an embed stage; 0 for other kinds. */
uint32_t tailor_models_context_length(const tailor_models *models, size_t index);

/* API 1.4: floats per embedding of an embed stage; 0 for other kinds. */
uint32_t tailor_models_embedding_dim(const tailor_models *models, size_t index);

void tailor_models_free(tailor_models *models);

/* API 1.4: token ids, to count a prompt before sending it. */
typedef struct tailor_tokens tailor_tokens;

/* The token ids a generation of `text` (a plain prompt) on generate stage
 * `model` starts from (POST /tokenize). Free with tailor_tokens_free. */
tailor_status tailor_tokenize(tailor_client *client, const char *model, const char *text, tailor_tokens **out_tokens);

size_t tailor_tokens_count(const tailor_tokens *tokens);

/* The ids, borrowed; NULL when there are none. */
const uint32_t *tailor_tokens_ids(const tailor_tokens *tokens);

/* The model's context length, which the prompt and the answer share. */
uint32_t tailor_tokens_context_length(const tailor_tokens *tokens);

void tailor_tokens_free(tailor_tokens *tokens);

/* ---- chat and completion ---------------------------------------------- */

/* Called with each piece of generated text as it arrives (`text` is
 * NUL-terminated, `len` bytes long, borrowed for the call). Return 0 to go
 * on, anything else to stop: the call then returns TAILOR_ERR_CANCELLED and
 * the daemon stops generating (with an API 1.4 params struct, the answer
 * so far comes back too: see tailor_chat). */
typedef int (*tailor_token_fn)(const char *text, size_t len, void *user_data);

typedef struct tailor_message {
  const char *role; /* "system", "user" or "assistant" */
  const char *content;
} tailor_message;

/* API 1.3: options of a generation's output, the last field of both params
 * structs. Zeroed (the default): none. */
typedef struct tailor_output_options {
  const char *const *stop; /* up to 4 strings; the answer ends before the first to appear */
  size_t n_stop;
  float presence_penalty;  /* -2..2: subtracted from tokens already generated */
  float frequency_penalty; /* -2..2: subtracted once per earlier occurrence */
  /* JSON output by constrained decoding: a JSON schema as text (the answer
   * validates against it), "object" for any JSON object, NULL for free text.
   * An unsupported schema gives TAILOR_ERR_BAD_REQUEST naming the keyword. */
  const char *json_schema;
} tailor_output_options;

typedef struct tailor_chat_params {
  size_t struct_size;
  const char *model; /* a generate stage's name; required */
  const tailor_message *messages;
  size_t n_messages;
  int32_t max_tokens;     /* <= 0: the daemon's default */
  float temperature;      /* 0 (the default): greedy */
  float top_p;            /* default 1 */
  int32_t top_k;          /* <= 0 (the default): off */
  int64_t seed;           /* < 0 (the default): none */
  tailor_token_fn on_token; /* NULL: no streaming, the answer comes whole */
  void *user_data;
  /* RAG: search this index with the last user message and answer from the
   * hits, which come back as the answer's sources. NULL (the default): off. */
  const char *index;
  uint32_t k; /* hits to use; 0 (the default): 4 */
  /* API 1.1: a LoRA adapter loaded on `model` (tailor_adapter_load or the
   * daemon's config) to answer with; NULL (the default): the base model.
   * Unknown names give TAILOR_ERR_NOT_FOUND. */
  const char *adapter;
  float adapter_scale; /* multiplier on the adapter's delta; 0 (the default): 1 */
  tailor_output_options output; /* API 1.3 */
  /* API 1.4: generations of the prompt, batched together with seeds seed,
   * seed+1, …; 0 (the default): 1. More than 1 needs on_token NULL. */
  uint32_t n;
  /* API 1.4: < 0 (the default): none; 0..20: each generated token's
   * log-probability and this many most likely alternatives. */
  int32_t logprobs;
} tailor_chat_params;

tailor_chat_params tailor_chat_default_params(void);

typedef struct tailor_generate_params {
  size_t struct_size;
  const char *model; /* required */
  const char *prompt; /* required; sent as is, no chat template */
  int32_t max_tokens;
  float temperature;
  float top_p;
  int32_t top_k;
  int64_t seed;
  tailor_token_fn on_token;
  void *user_data;
  const char *adapter; /* API 1.1: as in tailor_chat_params */
  float adapter_scale;
  tailor_output_options output; /* API 1.3 */
  uint32_t n;       /* API 1.4: as in tailor_chat_params */
  int32_t logprobs; /* API 1.4: as in tailor_chat_params */
} tailor_generate_params;

tailor_generate_params tailor_generate_default_params(void);

typedef struct tailor_answer tailor_answer;

/* One retrieved passage: a chat answer's source or a search hit. */
typedef struct tailor_source {
  uint32_t number; /* 1-based, as cited in the answer ("[1]") */
  float score;     /* cosine similarity */
  const char *doc_id;
  const char *source; /* the file or the id the document came from */
  const char *text;   /* the passage */
  size_t span_start;  /* byte span of the passage in the document's text */
  size_t span_end;
} tailor_source;

typedef struct tailor_sources tailor_sources;

/* A chat answer (POST /v1/chat/completions). With on_token set, the text
 * streams through it first; the answer holds the whole text either way.
 * Free with tailor_answer_free.
 * API 1.4: when a stream is cut short (the callback, a cancel token, the
 * deadline, the daemon failing), the call returns that status AND, for a
 * params struct from a 1.4 header, sets *out_answer to what had arrived,
 * finish reason "cancelled", "timeout" or "error": free it too. */
tailor_status tailor_chat(tailor_client *client, const tailor_chat_params *params, tailor_answer **out_answer);

/* A plain completion of a prompt (POST /v1/completions). */
tailor_status tailor_generate(tailor_client *client, const tailor_generate_params *params,
                              tailor_answer **out_answer);

const char *tailor_answer_text(const tailor_answer *answer);

/* "stop" or "length" ("cancelled", "timeout" or "error" on a partial
 * answer). With n > 1, the first choice's (as is tailor_answer_text). */
const char *tailor_answer_finish_reason(const tailor_answer *answer);

uint32_t tailor_answer_prompt_tokens(const tailor_answer *answer);

uint32_t tailor_answer_completion_tokens(const tailor_answer *answer);

/* The RAG sources (empty without RAG); borrowed from the answer. */
const tailor_sources *tailor_answer_sources(const tailor_answer *answer);

/* API 1.4: the choices (n of them; 1 without n). */
size_t tailor_answer_choices_count(const tailor_answer *answer);

/* API 1.4: a choice's text; NULL past the end. */
const char *tailor_answer_choice_text(const tailor_answer *answer, size_t choice);

/* API 1.4: why a choice stopped; NULL past the end. */
const char *tailor_answer_choice_finish_reason(const tailor_answer *answer, size_t choice);

/* API 1.4: a token that could have come instead. */
typedef struct tailor_top_logprob {
  const char *token;
  double logprob; /* natural log */
} tailor_top_logprob;

/* API 1.4: a generated token's log-probability. */
typedef struct tailor_token_logprob {
  const char *token;
  double logprob; /* natural log */
  size_t n_top;   /* entries in `top` (the request's logprobs) */
  const tailor_top_logprob *top; /* most likely first */
} tailor_token_logprob;

/* API 1.4: tokens of a choice that carry log-probabilities (0 when none
 * were asked for). */
size_t tailor_answer_logprobs_count(const tailor_answer *answer, size_t choice);

/* API 1.4: token `index` of a choice, borrowed from the answer; NULL past the end. */
const tailor_token_logprob *tailor_answer_logprob(const tailor_answer *answer, size_t choice, size_t index);

void tailor_answer_free(tailor_answer *answer);

/* ---- retrieval -------------------------------------------------------- */

typedef struct tailor_search_params {
  size_t struct_size;
  const char *index; /* required */
  const char *query; /* required */
  uint32_t k;        /* 0 (the default): 4 */
} tailor_search_params;

tailor_search_params tailor_search_default_params(void);

/* The k passages of `index` nearest to the query. Free with tailor_sources_free. */
tailor_status tailor_search(tailor_client *client, const tailor_search_params *params,
                            tailor_sources **out_sources);

size_t tailor_sources_count(const tailor_sources *sources);

/* Borrowed from `sources`; NULL past the end. */
const tailor_source *tailor_sources_get(const tailor_sources *sources, size_t index);

/* Frees sources from tailor_search (not those borrowed from an answer). */
void tailor_sources_free(tailor_sources *sources);

/* kind: "flat" (exact) or "hnsw" (approximate); NULL: "flat". */
tailor_status tailor_index_create(tailor_client *client, const char *index, const char *kind);

typedef struct tailor_document {
  const char *id; /* unique in the index; a known id with new text replaces the old document */
  const char *text;
} tailor_document;

/* Chunks, embeds and stores the documents; *out_added (when not NULL) gets
 * how many were new or changed. */
tailor_status tailor_index_add(tailor_client *client, const char *index, const tailor_document *documents,
                               size_t n_documents, size_t *out_added);

/* Deletes documents by id (or every document from a source path);
 * *out_deleted (when not NULL) gets how many went. */
tailor_status tailor_index_delete(tailor_client *client, const char *index, const char *const *ids, size_t n_ids,
                                  size_t *out_deleted);

/* Counts of documents and chunks in the index (either pointer may be NULL). */
tailor_status tailor_index_info(tailor_client *client, const char *index, size_t *out_documents,
                                size_t *out_chunks);

/* API 1.4: deletes an index with all its documents (TAILOR_ERR_NOT_FOUND when there is none). */
tailor_status tailor_index_drop(tailor_client *client, const char *index);

typedef struct tailor_indexes tailor_indexes;

/* API 1.4: the indexes of the daemon's index stage, by name. Free with tailor_indexes_free. */
tailor_status tailor_indexes_list(tailor_client *client, tailor_indexes **out_indexes);

size_t tailor_indexes_count(const tailor_indexes *indexes);

/* An index's name; NULL past the end. */
const char *tailor_indexes_name(const tailor_indexes *indexes, size_t index);

/* "flat" or "hnsw"; NULL past the end. */
const char *tailor_indexes_kind(const tailor_indexes *indexes, size_t index);

/* Floats per vector; 0 past the end. */
uint32_t tailor_indexes_dim(const tailor_indexes *indexes, size_t index);

void tailor_indexes_free(tailor_indexes *indexes);

/* ---- embeddings ------------------------------------------------------- */

typedef struct tailor_embeddings tailor_embeddings;

/* One vector per text from an embed stage (POST /v1/embeddings). Free with
 * tailor_embeddings_free. */
tailor_status tailor_embed(tailor_client *client, const char *model, const char *const *texts, size_t n_texts,
                           tailor_embeddings **out_embeddings);

size_t tailor_embeddings_count(const tailor_embeddings *embeddings);

size_t tailor_embeddings_dim(const tailor_embeddings *embeddings);

/* `dim` floats, borrowed; NULL past the end. */
const float *tailor_embeddings_vector(const tailor_embeddings *embeddings, size_t index);

void tailor_embeddings_free(tailor_embeddings *embeddings);

/* ---- adapters (API 1.1) ----------------------------------------------- */

typedef struct tailor_adapters tailor_adapters;

/* Loads the PEFT LoRA adapter folder `path` (a path on the daemon's machine,
 * under the generate stage's `adapter_dirs`) as `name` on generate stage
 * `model` (NULL: the first configured). A bad adapter gives
 * TAILOR_ERR_BAD_REQUEST naming what is wrong; a taken name TAILOR_ERR_CONFLICT (API 1.3). */
tailor_status tailor_adapter_load(tailor_client *client, const char *model, const char *name, const char *path);

/* Unloads adapter `name` (requests using it finish first);
 * TAILOR_ERR_NOT_FOUND when there is none. */
tailor_status tailor_adapter_unload(tailor_client *client, const char *model, const char *name);

/* The adapters of every generate stage (GET /v1/adapters). Free with
 * tailor_adapters_free. */
tailor_status tailor_adapters_list(tailor_client *client, tailor_adapters **out_adapters);

size_t tailor_adapters_count(const tailor_adapters *adapters);

/* The adapter's name; NULL past the end. */
const char *tailor_adapters_name(const tailor_adapters *adapters, size_t index);

/* The generate stage (base model) it belongs to; NULL past the end. */
const char *tailor_adapters_model(const tailor_adapters *adapters, size_t index);

/* Its largest rank; 0 past the end. */
uint32_t tailor_adapters_rank(const tailor_adapters *adapters, size_t index);

void tailor_adapters_free(tailor_adapters *adapters);

/* ---- fine-tuning jobs (API 1.2) --------------------------------------- */

/* A LoRA fine-tuning job on a generate stage's base (OpenAI's
 * /v1/fine_tuning/jobs). The stage's config must set `jobs_dir` and
 * `data_dirs`. Strings are borrowed for the call. */
typedef struct tailor_fine_tune_params {
  size_t struct_size;
  const char *model;             /* the generate stage whose base is trained */
  const char *training_file;     /* JSONL on the daemon's machine, under the stage's data_dirs */
  const char *validation_file;   /* validation JSONL, or NULL */
  const char *suffix;            /* part of the adapter's name, or NULL ("ft") */
  uint32_t n_epochs;             /* 0: the daemon's default */
  uint32_t batch_size;           /* 0: the daemon's default */
  float learning_rate_multiplier; /* <= 0: 1 */
  uint32_t rank;                 /* LoRA rank; 0: the daemon's default */
  int64_t seed;                  /* < 0: the daemon's default */
  /* API 1.5: "lora" (NULL: the default; an adapter on the loaded base),
   * "qlora" (an adapter trained on the base in 4 bits) or "full" (every
   * weight of a copy of the base: the result is a Hugging Face folder,
   * tailor_fine_tune_job_result, not an adapter). */
  const char *method;
} tailor_fine_tune_params;

tailor_fine_tune_params tailor_fine_tune_default_params(void);

/* A job's state at the time it was asked for. */
typedef struct tailor_fine_tune_job tailor_fine_tune_job;

/* Starts a job; *out_job receives its first state (free with
 * tailor_fine_tune_job_free). A training file outside data_dirs or with a
 * bad line is TAILOR_ERR_BAD_REQUEST naming it (and the line). */
tailor_status tailor_fine_tune_start(tailor_client *client, const tailor_fine_tune_params *params,
                                     tailor_fine_tune_job **out_job);

/* The current state of job `id`; TAILOR_ERR_NOT_FOUND for an unknown id. */
tailor_status tailor_fine_tune_get(tailor_client *client, const char *id, tailor_fine_tune_job **out_job);

/* Asks job `id` to stop (it ends "cancelled"); TAILOR_ERR_BAD_REQUEST when
 * it already ended. */
tailor_status tailor_fine_tune_cancel(tailor_client *client, const char *id);

/* The job's id ("ftjob-…"); borrowed from the job. */
const char *tailor_fine_tune_job_id(const tailor_fine_tune_job *job);

/* "queued", "running", "succeeded", "failed" or "cancelled"; borrowed. */
const char *tailor_fine_tune_job_status(const tailor_fine_tune_job *job);

/* Once the job succeeded, the trained model's name ("stage:adapter"), usable
 * at once as a chat's or completion's `model`; NULL before. Borrowed. */
const char *tailor_fine_tune_job_model(const tailor_fine_tune_job *job);

/* Why the job failed; NULL unless it did. Borrowed. */
const char *tailor_fine_tune_job_error(const tailor_fine_tune_job *job);

/* API 1.5: once a full fine-tune succeeded, its Hugging Face folder on the
 * daemon's machine; NULL for other jobs and before. Borrowed. */
const char *tailor_fine_tune_job_result(const tailor_fine_tune_job *job);

void tailor_fine_tune_job_free(tailor_fine_tune_job *job);

/* A job's log: one event per optimizer step, plus the validation loss where
 * it was measured (step 0: before training). */
typedef struct tailor_fine_tune_events tailor_fine_tune_events;

tailor_status tailor_fine_tune_events_get(tailor_client *client, const char *id, tailor_fine_tune_events **out_events);

size_t tailor_fine_tune_events_count(const tailor_fine_tune_events *events);

/* The event's step; 0 past the end. */
uint32_t tailor_fine_tune_events_step(const tailor_fine_tune_events *events, size_t index);

/* The training loss at that step; NaN when the event has none or past the end. */
double tailor_fine_tune_events_loss(const tailor_fine_tune_events *events, size_t index);

/* The validation loss at that step; NaN when not measured or past the end. */
double tailor_fine_tune_events_eval_loss(const tailor_fine_tune_events *events, size_t index);

void tailor_fine_tune_events_free(tailor_fine_tune_events *events);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TAILOR_H */
