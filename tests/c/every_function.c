/*
 * Calls every function in tailor.h (compiled with -Werror, so each
 * declaration is used as declared) and checks the conventions: NULL and
 * bad-size arguments give TAILOR_ERR_INVALID_ARGUMENT with a message, an
 * older and smaller params struct is accepted with defaults for the fields
 * it lacks, a cancelled stream stops (and, from API 1.4, hands back what it
 * had), a deadline and a cancel token from another thread end a call, and
 * every handle is freed (valgrind checks that).
 *
 *   every_function SOCKET GENERATE_MODEL EMBED_MODEL ADAPTER_DIR TRAINING_FILE
 *
 * ADAPTER_DIR is a PEFT adapter folder under the generate stage's
 * adapter_dirs; TRAINING_FILE a few JSONL chat examples under its
 * data_dirs (the stage's config sets jobs_dir).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, pthreads */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tailor.h>

static int failures = 0;

#define EXPECT(cond)                                                        \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: expected %s (last error: %s)\n", __FILE__,   \
              __LINE__, #cond, tailor_last_error());                        \
      failures++;                                                           \
    }                                                                       \
  } while (0)

/* tailor_chat_params as a header without the RAG fields (`index`, `k`)
 * would have declared it: a prefix of today's struct. */
typedef struct chat_params_without_rag {
  size_t struct_size;
  const char *model;
  const tailor_message *messages;
  size_t n_messages;
  int32_t max_tokens;
  float temperature;
  float top_p;
  int32_t top_k;
  int64_t seed;
  tailor_token_fn on_token;
  void *user_data;
} chat_params_without_rag;

static int stop_after_two(const char *text, size_t len, void *user_data) {
  int *seen = user_data;
  (void)text;
  (void)len;
  return ++*seen >= 2;
}

static int count_pieces(const char *text, size_t len, void *user_data) {
  EXPECT(strlen(text) == len);
  ++*(int *)user_data;
  return 0;
}

static void sleep_ms(long ms) {
  struct timespec pause = {ms / 1000, (ms % 1000) * 1000 * 1000};
  nanosleep(&pause, NULL);
}

static void status_and_version(void) {
  EXPECT(strcmp(tailor_status_name(TAILOR_ERR_CONNECT), "TAILOR_ERR_CONNECT") == 0);
  EXPECT(strcmp(tailor_status_name(TAILOR_ERR_TIMEOUT), "TAILOR_ERR_TIMEOUT") == 0);
  EXPECT(strcmp(tailor_status_name(-7), "TAILOR_ERR_UNKNOWN") == 0);
  EXPECT(tailor_api_version() == TAILOR_API_VERSION);
  EXPECT(strlen(tailor_version()) > 0);
}

static void bad_arguments(tailor_client *client) {
  tailor_client *none = NULL;
  EXPECT(tailor_client_open(NULL, &none) == TAILOR_ERR_INVALID_ARGUMENT && none == NULL);
  EXPECT(strstr(tailor_last_error(), "params is NULL") != NULL);
  tailor_client_params too_big = tailor_client_default_params();
  too_big.struct_size += 8;
  EXPECT(tailor_client_open(&too_big, &none) == TAILOR_ERR_INVALID_ARGUMENT);
  EXPECT(strstr(tailor_last_error(), "newer tailor.h") != NULL);
  tailor_chat_params chat = tailor_chat_default_params();
  tailor_answer *answer = NULL;
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_ERR_INVALID_ARGUMENT && answer == NULL);
  EXPECT(strstr(tailor_last_error(), "model is NULL") != NULL);
  EXPECT(tailor_chat(NULL, &chat, &answer) == TAILOR_ERR_INVALID_ARGUMENT);
  tailor_embeddings *embeddings = NULL;
  EXPECT(tailor_embed(client, "minilm", NULL, 2, &embeddings) == TAILOR_ERR_INVALID_ARGUMENT);
  /* A body over the daemon's limit (1 MiB by default) is its 413, not a
   * broken pipe: the client reads the answer the daemon sent early. */
  size_t huge_len = 2u << 20;
  char *huge = malloc(huge_len + 1);
  if (huge) {
    memset(huge, 'a', huge_len);
    huge[huge_len] = '\0';
    const char *inputs[] = {huge};
    EXPECT(tailor_embed(client, "minilm", inputs, 1, &embeddings) == TAILOR_ERR_TOO_LARGE && embeddings == NULL);
    free(huge);
  }
  EXPECT(tailor_index_info(client, "../escape", NULL, NULL) == TAILOR_ERR_INVALID_ARGUMENT);
  EXPECT(tailor_index_create(client, "../escape", NULL) == TAILOR_ERR_BAD_REQUEST);
  /* Accessors and frees take NULL. */
  EXPECT(tailor_answer_text(NULL) == NULL && tailor_sources_count(NULL) == 0);
  EXPECT(tailor_embeddings_vector(NULL, 0) == NULL && tailor_models_id(NULL, 0) == NULL);
  tailor_answer_free(NULL);
  tailor_sources_free(NULL);
  tailor_embeddings_free(NULL);
  tailor_models_free(NULL);
  tailor_client_close(NULL);
}

