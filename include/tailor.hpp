// tailor.hpp — a small C++17 wrapper over tailor.h: RAII handles, values
// instead of borrowed pointers, exceptions (tailor::Error) instead of
// status codes. Header-only; link libtailor as for C.
//
// Threading is as in tailor.h: a Client may be shared between threads;
// callbacks run on the calling thread. An exception thrown by a callback
// stops the generation and is rethrown from the call. A deadline and a
// Cancel token (stoppable from any thread) come with Client::bounded.
#ifndef TAILOR_HPP
#define TAILOR_HPP

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tailor.h"

namespace tailor {

/// A failed call: the status and libtailor's message.
class Error : public std::runtime_error {
 public:
  Error(tailor_status status, const std::string &message)
      : std::runtime_error(std::string(tailor_status_name(status)) + ": " + message), status_(status) {}
  tailor_status status() const noexcept { return status_; }

 private:
  tailor_status status_;
};

namespace detail {
inline void check(tailor_status status) {
  if (status != TAILOR_OK) throw Error(status, tailor_last_error());
}
template <typename T, void (*Free)(T *)>
struct Deleter {
  void operator()(T *p) const noexcept { Free(p); }
};
template <typename T, void (*Free)(T *)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;
}  // namespace detail

/// A retrieved passage.
struct Source {
  uint32_t number = 0;
  float score = 0;
  std::string doc_id, source, text;
  size_t span_start = 0, span_end = 0;
};

/// A token that could have come instead.
struct TopLogprob {
  std::string token;
  double logprob = 0;  // natural log
};

/// A generated token's log-probability and its most likely alternatives (most likely first).
struct TokenLogprob {
  std::string token;
  double logprob = 0;
  std::vector<TopLogprob> top;
};

/// One generation of the prompt.
struct Choice {
  std::string text, finish_reason;
  std::vector<TokenLogprob> logprobs;  // with Options::logprobs >= 0
};

/// A finished generation; text and finish_reason are the first choice's.
struct Answer {
  std::string text, finish_reason;
  uint32_t prompt_tokens = 0, completion_tokens = 0;
  std::vector<Source> sources;  // RAG only
  std::vector<Choice> choices;  // Options::n of them
};

/// A generation cut short (callback, Cancel, deadline, daemon failure)
/// after its stream had started: the error, and the answer so far.
class Interrupted : public Error {
 public:
  Interrupted(tailor_status status, const std::string &message, Answer partial)
      : Error(status, message), partial_(std::move(partial)) {}
  /// What had arrived; finish_reason "cancelled", "timeout" or "error".
  const Answer &partial() const noexcept { return partial_; }

 private:
  Answer partial_;
};

struct Message {
  std::string role, content;
};

/// Sampling and RAG settings; the defaults are tailor.h's.
struct Options {
  int32_t max_tokens = 0;
  float temperature = 0;
  float top_p = 1;
  int32_t top_k = 0;
  int64_t seed = -1;
  std::string index;  // RAG index (chat only); empty: off
  uint32_t k = 0;
  std::string adapter;      // a loaded LoRA adapter; empty: the base model
  float adapter_scale = 0;  // 0: 1
  std::vector<std::string> stop;  // up to 4; the answer ends before the first to appear
  float presence_penalty = 0;     // -2..2
  float frequency_penalty = 0;    // -2..2
  std::string json_schema;        // a JSON schema, "object" for any JSON object; empty: free text
  uint32_t n = 0;                 // generations of the prompt; 0: 1 (more than 1 does not stream)
  int32_t logprobs = -1;          // < 0: none; 0..20: log-probabilities with this many alternatives
};

/// A stage (or adapter) as the daemon lists it.
struct ModelInfo {
  std::string id, kind;
  uint32_t context_length = 0;  // tokens of context (generate), per text (embed)
  uint32_t embedding_dim = 0;   // embed stages
};

/// An index as the daemon lists it.
struct IndexInfo {
  std::string name, kind;  // kind: "flat" or "hnsw"
  uint32_t dim = 0;
};

/// Token ids of a prompt.
struct Tokens {
  std::vector<uint32_t> ids;
  uint32_t context_length = 0;  // shared by prompt and answer
};

/// A token that stops the calls of clients made with it (Client::bounded),
/// from any thread.
class Cancel {
 public:
  Cancel() : handle_(tailor_cancel_new()) {}
  /// Ends the calls in flight (within about 50 ms) and every later one.
  void trigger() const noexcept { tailor_cancel_trigger(handle_.get()); }
  const tailor_cancel *get() const noexcept { return handle_.get(); }

