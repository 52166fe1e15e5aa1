// A C++17 app on tailor.hpp: the same tour as examples/c/rag_chat.c —
// stream a chat answer, embed two texts, answer from an index with
// sources, count tokens, read log-probabilities, bound a call with a
// deadline, see what failures look like and, given an adapter folder under
// the stage's adapter_dirs, answer from the index through a LoRA adapter
// (RAG for knowledge, LoRA for style). RAII frees everything.
//
//   c++ -std=c++17 rag_chat.cpp $(pkg-config --cflags --libs tailor) -o rag_chat_cpp
//   ./rag_chat_cpp /run/tailor/tailord.sock smollm2 minilm [ADAPTER_DIR]
#include <cmath>
#include <iostream>

#include <tailor.hpp>

namespace {

bool stream_chat(const tailor::Client &client, const std::string &model) {
  size_t pieces = 0;
  tailor::Options options;
  options.max_tokens = 24;
  std::cout << "chat: ";
  tailor::Answer answer = client.chat(
      model, {{"system", "You are a helpful assistant."}, {"user", "What is the capital of France?"}}, options,
      [&](std::string_view piece) {
        std::cout << piece << std::flush;
        pieces++;
        return true;
      });
  std::cout << "\nchat streamed " << pieces << " pieces, finish " << answer.finish_reason << "\n";
  return pieces > 0 && !answer.text.empty();
}

bool json_answer(const tailor::Client &client, const std::string &model) {
  tailor::Options options;
  options.max_tokens = 60;
  options.json_schema = R"({"type":"object","properties":{"city":{"type":"string","maxLength":30},"country":{"type":"string","maxLength":30}}})";
  options.stop = {"never-appears"};
  tailor::Answer answer = client.chat(model, {{"user", "Name a city and its country as JSON."}}, options);
  std::cout << "json: " << answer.text << " (finish " << answer.finish_reason << ")\n";
  return answer.text.rfind("{\"city\":", 0) == 0 && answer.text.find("\"country\":") != std::string::npos &&
         answer.text.back() == '}';
}

bool embed_two(const tailor::Client &client, const std::string &model) {
  auto vectors = client.embed(model, {"The cat sat on the mat.", "A kitten rested on the rug."});
  float cosine = 0;
  for (size_t i = 0; i < vectors[0].size(); i++) cosine += vectors[0][i] * vectors[1][i];
  std::cout << "embed: " << vectors.size() << " vectors of " << vectors[0].size() << " floats, cosine " << cosine
            << "\n";
  return vectors.size() == 2 && std::abs(cosine) <= 1.001f;
}

bool rag(const tailor::Client &client, const std::string &model) {
  client.create_index("kb-cpp");
  size_t added = client.add_documents(
      "kb-cpp", {{"bluebird", "Project Bluebird: the launch code of project Bluebird is 7421."},
                 {"garden", "Tomatoes grow best in full sun with regular watering."},
                 {"trains", "The night train to Vienna leaves at 22:10 from platform 4."}});
  tailor::Options options;
  options.max_tokens = 32;
  options.index = "kb-cpp";
  options.k = 2;
  tailor::Answer answer = client.chat(model, {{"user", "What is the launch code of project Bluebird?"}}, options);
  std::cout << "rag: added " << added << " documents; answer: " << answer.text << "\n";
  for (const tailor::Source &s : answer.sources) {
    std::cout << "  [" << s.number << "] " << s.doc_id << " (score " << s.score << "): " << s.text << "\n";
  }
  return answer.sources.size() == 2 && answer.sources[0].doc_id == "bluebird";
}

bool counted_and_bounded(const tailor::Client &client, const std::string &model) {
  tailor::Tokens tokens = client.tokenize(model, "The capital of France is");
  tailor::Options options;
  options.max_tokens = 3;
  options.logprobs = 2;
  tailor::Answer answer = client.generate(model, "The capital of France is", options);
  const tailor::TokenLogprob &first = answer.choices.at(0).logprobs.at(0);
  std::cout << "tokens: " << tokens.ids.size() << " of " << tokens.context_length << "; first token " << first.token
            << " (logprob " << first.logprob << ", then " << first.top.at(1).token << ")\n";
  bool counted = tokens.ids.size() == answer.prompt_tokens && first.top.size() == 2 && first.token == first.top[0].token;
  // A whole call bounded to 300 ms: the stream stops there and its text so far comes with the error.
  tailor::Client hurried = client.bounded(300);
  options.max_tokens = 2000;
  options.logprobs = -1;
  try {
    hurried.generate(model, "1, 2, 3, 4,", options, [](std::string_view) { return true; });
  } catch (const tailor::Interrupted &e) {
    std::cout << "deadline: " << e.what() << "; kept " << e.partial().text.size() << " bytes\n";
    return counted && e.status() == TAILOR_ERR_TIMEOUT && e.partial().finish_reason == "timeout";
  }
  return false;
}

bool failures(const tailor::Client &client) {
  bool down = false, unknown = false;
  try {
    tailor::Client::unix_socket("/nonexistent/tailord.sock");
  } catch (const tailor::Error &e) {
    std::cout << "daemon down: " << e.what() << "\n";
    down = e.status() == TAILOR_ERR_CONNECT;
  }
  try {
    client.chat("no-such-model", {{"user", "Hello"}});
  } catch (const tailor::Error &e) {
    std::cout << "unknown model: " << e.what() << "\n";
    unknown = e.status() == TAILOR_ERR_NOT_FOUND;
  }
  return down && unknown;
}

bool rag_with_adapter(const tailor::Client &client, const std::string &model, const std::string &folder) {
  client.load_adapter("style", folder);
  bool listed = false;
  for (const tailor::AdapterInfo &a : client.adapters()) listed |= a.name == "style" && a.model == model;
  tailor::Options options;
  options.max_tokens = 32;
  options.index = "kb-cpp";
  options.k = 2;
  tailor::Answer base = client.chat(model, {{"user", "What is the launch code of project Bluebird?"}}, options);
  options.adapter = "style";
  tailor::Answer styled = client.chat(model, {{"user", "What is the launch code of project Bluebird?"}}, options);
  client.unload_adapter("style");
  std::cout << "rag + adapter: " << styled.text << "\n";
  return listed && styled.sources.size() == 2 && styled.sources[0].doc_id == base.sources[0].doc_id;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: " << argv[0] << " SOCKET GENERATE_MODEL EMBED_MODEL [ADAPTER_DIR]\n";
    return 2;
  }
  try {
    tailor::Client client = tailor::Client::unix_socket(argv[1]);
    bool ok = stream_chat(client, argv[2]) && json_answer(client, argv[2]) && embed_two(client, argv[3]) &&
              rag(client, argv[2]) && counted_and_bounded(client, argv[2]) && failures(client);
    if (ok && argc == 5) ok = rag_with_adapter(client, argv[2], argv[4]);
    std::cout << (ok ? "OK" : "FAILED") << "\n";
    return ok ? 0 : 1;
  } catch (const std::exception &e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