static void models(tailor_client *client, const char *generate_model, const char *embed_model) {
  tailor_models *list = NULL;
  EXPECT(tailor_models_list(client, &list) == TAILOR_OK);
  int found = 0, shaped = 0;
  for (size_t i = 0; i < tailor_models_count(list); i++) {
    if (strcmp(tailor_models_id(list, i), generate_model) == 0) {
      found = strcmp(tailor_models_kind(list, i), "generate") == 0;
      EXPECT(tailor_models_context_length(list, i) == 8192 && tailor_models_embedding_dim(list, i) == 0);
    }
    if (strcmp(tailor_models_id(list, i), embed_model) == 0) {
      shaped = tailor_models_embedding_dim(list, i) == 384 && tailor_models_context_length(list, i) == 256;
    }
  }
  EXPECT(found && shaped);
  EXPECT(tailor_models_context_length(list, 99) == 0 && tailor_models_embedding_dim(NULL, 0) == 0);
  EXPECT(tailor_models_id(list, tailor_models_count(list)) == NULL);
  EXPECT(tailor_models_kind(list, tailor_models_count(list)) == NULL);
  tailor_models_free(list);
}

static void older_params_struct(tailor_client *client, const char *model) {
  tailor_message hello[] = {{"user", "Say hello."}};
  chat_params_without_rag old;
  memset(&old, 0, sizeof old);
  old.struct_size = sizeof old;
  old.model = model;
  old.messages = hello;
  old.n_messages = 1;
  old.max_tokens = 4;
  old.top_p = 1;
  old.seed = -1;
  tailor_answer *answer = NULL;
  /* Accepted; `index` and `k` take their defaults (no RAG), so no sources. */
  EXPECT(tailor_chat(client, (const tailor_chat_params *)&old, &answer) == TAILOR_OK);
  EXPECT(answer != NULL && tailor_answer_completion_tokens(answer) > 0);
  EXPECT(tailor_sources_count(tailor_answer_sources(answer)) == 0);
  tailor_answer_free(answer);
  old.struct_size = 4; /* not even the size field */
  EXPECT(tailor_chat(client, (const tailor_chat_params *)&old, &answer) == TAILOR_ERR_INVALID_ARGUMENT);
}

