/*
 * A C app on libtailor: streams a chat answer, embeds two texts, builds a
 * small index and answers from it with sources, and shows what failures
 * look like (daemon down, unknown model). Everything it gets, it frees.
 *
 *   cc -std=c11 rag_chat.c $(pkg-config --cflags --libs tailor) -o rag_chat
 *   ./rag_chat /run/tailor/tailord.sock smollm2 minilm
 */
#include <stdio.h>
#include <string.h>

#include <tailor.h>

/* Exit with a message when a call fails. */
#define CHECK(call)                                                                                 \
  do {                                                                                              \
    tailor_status status_ = (call);                                                                 \
    if (status_ != TAILOR_OK) {                                                                     \
      fprintf(stderr, "%s failed: %s: %s\n", #call, tailor_status_name(status_), tailor_last_error()); \
      return 1;                                                                                     \
    }                                                                                               \
  } while (0)

static int print_token(const char *text, size_t len, void *user_data) {
  size_t *pieces = user_data;
  (*pieces)++;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* go on */
}

static int open_client(const char *socket_path, tailor_client **client) {
  tailor_client_params params = tailor_client_default_params();
  params.socket_path = socket_path;
  return tailor_client_open(&params, client);
}

static int stream_chat(tailor_client *client, const char *model) {
  tailor_message messages[] = {
      {"system", "You are a helpful assistant."},
      {"user", "What is the capital of France?"},
  };
  size_t pieces = 0;
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = model;
  chat.messages = messages;
  chat.n_messages = 2;
  chat.max_tokens = 24;
  chat.on_token = print_token;
  chat.user_data = &pieces;
  tailor_answer *answer = NULL;
  printf("chat: ");
  CHECK(tailor_chat(client, &chat, &answer));
  printf("\nchat streamed %zu pieces, %u tokens, finish %s\n", pieces, tailor_answer_completion_tokens(answer),
         tailor_answer_finish_reason(answer));
  int ok = pieces > 0 && strlen(tailor_answer_text(answer)) > 0;
  tailor_answer_free(answer);
  return ok ? 0 : 1;
}

static int embed_two(tailor_client *client, const char *model) {
  const char *texts[] = {"The cat sat on the mat.", "A kitten rested on the rug."};
  tailor_embeddings *embeddings = NULL;
  CHECK(tailor_embed(client, model, texts, 2, &embeddings));
  size_t dim = tailor_embeddings_dim(embeddings);
  const float *a = tailor_embeddings_vector(embeddings, 0), *b = tailor_embeddings_vector(embeddings, 1);
  float cosine = 0;
  for (size_t i = 0; i < dim; i++) cosine += a[i] * b[i];
  printf("embed: %zu vectors of %zu floats, cosine %.3f\n", tailor_embeddings_count(embeddings), dim, cosine);
  tailor_embeddings_free(embeddings);
  return dim > 0 ? 0 : 1;
}

static int rag(tailor_client *client, const char *model) {
  tailor_document documents[] = {
      {"bluebird", "Project Bluebird: the launch code of project Bluebird is 7421."},
      {"garden", "Tomatoes grow best in full sun with regular watering."},
      {"trains", "The night train to Vienna leaves at 22:10 from platform 4."},
  };
  size_t added = 0;
  CHECK(tailor_index_create(client, "kb-c", "flat"));
  CHECK(tailor_index_add(client, "kb-c", documents, 3, &added));
  tailor_message question[] = {{"user", "What is the launch code of project Bluebird?"}};
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = model;
  chat.messages = question;
  chat.n_messages = 1;
  chat.max_tokens = 32;
  chat.index = "kb-c";
  chat.k = 2;
  tailor_answer *answer = NULL;
  CHECK(tailor_chat(client, &chat, &answer));
  printf("rag: added %zu documents; answer: %s\n", added, tailor_answer_text(answer));
  const tailor_sources *sources = tailor_answer_sources(answer);
  for (size_t i = 0; i < tailor_sources_count(sources); i++) {
    const tailor_source *s = tailor_sources_get(sources, i);
    printf("  [%u] %s (score %.3f): %s\n", s->number, s->doc_id, s->score, s->text);
  }
  int ok = tailor_sources_count(sources) == 2 && strcmp(tailor_sources_get(sources, 0)->doc_id, "bluebird") == 0;
  tailor_answer_free(answer);
  return ok ? 0 : 1;
}

static int failures(tailor_client *client) {
  tailor_client *nobody = NULL;
  tailor_status down = open_client("/nonexistent/tailord.sock", &nobody);
  printf("daemon down: %s: %s\n", tailor_status_name(down), tailor_last_error());
  tailor_message hello[] = {{"user", "Hello"}};
  tailor_chat_params chat = tailor_chat_default_params();
  chat.model = "no-such-model";
  chat.messages = hello;
  chat.n_messages = 1;
  tailor_answer *answer = NULL;
  tailor_status unknown = tailor_chat(client, &chat, &answer);
  printf("unknown model: %s: %s\n", tailor_status_name(unknown), tailor_last_error());
  return down == TAILOR_ERR_CONNECT && nobody == NULL && unknown == TAILOR_ERR_NOT_FOUND && answer == NULL ? 0 : 1;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SOCKET GENERATE_MODEL EMBED_MODEL\n", argv[0]);
    return 2;
  }
  printf("libtailor %s (API %u)\n", tailor_version(), tailor_api_version());
  tailor_client *client = NULL;
  CHECK(open_client(argv[1], &client));
  int failed = stream_chat(client, argv[2]) || embed_two(client, argv[3]) || rag(client, argv[2]) || failures(client);
  tailor_client_close(client);
  printf(failed ? "FAILED\n" : "OK\n");
  return failed;
}