 private:
  detail::Owned<tailor_cancel, tailor_cancel_free> handle_;
};

/// A LoRA adapter as the daemon lists it.
struct AdapterInfo {
  std::string name, model;  // model: the generate stage it belongs to
  uint32_t rank = 0;
};

/// A fine-tuning job's settings (0 / empty: the daemon's defaults).
struct FineTuneOptions {
  std::string validation_file, suffix;
  std::string method;  // "lora" (empty: the default), "qlora" or "full" (API 1.5)
  uint32_t n_epochs = 0, batch_size = 0, rank = 0;
  float learning_rate_multiplier = 0;
  int64_t seed = -1;
};

/// A fine-tuning job's state.
struct FineTuneJob {
  std::string id, status;  // status: queued, running, succeeded, failed, cancelled
  std::string model;       // once succeeded: the trained model's name ("stage:adapter")
  std::string error;       // once failed: why
  std::string result;      // once a full fine-tune succeeded: its Hugging Face folder (API 1.5)
};

/// One step of a job's log (NaN: not measured at that step).
struct FineTuneEvent {
  uint32_t step = 0;
  double loss = 0, eval_loss = 0;
};

/// Called with each piece of text; return false to stop (tailor::Error with TAILOR_ERR_CANCELLED).
using TokenCallback = std::function<bool(std::string_view)>;

inline std::vector<Source> copy_sources(const tailor_sources *sources) {
  std::vector<Source> out;
  for (size_t i = 0; i < tailor_sources_count(sources); i++) {
    const tailor_source *s = tailor_sources_get(sources, i);
    out.push_back({s->number, s->score, s->doc_id, s->source, s->text, s->span_start, s->span_end});
  }
  return out;
}

/// A connection to tailord (settings only; each call connects).
class Client {
 public:
  /// Connects over a Unix socket ("" takes $TAILOR_SOCKET or /run/tailor/tailord.sock).
  static Client unix_socket(const std::string &path = "", const std::string &token = "") {
    tailor_client_params params = tailor_client_default_params();
    if (!path.empty()) params.socket_path = path.c_str();
    if (!token.empty()) params.token = token.c_str();
    return Client(params);
  }

  /// Connects over TCP to "host:port".
  static Client tcp(const std::string &address, const std::string &token = "") {
    tailor_client_params params = tailor_client_default_params();
    params.address = address.c_str();
    if (!token.empty()) params.token = token.c_str();
    return Client(params);
  }

  /// This client's settings, with each call ending within `timeout_ms`
  /// (0: this client's bound; tailor::Error TAILOR_ERR_TIMEOUT) and stopped
  /// once `cancel` (optional; the new client keeps its own share of it) is triggered.
  Client bounded(uint32_t timeout_ms, const Cancel *cancel = nullptr) const {
    tailor_client *raw = nullptr;
    detail::check(tailor_client_derive(handle_.get(), timeout_ms, cancel ? cancel->get() : nullptr, &raw));
    return Client(raw);
  }
  /// Each of the daemon's stages and adapters, with its shape.
  std::vector<ModelInfo> models() const {
    tailor_models *raw = nullptr;
    detail::check(tailor_models_list(handle_.get(), &raw));
    detail::Owned<tailor_models, tailor_models_free> list(raw);
    std::vector<ModelInfo> out;
    for (size_t i = 0; i < tailor_models_count(list.get()); i++) {
      out.push_back({tailor_models_id(list.get(), i), tailor_models_kind(list.get(), i),
                     tailor_models_context_length(list.get(), i), tailor_models_embedding_dim(list.get(), i)});
    }
    return out;
  }
  /// The token ids a generation of `prompt` on generate stage `model` starts from.
  Tokens tokenize(const std::string &model, const std::string &prompt) const {
    tailor_tokens *raw = nullptr;
    detail::check(tailor_tokenize(handle_.get(), model.c_str(), prompt.c_str(), &raw));
    detail::Owned<tailor_tokens, tailor_tokens_free> tokens(raw);
    const uint32_t *ids = tailor_tokens_ids(tokens.get());
    return {std::vector<uint32_t>(ids, ids + tailor_tokens_count(tokens.get())),
            tailor_tokens_context_length(tokens.get())};
  }
  /// The indexes of the daemon's index stage.
  std::vector<IndexInfo> indexes() const {
    tailor_indexes *raw = nullptr;
    detail::check(tailor_indexes_list(handle_.get(), &raw));
    detail::Owned<tailor_indexes, tailor_indexes_free> list(raw);
    std::vector<IndexInfo> out;
    for (size_t i = 0; i < tailor_indexes_count(list.get()); i++) {
      out.push_back({tailor_indexes_name(list.get(), i), tailor_indexes_kind(list.get(), i),
                     tailor_indexes_dim(list.get(), i)});
    }
    return out;
  }
  /// Deletes an index with all its documents.
  void drop_index(const std::string &index) const { detail::check(tailor_index_drop(handle_.get(), index.c_str())); }