static void generation(tailor_client *client, const char *model) {
  tailor_generate_params gen = tailor_generate_default_params();
  gen.model = model;
  gen.prompt = "1, 2, 3, 4,";
  gen.max_tokens = 6;
  int pieces = 0;
  gen.on_token = count_pieces;
  gen.user_data = &pieces;
  tailor_answer *streamed = NULL, *whole = NULL;
  EXPECT(tailor_generate(client, &gen, &streamed) == TAILOR_OK);
  gen.on_token = NULL;
  EXPECT(tailor_generate(client, &gen, &whole) == TAILOR_OK);
  EXPECT(pieces > 0 && strcmp(tailor_answer_text(streamed), tailor_answer_text(whole)) == 0);
  EXPECT(tailor_answer_prompt_tokens(whole) > 0 && tailor_answer_completion_tokens(streamed) == 6);
  EXPECT(strcmp(tailor_answer_finish_reason(whole), "length") == 0);
  tailor_answer_free(streamed);
  tailor_answer_free(whole);

  gen.max_tokens = 40;
  int seen = 0;
  gen.on_token = stop_after_two;
  gen.user_data = &seen;
  tailor_answer *cancelled = NULL;
  /* API 1.4: the call fails as cancelled and hands back the two pieces it had. */
  EXPECT(tailor_generate(client, &gen, &cancelled) == TAILOR_ERR_CANCELLED && cancelled != NULL && seen == 2);
  EXPECT(cancelled && strcmp(tailor_answer_finish_reason(cancelled), "cancelled") == 0);
  EXPECT(cancelled && strlen(tailor_answer_text(cancelled)) > 0);
  tailor_answer_free(cancelled);
  /* A 1.3 struct (without n and logprobs) gets no partial answer: its caller would not free one. */
  tailor_generate_params older = gen;
  older.struct_size = offsetof(tailor_generate_params, n);
  seen = 0;
  cancelled = NULL;
  EXPECT(tailor_generate(client, &older, &cancelled) == TAILOR_ERR_CANCELLED && cancelled == NULL && seen == 2);

  /* API 1.3: a stop string ends the answer before it, streamed or not. */
  const char *stops[] = {" 7"};
  gen.on_token = NULL;
  gen.max_tokens = 20;
  gen.output.stop = stops;
  gen.output.n_stop = 1;
  tailor_answer *stopped = NULL;
  EXPECT(tailor_generate(client, &gen, &stopped) == TAILOR_OK);
  EXPECT(stopped != NULL && strstr(tailor_answer_text(stopped), " 6,") != NULL);
  EXPECT(stopped != NULL && strstr(tailor_answer_text(stopped), " 7") == NULL);
  EXPECT(stopped != NULL && strcmp(tailor_answer_finish_reason(stopped), "stop") == 0);
  tailor_answer_free(stopped);
  gen.output.n_stop = 5; /* over the limit: the daemon's 400 */
  const char *five[] = {"a", "b", "c", "d", "e"};
  gen.output.stop = five;
  EXPECT(tailor_generate(client, &gen, &stopped) == TAILOR_ERR_BAD_REQUEST && stopped == NULL);
  gen.output.n_stop = 0;
}

/* API 1.4: n choices and per-token log-probabilities. */
static void choices_and_logprobs(tailor_client *client, const char *model) {
  tailor_generate_params gen = tailor_generate_default_params();
  EXPECT(gen.n == 0 && gen.logprobs < 0);
  gen.model = model;
  gen.prompt = "The capital of France is";
  gen.max_tokens = 5;
  gen.logprobs = 2;
  tailor_answer *answer = NULL;
  EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_OK);
  EXPECT(tailor_answer_choices_count(answer) == 1 && tailor_answer_logprobs_count(answer, 0) == 5);
  char joined[256] = {0};
  for (size_t i = 0; i < tailor_answer_logprobs_count(answer, 0); i++) {
    const tailor_token_logprob *t = tailor_answer_logprob(answer, 0, i);
    EXPECT(t->logprob <= 0 && t->n_top == 2 && t->top[0].logprob >= t->top[1].logprob);
    /* Greedy: the chosen token is the most likely one. */
    EXPECT(strcmp(t->token, t->top[0].token) == 0 && t->logprob - t->top[0].logprob < 1e-6 && t->top[0].logprob - t->logprob < 1e-6);
    strncat(joined, t->token, sizeof joined - strlen(joined) - 1);
  }
  EXPECT(strcmp(joined, tailor_answer_text(answer)) == 0);
  EXPECT(tailor_answer_logprob(answer, 0, 5) == NULL && tailor_answer_logprob(answer, 1, 0) == NULL);
  tailor_answer_free(answer);

  /* The same through chat, streamed: the tokens' log-probabilities arrive with the pieces. */
  tailor_message ask[] = {{"user", "Say yes."}};
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = model;
  chat.messages = ask;
  chat.n_messages = 1;
  chat.max_tokens = 4;
  chat.logprobs = 0;
  int pieces = 0;
  chat.on_token = count_pieces;
  chat.user_data = &pieces;
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_OK);
  EXPECT(tailor_answer_logprobs_count(answer, 0) == tailor_answer_completion_tokens(answer));
  EXPECT(tailor_answer_logprob(answer, 0, 0) && tailor_answer_logprob(answer, 0, 0)->n_top == 0);
  tailor_answer_free(answer);

  gen.logprobs = -1;
  gen.n = 3;
  gen.temperature = 1.0f;
  gen.seed = 11;
  gen.max_tokens = 12;
  EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_OK && tailor_answer_choices_count(answer) == 3);
  EXPECT(answer && strcmp(tailor_answer_choice_text(answer, 0), tailor_answer_text(answer)) == 0);
  EXPECT(answer && strcmp(tailor_answer_choice_text(answer, 1), tailor_answer_choice_text(answer, 2)) != 0);
  EXPECT(tailor_answer_choice_finish_reason(answer, 2) != NULL && tailor_answer_choice_text(answer, 3) == NULL);
  tailor_answer_free(answer);
  gen.on_token = count_pieces;
  gen.user_data = &pieces;
  answer = NULL;
  EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_ERR_INVALID_ARGUMENT && answer == NULL);
  gen.on_token = NULL;
  gen.n = 9; /* over the stage's max_n */
  EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_ERR_BAD_REQUEST && answer == NULL);
}

/* API 1.4: token counts agree with what a generation reports. */
static void tokens(tailor_client *client, const char *model) {
  tailor_tokens *ids = NULL;
  EXPECT(tailor_tokenize(client, model, "The capital of France is", &ids) == TAILOR_OK);
  EXPECT(tailor_tokens_count(ids) == 5 && tailor_tokens_ids(ids) != NULL);
  EXPECT(tailor_tokens_context_length(ids) == 8192);
  tailor_generate_params gen = tailor_generate_default_params();
  gen.model = model;
  gen.prompt = "The capital of France is";
  gen.max_tokens = 1;
  tailor_answer *answer = NULL;
  EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_OK);
  EXPECT(tailor_answer_prompt_tokens(answer) == tailor_tokens_count(ids));
  tailor_answer_free(answer);
  tailor_tokens_free(ids);
  tailor_tokens_free(NULL);
  EXPECT(tailor_tokenize(client, model, "", &ids) == TAILOR_ERR_BAD_REQUEST && ids == NULL);
  EXPECT(tailor_tokens_count(NULL) == 0 && tailor_tokens_ids(NULL) == NULL);
}

static void *trigger_later(void *cancel) {
  sleep_ms(300);
  tailor_cancel_trigger(cancel);
  return NULL;
}

/* API 1.4: a deadline bounds the whole call; a token stops it from another thread. */
static void deadlines_and_cancellation(tailor_client *client, const char *model) {
  tailor_generate_params gen = tailor_generate_default_params();
  gen.model = model;
  gen.prompt = "1, 2, 3, 4,";
  gen.max_tokens = 2000;
  int pieces = 0;
  gen.on_token = count_pieces;
  gen.user_data = &pieces;
  tailor_client *hurried = NULL;
  EXPECT(tailor_client_derive(client, 400, NULL, &hurried) == TAILOR_OK);
  tailor_answer *answer = NULL;
  EXPECT(tailor_generate(hurried, &gen, &answer) == TAILOR_ERR_TIMEOUT);
  EXPECT(answer && strcmp(tailor_answer_finish_reason(answer), "timeout") == 0 && pieces > 0);
  EXPECT(answer && (int)strlen(tailor_answer_text(answer)) > 0);
  EXPECT(strstr(tailor_last_error(), "deadline") != NULL);
  tailor_answer_free(answer);
  tailor_client_close(hurried);

  tailor_cancel *cancel = tailor_cancel_new();
  tailor_client *stoppable = NULL;
  EXPECT(tailor_client_derive(client, 0, cancel, &stoppable) == TAILOR_OK);
  pthread_t thread;
  EXPECT(pthread_create(&thread, NULL, trigger_later, cancel) == 0);
  gen.on_token = NULL; /* not streamed: nothing to hand back */
  answer = NULL;
  EXPECT(tailor_generate(stoppable, &gen, &answer) == TAILOR_ERR_CANCELLED && answer == NULL);
  pthread_join(thread, NULL);
  /* Raised stays raised: later calls on that client stop at once. */
  tailor_models *list = NULL;
  EXPECT(tailor_models_list(stoppable, &list) == TAILOR_ERR_CANCELLED && list == NULL);
  tailor_client_close(stoppable);
  tailor_cancel_free(cancel);
  /* The parent client is untouched, and the daemon still answers. */
  EXPECT(tailor_models_list(client, &list) == TAILOR_OK);
  tailor_models_free(list);
  EXPECT(tailor_client_derive(NULL, 0, NULL, &stoppable) == TAILOR_ERR_INVALID_ARGUMENT && stoppable == NULL);
  tailor_cancel_trigger(NULL);
  tailor_cancel_free(NULL);
}