  Answer chat(const std::string &model, const std::vector<Message> &messages, const Options &options = {},
              TokenCallback on_token = {}) const {
    std::vector<tailor_message> raw;
    for (const Message &m : messages) raw.push_back({m.role.c_str(), m.content.c_str()});
    tailor_chat_params params = tailor_chat_default_params();
    params.model = model.c_str();
    params.messages = raw.data();
    params.n_messages = raw.size();
    params.max_tokens = options.max_tokens;
    params.temperature = options.temperature;
    params.top_p = options.top_p;
    params.top_k = options.top_k;
    params.seed = options.seed;
    if (!options.index.empty()) params.index = options.index.c_str();
    params.k = options.k;
    if (!options.adapter.empty()) params.adapter = options.adapter.c_str();
    params.adapter_scale = options.adapter_scale;
    std::vector<const char *> stops;
    params.output = output_of(options, stops);
    params.n = options.n;
    params.logprobs = options.logprobs;
    return stream(on_token, params, [this](const tailor_chat_params &p, tailor_answer **out) {
      return tailor_chat(handle_.get(), &p, out);
    });
  }

  Answer generate(const std::string &model, const std::string &prompt, const Options &options = {},
                  TokenCallback on_token = {}) const {
    tailor_generate_params params = tailor_generate_default_params();
    params.model = model.c_str();
    params.prompt = prompt.c_str();
    params.max_tokens = options.max_tokens;
    params.temperature = options.temperature;
    params.top_p = options.top_p;
    params.top_k = options.top_k;
    params.seed = options.seed;
    if (!options.adapter.empty()) params.adapter = options.adapter.c_str();
    params.adapter_scale = options.adapter_scale;
    std::vector<const char *> stops;
    params.output = output_of(options, stops);
    params.n = options.n;
    params.logprobs = options.logprobs;
    return stream(on_token, params, [this](const tailor_generate_params &p, tailor_answer **out) {
      return tailor_generate(handle_.get(), &p, out);
    });
  }

  /// Loads the adapter folder `path` (on the daemon's machine) as `name`; `model` "" is the first generate stage.
  void load_adapter(const std::string &name, const std::string &path, const std::string &model = "") const {
    detail::check(tailor_adapter_load(handle_.get(), model.empty() ? nullptr : model.c_str(), name.c_str(),
                                      path.c_str()));
  }

  /// Unloads adapter `name` (requests using it finish first).
  void unload_adapter(const std::string &name, const std::string &model = "") const {
    detail::check(tailor_adapter_unload(handle_.get(), model.empty() ? nullptr : model.c_str(), name.c_str()));
  }

  /// The adapters of every generate stage.
  std::vector<AdapterInfo> adapters() const {
    tailor_adapters *raw = nullptr;
    detail::check(tailor_adapters_list(handle_.get(), &raw));
    detail::Owned<tailor_adapters, tailor_adapters_free> list(raw);
    std::vector<AdapterInfo> out;
    for (size_t i = 0; i < tailor_adapters_count(list.get()); i++) {
      out.push_back({tailor_adapters_name(list.get(), i), tailor_adapters_model(list.get(), i),
                     tailor_adapters_rank(list.get(), i)});
    }
    return out;
  }