/* API 1.3: an answer constrained to a JSON schema is that JSON. */
static void structured_output(tailor_client *client, const char *model) {
  tailor_message ask[] = {{"user", "Describe a city as JSON."}};
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = model;
  chat.messages = ask;
  chat.n_messages = 1;
  chat.max_tokens = 80;
  chat.output.json_schema =
      "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":30},"
      "\"size\":{\"enum\":[\"small\",\"large\"]}}}";
  tailor_answer *answer = NULL;
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_OK);
  const char *text = answer ? tailor_answer_text(answer) : "";
  EXPECT(strncmp(text, "{\"name\":", 8) == 0 || strncmp(text, "{\"name\": ", 9) == 0);
  EXPECT(strstr(text, "\"size\":") != NULL && text[strlen(text) - 1] == '}');
  EXPECT(strstr(text, "small") != NULL || strstr(text, "large") != NULL);
  tailor_answer_free(answer);
  chat.output.json_schema = "{\"type\":\"object\",\"patternProperties\":{}}";
  answer = NULL;
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_ERR_BAD_REQUEST && answer == NULL);
  EXPECT(strstr(tailor_last_error(), "patternProperties") != NULL);
}

static void retrieval(tailor_client *client) {
  tailor_document docs[] = {{"a", "Lentil soup is served on Thursdays."}, {"b", "The library closes at nine."}};
  size_t added = 0, deleted = 0, documents = 0, chunks = 0;
  EXPECT(tailor_index_create(client, "kb-every", NULL) == TAILOR_OK);
  EXPECT(tailor_index_create(client, "kb-every", NULL) == TAILOR_ERR_CONFLICT);
  EXPECT(tailor_index_add(client, "kb-every", docs, 2, &added) == TAILOR_OK && added == 2);
  EXPECT(tailor_index_info(client, "kb-every", &documents, &chunks) == TAILOR_OK && documents == 2 && chunks == 2);
  tailor_search_params search = tailor_search_default_params();
  search.index = "kb-every";
  search.query = "When is there soup?";
  search.k = 1;
  tailor_sources *hits = NULL;
  EXPECT(tailor_search(client, &search, &hits) == TAILOR_OK && tailor_sources_count(hits) == 1);
  const tailor_source *top = tailor_sources_get(hits, 0);
  EXPECT(top != NULL && strcmp(top->doc_id, "a") == 0 && top->span_end > top->span_start && top->score > 0.3f);
  EXPECT(tailor_sources_get(hits, 1) == NULL);
  tailor_sources_free(hits);
  const char *ids[] = {"a"};
  EXPECT(tailor_index_delete(client, "kb-every", ids, 1, &deleted) == TAILOR_OK && deleted == 1);
  EXPECT(tailor_index_info(client, "kb-every", &documents, NULL) == TAILOR_OK && documents == 1);
  search.index = "no-such-index";
  EXPECT(tailor_search(client, &search, &hits) == TAILOR_ERR_NOT_FOUND && hits == NULL);

  /* API 1.4: listing and dropping. */
  tailor_indexes *list = NULL;
  EXPECT(tailor_indexes_list(client, &list) == TAILOR_OK);
  int listed = 0;
  for (size_t i = 0; i < tailor_indexes_count(list); i++) {
    if (strcmp(tailor_indexes_name(list, i), "kb-every") == 0) {
      listed = strcmp(tailor_indexes_kind(list, i), "flat") == 0 && tailor_indexes_dim(list, i) == 384;
    }
  }
  EXPECT(listed && tailor_indexes_name(list, tailor_indexes_count(list)) == NULL);
  EXPECT(tailor_indexes_kind(list, 99) == NULL && tailor_indexes_dim(list, 99) == 0);
  tailor_indexes_free(list);
  tailor_indexes_free(NULL);
  EXPECT(tailor_index_drop(client, "kb-every") == TAILOR_OK);
  EXPECT(tailor_index_drop(client, "kb-every") == TAILOR_ERR_NOT_FOUND);
  EXPECT(tailor_index_info(client, "kb-every", &documents, NULL) == TAILOR_ERR_NOT_FOUND);
  EXPECT(tailor_index_drop(client, "../escape") == TAILOR_ERR_INVALID_ARGUMENT);
}

/* Waits for job `id` to end; returns its final state. */
static tailor_fine_tune_job *wait_for_job(tailor_client *client, const char *id) {
  for (int tries = 0; tries < 1200; tries++) {
    tailor_fine_tune_job *job = NULL;
    if (tailor_fine_tune_get(client, id, &job) != TAILOR_OK) return NULL;
    const char *status = tailor_fine_tune_job_status(job);
    if (strcmp(status, "queued") != 0 && strcmp(status, "running") != 0) return job;
    tailor_fine_tune_job_free(job);
    sleep_ms(100);
  }
  return NULL;
}