  /// Starts fine-tuning generate stage `model` on `training_file` (under its data_dirs); returns the job's id.
  std::string start_fine_tune(const std::string &model, const std::string &training_file,
                              const FineTuneOptions &options = {}) const {
    tailor_fine_tune_params params = tailor_fine_tune_default_params();
    params.model = model.c_str();
    params.training_file = training_file.c_str();
    if (!options.validation_file.empty()) params.validation_file = options.validation_file.c_str();
    if (!options.suffix.empty()) params.suffix = options.suffix.c_str();
    if (!options.method.empty()) params.method = options.method.c_str();
    params.n_epochs = options.n_epochs;
    params.batch_size = options.batch_size;
    params.learning_rate_multiplier = options.learning_rate_multiplier;
    params.rank = options.rank;
    params.seed = options.seed;
    tailor_fine_tune_job *raw = nullptr;
    detail::check(tailor_fine_tune_start(handle_.get(), &params, &raw));
    detail::Owned<tailor_fine_tune_job, tailor_fine_tune_job_free> job(raw);
    return tailor_fine_tune_job_id(job.get());
  }

  /// The current state of job `id`.
  FineTuneJob fine_tune_status(const std::string &id) const {
    tailor_fine_tune_job *raw = nullptr;
    detail::check(tailor_fine_tune_get(handle_.get(), id.c_str(), &raw));
    detail::Owned<tailor_fine_tune_job, tailor_fine_tune_job_free> job(raw);
    const char *model = tailor_fine_tune_job_model(job.get());
    const char *error = tailor_fine_tune_job_error(job.get());
    const char *result = tailor_fine_tune_job_result(job.get());
    return {tailor_fine_tune_job_id(job.get()), tailor_fine_tune_job_status(job.get()), model ? model : "",
            error ? error : "", result ? result : ""};
  }

  /// Job `id`'s log, step by step.
  std::vector<FineTuneEvent> fine_tune_events(const std::string &id) const {
    tailor_fine_tune_events *raw = nullptr;
    detail::check(tailor_fine_tune_events_get(handle_.get(), id.c_str(), &raw));
    detail::Owned<tailor_fine_tune_events, tailor_fine_tune_events_free> events(raw);
    std::vector<FineTuneEvent> out;
    for (size_t i = 0; i < tailor_fine_tune_events_count(events.get()); i++) {
      out.push_back({tailor_fine_tune_events_step(events.get(), i), tailor_fine_tune_events_loss(events.get(), i),
                     tailor_fine_tune_events_eval_loss(events.get(), i)});
    }
    return out;
  }

  /// Asks job `id` to stop.
  void cancel_fine_tune(const std::string &id) const {
    detail::check(tailor_fine_tune_cancel(handle_.get(), id.c_str()));
  }

  std::vector<std::vector<float>> embed(const std::string &model, const std::vector<std::string> &texts) const {
    std::vector<const char *> raw;
    for (const std::string &t : texts) raw.push_back(t.c_str());
    tailor_embeddings *out = nullptr;
    detail::check(tailor_embed(handle_.get(), model.c_str(), raw.data(), raw.size(), &out));
    detail::Owned<tailor_embeddings, tailor_embeddings_free> owned(out);
    std::vector<std::vector<float>> vectors;
    size_t dim = tailor_embeddings_dim(owned.get());
    for (size_t i = 0; i < tailor_embeddings_count(owned.get()); i++) {
      const float *v = tailor_embeddings_vector(owned.get(), i);
      vectors.emplace_back(v, v + dim);
    }
    return vectors;
  }

  std::vector<Source> search(const std::string &index, const std::string &query, uint32_t k = 0) const {
    tailor_search_params params = tailor_search_default_params();
    params.index = index.c_str();
    params.query = query.c_str();
    params.k = k;
    tailor_sources *out = nullptr;
    detail::check(tailor_search(handle_.get(), &params, &out));
    detail::Owned<tailor_sources, tailor_sources_free> owned(out);
    return copy_sources(owned.get());
  }

  void create_index(const std::string &index, const std::string &kind = "flat") const {
    detail::check(tailor_index_create(handle_.get(), index.c_str(), kind.c_str()));
  }

  /// Adds (id, text) documents; returns how many were new or changed.
  size_t add_documents(const std::string &index, const std::vector<std::pair<std::string, std::string>> &docs) const {
    std::vector<tailor_document> raw;
    for (const auto &d : docs) raw.push_back({d.first.c_str(), d.second.c_str()});
    size_t added = 0;
    detail::check(tailor_index_add(handle_.get(), index.c_str(), raw.data(), raw.size(), &added));
    return added;
  }

  size_t delete_documents(const std::string &index, const std::vector<std::string> &ids) const {
    std::vector<const char *> raw;
    for (const std::string &id : ids) raw.push_back(id.c_str());
    size_t deleted = 0;
    detail::check(tailor_index_delete(handle_.get(), index.c_str(), raw.data(), raw.size(), &deleted));
    return deleted;
  }

  /// (documents, chunks).
  std::pair<size_t, size_t> index_info(const std::string &index) const {
    size_t documents = 0, chunks = 0;
    detail::check(tailor_index_info(handle_.get(), index.c_str(), &documents, &chunks));
    return {documents, chunks};
  }

 private:
  explicit Client(const tailor_client_params &params) {
    tailor_client *raw = nullptr;
    detail::check(tailor_client_open(&params, &raw));
    handle_.reset(raw);
  }
  explicit Client(tailor_client *derived) : handle_(derived) {}
  /// Copies an answer out of libtailor.
  static Answer copy_answer(const tailor_answer *raw) {
    Answer answer{tailor_answer_text(raw), tailor_answer_finish_reason(raw), tailor_answer_prompt_tokens(raw),
                  tailor_answer_completion_tokens(raw), copy_sources(tailor_answer_sources(raw)), {}};
    for (size_t c = 0; c < tailor_answer_choices_count(raw); c++) {
      Choice choice{tailor_answer_choice_text(raw, c), tailor_answer_choice_finish_reason(raw, c), {}};
      for (size_t i = 0; i < tailor_answer_logprobs_count(raw, c); i++) {
        const tailor_token_logprob *t = tailor_answer_logprob(raw, c, i);
        TokenLogprob token{t->token, t->logprob, {}};
        for (size_t j = 0; j < t->n_top; j++) token.top.push_back({t->top[j].token, t->top[j].logprob});
        choice.logprobs.push_back(std::move(token));
      }
      answer.choices.push_back(std::move(choice));
    }
    return answer;
  }

  /// What the C callback's user_data points to.
  /// The output options of `options`; `stops` holds the stop pointers for the call.
  static tailor_output_options output_of(const Options &options, std::vector<const char *> &stops) {
    for (const std::string &s : options.stop) stops.push_back(s.c_str());
    tailor_output_options output{};
    output.stop = stops.data();
    output.n_stop = stops.size();
    output.presence_penalty = options.presence_penalty;
    output.frequency_penalty = options.frequency_penalty;
    if (!options.json_schema.empty()) output.json_schema = options.json_schema.c_str();
    return output;
  }

  struct Relay {
    TokenCallback *callback;
    std::exception_ptr error;
  };

  static int relay(const char *text, size_t len, void *user_data) noexcept {
    Relay *r = static_cast<Relay *>(user_data);
    try {
      return (*r->callback)(std::string_view(text, len)) ? 0 : 1;
    } catch (...) {
      r->error = std::current_exception();  // no exception crosses the C boundary
      return 1;
    }
  }

  template <typename Params, typename Call>
  Answer stream(TokenCallback &on_token, Params params, Call call) const {
    Relay r{&on_token, nullptr};
    if (on_token) {
      params.on_token = relay;
      params.user_data = &r;
    }
    tailor_answer *raw = nullptr;
    tailor_status status = call(params, &raw);
    detail::Owned<tailor_answer, tailor_answer_free> answer(raw);  // a partial one comes with a failure
    if (r.error) std::rethrow_exception(r.error);
    if (status != TAILOR_OK && answer) throw Interrupted(status, tailor_last_error(), copy_answer(answer.get()));
    detail::check(status);
    return copy_answer(answer.get());
  }

  detail::Owned<tailor_client, tailor_client_close> handle_;
};

}  // namespace tailor

#endif  // TAILOR_HPP