static void fine_tuning(tailor_client *client, const char *model, const char *training_file) {
  tailor_fine_tune_params params = tailor_fine_tune_default_params();
  EXPECT(params.n_epochs == 0 && params.seed < 0 && params.training_file == NULL && params.method == NULL);
  tailor_fine_tune_job *job = NULL;
  EXPECT(tailor_fine_tune_start(client, &params, &job) == TAILOR_ERR_INVALID_ARGUMENT && job == NULL);
  params.model = model;
  params.training_file = "/etc/passwd";
  EXPECT(tailor_fine_tune_start(client, &params, &job) == TAILOR_ERR_BAD_REQUEST && job == NULL);
  EXPECT(strstr(tailor_last_error(), "data_dirs") != NULL);
  params.training_file = training_file;
  params.method = "dora";
  EXPECT(tailor_fine_tune_start(client, &params, &job) == TAILOR_ERR_BAD_REQUEST && job == NULL);
  EXPECT(strstr(tailor_last_error(), "dora") != NULL);
  params.method = "qlora"; /* on the daemon's quantized GGUF: trained on its own blocks */
  params.suffix = "every";
  params.n_epochs = 1;
  params.batch_size = 2;
  params.rank = 2;
  params.seed = 7;
  EXPECT(tailor_fine_tune_start(client, &params, &job) == TAILOR_OK && job != NULL);
  EXPECT(tailor_fine_tune_job_model(job) == NULL && tailor_fine_tune_job_error(job) == NULL);
  char id[64] = {0};
  snprintf(id, sizeof id, "%s", tailor_fine_tune_job_id(job));
  tailor_fine_tune_job_free(job);
  tailor_fine_tune_job *done = wait_for_job(client, id);
  EXPECT(done != NULL && strcmp(tailor_fine_tune_job_status(done), "succeeded") == 0);
  const char *trained = done ? tailor_fine_tune_job_model(done) : NULL;
  EXPECT(trained != NULL && strstr(trained, ":every-") != NULL);
  EXPECT(done != NULL && tailor_fine_tune_job_result(done) == NULL); /* an adapter, not a model folder */
  EXPECT(tailor_fine_tune_job_result(NULL) == NULL);

  tailor_fine_tune_events *events = NULL;
  EXPECT(tailor_fine_tune_events_get(client, id, &events) == TAILOR_OK);
  EXPECT(tailor_fine_tune_events_count(events) == 2);
  EXPECT(tailor_fine_tune_events_step(events, 1) == 2 && isfinite(tailor_fine_tune_events_loss(events, 1)));
  EXPECT(isnan(tailor_fine_tune_events_eval_loss(events, 1)));
  EXPECT(isnan(tailor_fine_tune_events_loss(events, 9)) && tailor_fine_tune_events_step(events, 9) == 0);
  tailor_fine_tune_events_free(events);
  tailor_fine_tune_events_free(NULL);

  if (trained) {
    tailor_generate_params gen = tailor_generate_default_params();
    gen.model = trained;
    gen.prompt = "Hello";
    gen.max_tokens = 4;
    tailor_answer *answer = NULL;
    EXPECT(tailor_generate(client, &gen, &answer) == TAILOR_OK);
    tailor_answer_free(answer);
  }
  tailor_fine_tune_job_free(done);
  tailor_fine_tune_job_free(NULL);
  EXPECT(tailor_fine_tune_cancel(client, id) == TAILOR_ERR_BAD_REQUEST); /* already ended */
  EXPECT(tailor_fine_tune_get(client, "ftjob-none", &job) == TAILOR_ERR_NOT_FOUND && job == NULL);
  EXPECT(tailor_fine_tune_job_id(NULL) == NULL && tailor_fine_tune_job_status(NULL) == NULL);
}

static void adapters(tailor_client *client, const char *model, const char *adapter_dir) {
  EXPECT(tailor_adapter_load(client, NULL, "every-qv", adapter_dir) == TAILOR_OK);
  EXPECT(tailor_adapter_load(client, model, "every-qv", adapter_dir) == TAILOR_ERR_CONFLICT); /* taken */
  EXPECT(tailor_adapter_load(client, model, "outside", "/etc") == TAILOR_ERR_BAD_REQUEST);
  EXPECT(tailor_adapter_load(client, model, NULL, adapter_dir) == TAILOR_ERR_INVALID_ARGUMENT);
  tailor_adapters *list = NULL;
  EXPECT(tailor_adapters_list(client, &list) == TAILOR_OK);
  int found = 0;
  for (size_t i = 0; i < tailor_adapters_count(list); i++) {
    if (strcmp(tailor_adapters_name(list, i), "every-qv") == 0) {
      found = strcmp(tailor_adapters_model(list, i), model) == 0 && tailor_adapters_rank(list, i) == 8;
    }
  }
  EXPECT(found);
  EXPECT(tailor_adapters_name(list, tailor_adapters_count(list)) == NULL);
  EXPECT(tailor_adapters_model(list, tailor_adapters_count(list)) == NULL);
  EXPECT(tailor_adapters_rank(list, tailor_adapters_count(list)) == 0);
  tailor_adapters_free(list);
  tailor_adapters_free(NULL);

  /* The same completion with the adapter, at half strength, and without. */
  tailor_generate_params gen = tailor_generate_default_params();
  EXPECT(gen.adapter == NULL && gen.adapter_scale == 0);
  gen.model = model;
  gen.prompt = "The capital of France is";
  gen.max_tokens = 8;
  tailor_answer *base = NULL, *tuned = NULL, *half = NULL;
  EXPECT(tailor_generate(client, &gen, &base) == TAILOR_OK);
  gen.adapter = "every-qv";
  EXPECT(tailor_generate(client, &gen, &tuned) == TAILOR_OK);
  gen.adapter_scale = 0.5f;
  EXPECT(tailor_generate(client, &gen, &half) == TAILOR_OK);
  EXPECT(base && tuned && strcmp(tailor_answer_text(base), tailor_answer_text(tuned)) != 0);
  tailor_answer_free(base);
  tailor_answer_free(tuned);
  tailor_answer_free(half);

  tailor_message question[] = {{"user", "Name a colour."}};
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = model;
  chat.messages = question;
  chat.n_messages = 1;
  chat.max_tokens = 6;
  chat.adapter = "every-qv";
  tailor_answer *answer = NULL;
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_OK && tailor_answer_completion_tokens(answer) > 0);
  tailor_answer_free(answer);

  EXPECT(tailor_adapter_unload(client, NULL, "every-qv") == TAILOR_OK);
  EXPECT(tailor_adapter_unload(client, model, "every-qv") == TAILOR_ERR_NOT_FOUND);
  EXPECT(tailor_chat(client, &chat, &answer) == TAILOR_ERR_NOT_FOUND && answer == NULL);
}

static void embeddings(tailor_client *client, const char *model) {
  const char *texts[] = {"one", "two", "three"};
  tailor_embeddings *e = NULL;
  EXPECT(tailor_embed(client, model, texts, 3, &e) == TAILOR_OK);
  EXPECT(tailor_embeddings_count(e) == 3 && tailor_embeddings_dim(e) == 384);
  EXPECT(tailor_embeddings_vector(e, 2) != NULL && tailor_embeddings_vector(e, 3) == NULL);
  tailor_embeddings_free(e);
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s SOCKET GENERATE_MODEL EMBED_MODEL ADAPTER_DIR TRAINING_FILE\n", argv[0]);
    return 2;
  }
  status_and_version();
  tailor_client_params params = tailor_client_default_params();
  EXPECT(params.struct_size == sizeof params && params.timeout_ms > 0);
  params.socket_path = argv[1];
  tailor_client *client = NULL;
  if (tailor_client_open(&params, &client) != TAILOR_OK) {
    fprintf(stderr, "cannot open: %s\n", tailor_last_error());
    return 1;
  }
  bad_arguments(client);
  models(client, argv[2], argv[3]);
  older_params_struct(client, argv[2]);
  generation(client, argv[2]);
  choices_and_logprobs(client, argv[2]);
  tokens(client, argv[2]);
  deadlines_and_cancellation(client, argv[2]);
  structured_output(client, argv[2]);
  retrieval(client);
  embeddings(client, argv[3]);
  adapters(client, argv[2], argv[4]);
  fine_tuning(client, argv[2], argv[5]);
  tailor_client_close(client);
  printf("%s (%d failures)\n", failures ? "FAILED" : "OK", failures);
  return failures != 0;
}
