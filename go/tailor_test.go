package tailor

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// The daemon under test: TAILOR_SOCKET, TAILOR_TEST_MODEL (a generate
// stage) and TAILOR_TEST_EMBED (an embed stage); ffi/tests/consumers.rs
// starts tailord and sets them.
func setup(t *testing.T) (*Client, string, string) {
	socket, model, embed := os.Getenv("TAILOR_SOCKET"), os.Getenv("TAILOR_TEST_MODEL"), os.Getenv("TAILOR_TEST_EMBED")
	if socket == "" || model == "" || embed == "" {
		t.Fatal("set TAILOR_SOCKET, TAILOR_TEST_MODEL and TAILOR_TEST_EMBED to a running tailord's socket and stages")
	}
	client, err := Open(context.Background(), socket, "")
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return client, model, embed
}

func TestStreamedChat(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	var pieces []string
	answer, err := client.Chat(ctx, model, []Message{{"system", "You are a helpful assistant."}, {"user", "What is the capital of France?"}},
		&Options{MaxTokens: 24}, func(piece string) bool { pieces = append(pieces, piece); return true })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chat (%d pieces): %s", len(pieces), answer.Text)
	if len(pieces) == 0 || strings.Join(pieces, "") != answer.Text || !strings.Contains(answer.Text, "Paris") {
		t.Fatalf("streamed %q, answer %q", pieces, answer.Text)
	}
	whole, err := client.Chat(ctx, model, []Message{{"system", "You are a helpful assistant."}, {"user", "What is the capital of France?"}},
		&Options{MaxTokens: 24}, nil)
	if err != nil || whole.Text != answer.Text {
		t.Fatalf("greedy answers differ: %q vs %q (%v)", whole.Text, answer.Text, err)
	}
}

func TestStopStringsAndJSONSchema(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	stopped, err := client.Generate(ctx, model, "1, 2, 3, 4,", &Options{MaxTokens: 20, Stop: []string{" 7"}}, nil)
	if err != nil || strings.Contains(stopped.Text, "7") || !strings.Contains(stopped.Text, "6") || stopped.FinishReason != "stop" {
		t.Fatalf("stop \" 7\": %+v (%v)", stopped, err)
	}
	schema := `{"type":"object","properties":{"name":{"type":"string","maxLength":30},"kind":{"enum":["cat","dog"]},"age":{"type":"integer"}}}`
	answer, err := client.Chat(ctx, model, []Message{{"user", "Describe a pet as JSON."}},
		&Options{MaxTokens: 80, Temperature: 0.7, Seed: SeedOf(4), JSONSchema: schema}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var pet struct {
		Name string `json:"name"`
		Kind string `json:"kind"`
		Age  int    `json:"age"`
	}
	if err := json.Unmarshal([]byte(answer.Text), &pet); err != nil || (pet.Kind != "cat" && pet.Kind != "dog") {
		t.Fatalf("schema answer %q: %+v (%v)", answer.Text, pet, err)
	}
	t.Logf("stopped: %q; JSON: %s", stopped.Text, answer.Text)
}

func TestCancelStopsTheStream(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	seen := 0
	partial, err := client.Generate(ctx, model, "Once upon a time", &Options{MaxTokens: 40}, func(string) bool { seen++; return seen < 3 })
	var e *Error
	if !errors.As(err, &e) || e.Status != Cancelled || seen != 3 {
		t.Fatalf("want Cancelled after 3 pieces, got %v after %d", err, seen)
	}
	if partial == nil || partial.FinishReason != "cancelled" || partial.Text == "" {
		t.Fatalf("the answer so far comes back with the error: %+v", partial)
	}
}

func TestContextDeadlineAndCancellation(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	pieces := 0
	counting := func(string) bool { pieces++; return true }
	deadline, stop := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer stop()
	started := time.Now()
	partial, err := client.Generate(deadline, model, "1, 2, 3, 4,", &Options{MaxTokens: 2000}, counting)
	var e *Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &e) || e.Status != Timeout {
		t.Fatalf("want the deadline, got %v", err)
	}
	if elapsed := time.Since(started); elapsed > 2*time.Second || partial == nil || partial.FinishReason != "timeout" || pieces == 0 {
		t.Fatalf("after %v: %+v (%d pieces)", elapsed, partial, pieces)
	}
	cancellable, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	started = time.Now()
	answer, err := client.Generate(cancellable, model, "1, 2, 3, 4,", &Options{MaxTokens: 2000}, nil)
	if !errors.Is(err, context.Canceled) || answer != nil || time.Since(started) > 2*time.Second {
		t.Fatalf("want cancelled soon after 300 ms, got %v after %v", err, time.Since(started))
	}
	if _, err := client.Models(cancellable); !errors.Is(err, context.Canceled) {
		t.Fatalf("a done context fails at once: %v", err)
	}
	t.Logf("deadline: %d pieces before it; cancel: %v", pieces, err)
}

func TestChoicesLogprobsTokensAndZeroOptions(t *testing.T) {
	client, model, embed := setup(t)
	defer client.Close()
	ctx := context.Background()
	answer, err := client.Generate(ctx, model, "The capital of France is", &Options{MaxTokens: 4, Logprobs: true, TopLogprobs: 3}, nil)
	if err != nil || len(answer.Choices) != 1 || len(answer.Choices[0].Logprobs) != 4 {
		t.Fatalf("logprobs: %+v (%v)", answer, err)
	}
	joined := ""
	for _, token := range answer.Choices[0].Logprobs {
		if len(token.Top) != 3 || token.Top[0].Token != token.Token || token.Logprob > 0 || token.Top[0].Logprob < token.Top[1].Logprob {
			t.Fatalf("token %+v", token)
		}
		joined += token.Token
	}
	if joined != answer.Text {
		t.Fatalf("tokens %q, text %q", joined, answer.Text)
	}
	three, err := client.Generate(ctx, model, "My favourite animal is", &Options{MaxTokens: 10, Temperature: 1, Seed: SeedOf(3), N: 3}, nil)
	if err != nil || len(three.Choices) != 3 || three.Choices[0].Text != three.Text || three.Choices[1].Text == three.Choices[2].Text {
		t.Fatalf("n=3: %+v (%v)", three, err)
	}
	// The zero Options: a fresh seed per call, so sampled answers differ.
	first, err1 := client.Generate(ctx, model, "My favourite animal is", &Options{MaxTokens: 12, Temperature: 1}, nil)
	second, err2 := client.Generate(ctx, model, "My favourite animal is", &Options{MaxTokens: 12, Temperature: 1}, nil)
	if err1 != nil || err2 != nil || first.Text == second.Text {
		t.Fatalf("unseeded samples %q and %q (%v %v)", first.Text, second.Text, err1, err2)
	}
	ids, contextLength, err := client.Tokenize(ctx, model, "The capital of France is")
	if err != nil || len(ids) != answer.PromptTokens || contextLength != 8192 {
		t.Fatalf("tokenize: %v %d (%v), the answer counted %d", ids, contextLength, err, answer.PromptTokens)
	}
	models, err := client.Models(ctx)
	shapes := map[string]Model{}
	for _, m := range models {
		shapes[m.ID] = m
	}
	if err != nil || shapes[model].ContextLength != 8192 || shapes[embed].EmbeddingDim != 384 {
		t.Fatalf("models %+v (%v)", models, err)
	}
	t.Logf("n=3: %q | %q | %q", three.Choices[0].Text, three.Choices[1].Text, three.Choices[2].Text)
}

func TestIndexesListAndDrop(t *testing.T) {
	client, _, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	if err := client.CreateIndex(ctx, "kb-go-drop", "hnsw"); err != nil {
		t.Fatal(err)
	}
	indexes, err := client.Indexes(ctx)
	found := false
	for _, index := range indexes {
		found = found || (index.Name == "kb-go-drop" && index.Kind == "hnsw" && index.Dim == 384)
	}
	if err != nil || !found {
		t.Fatalf("indexes %+v (%v)", indexes, err)
	}
	if err := client.DropIndex(ctx, "kb-go-drop"); err != nil {
		t.Fatal(err)
	}
	var e *Error
	if err := client.DropIndex(ctx, "kb-go-drop"); !errors.As(err, &e) || e.Status != NotFound {
		t.Fatalf("dropping twice: %v", err)
	}
}

func TestEmbedTwoTexts(t *testing.T) {
	client, _, embed := setup(t)
	defer client.Close()
	ctx := context.Background()
	vectors, err := client.Embed(ctx, embed, []string{"The cat sat on the mat.", "A kitten rested on the rug."})
	if err != nil {
		t.Fatal(err)
	}
	if len(vectors) != 2 || len(vectors[0]) != 384 {
		t.Fatalf("got %d vectors", len(vectors))
	}
	var norm, cosine float64
	for i := range vectors[0] {
		norm += float64(vectors[0][i] * vectors[0][i])
		cosine += float64(vectors[0][i] * vectors[1][i])
	}
	t.Logf("cosine %.3f", cosine)
	if math.Abs(norm-1) > 1e-3 || cosine < 0.3 {
		t.Fatalf("norm %.4f cosine %.3f", norm, cosine)
	}
}

func TestRagAnswerWithSources(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	if err := client.CreateIndex(ctx, "kb-go", ""); err != nil {
		t.Fatal(err)
	}
	added, err := client.AddDocuments(ctx, "kb-go", []Document{
		{"bluebird", "Project Bluebird: the launch code of project Bluebird is 7421."},
		{"garden", "Tomatoes grow best in full sun with regular watering."},
		{"trains", "The night train to Vienna leaves at 22:10 from platform 4."},
	})
	if err != nil || added != 3 {
		t.Fatalf("added %d: %v", added, err)
	}
	answer, err := client.Chat(ctx, model, []Message{{"user", "What is the launch code of project Bluebird?"}},
		&Options{MaxTokens: 32, Index: "kb-go", K: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("answer: %s", answer.Text)
	for _, s := range answer.Sources {
		t.Logf("  [%d] %s (%.3f): %s", s.Number, s.DocID, s.Score, s.Text)
	}
	if len(answer.Sources) != 2 || answer.Sources[0].DocID != "bluebird" {
		t.Fatalf("sources %+v", answer.Sources)
	}
	hits, err := client.Search(ctx, "kb-go", "vegetables in the sun", 1)
	if err != nil || len(hits) != 1 || hits[0].DocID != "garden" {
		t.Fatalf("search: %+v %v", hits, err)
	}
	deleted, err := client.DeleteDocuments(ctx, "kb-go", []string{"garden"})
	documents, _, infoErr := client.IndexInfo(ctx, "kb-go")
	if err != nil || infoErr != nil || deleted != 1 || documents != 2 {
		t.Fatalf("deleted %d (%v), %d left (%v)", deleted, err, documents, infoErr)
	}
}

func TestFailuresAreClear(t *testing.T) {
	client, _, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	_, err := Open(ctx, "/nonexistent/tailord.sock", "")
	var e *Error
	if !errors.As(err, &e) || e.Status != Connect || !strings.Contains(e.Message, "/nonexistent/tailord.sock") {
		t.Fatalf("daemon down: %v", err)
	}
	t.Logf("daemon down: %v", err)
	_, err = client.Chat(ctx, "no-such-model", []Message{{"user", "Hello"}}, nil, nil)
	if !errors.As(err, &e) || e.Status != NotFound || !strings.Contains(e.Message, "no-such-model") {
		t.Fatalf("unknown model: %v", err)
	}
	t.Logf("unknown model: %v", err)
	models, err := client.Models(ctx)
	if err != nil || len(models) == 0 {
		t.Fatalf("models: %v %v", models, err)
	}
}

// TAILOR_TEST_ADAPTER is a PEFT adapter folder under the generate stage's
// adapter_dirs.
func TestAdaptersLoadAnswerAndUnload(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	folder := os.Getenv("TAILOR_TEST_ADAPTER")
	if folder == "" {
		t.Fatal("set TAILOR_TEST_ADAPTER to a PEFT adapter folder the daemon may load")
	}
	if err := client.LoadAdapter(ctx, "", "go-qv", folder); err != nil {
		t.Fatal(err)
	}
	adapters, err := client.Adapters(ctx)
	found := false
	for _, a := range adapters {
		found = found || (a.Name == "go-qv" && a.Model == model && a.Rank == 8)
	}
	if err != nil || !found {
		t.Fatalf("adapters %+v (%v)", adapters, err)
	}
	base, err := client.Generate(ctx, model, "The capital of France is", &Options{MaxTokens: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tuned, err := client.Generate(ctx, model, "The capital of France is", &Options{MaxTokens: 8, Adapter: "go-qv"}, nil)
	if err != nil || tuned.Text == base.Text {
		t.Fatalf("base %q, with the adapter %q (%v)", base.Text, tuned.Text, err)
	}
	t.Logf("base: %q; with the adapter: %q", base.Text, tuned.Text)
	// RAG for knowledge, LoRA for style: the same sources, with and without the adapter.
	if err := client.CreateIndex(ctx, "kb-go-adapter", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddDocuments(ctx, "kb-go-adapter", []Document{
		{"bluebird", "Project Bluebird: the launch code of project Bluebird is 7421."},
		{"garden", "Tomatoes grow best in full sun with regular watering."},
	}); err != nil {
		t.Fatal(err)
	}
	question := []Message{{"user", "What is the launch code of project Bluebird?"}}
	plain, err := client.Chat(ctx, model, question, &Options{MaxTokens: 16, Index: "kb-go-adapter", K: 2}, nil)
	if err != nil {
		t.Fatal(err)
	}
	styled, err := client.Chat(ctx, model, question, &Options{MaxTokens: 16, Index: "kb-go-adapter", K: 2, Adapter: "go-qv"}, nil)
	if err != nil || len(styled.Sources) != 2 || styled.Sources[0].DocID != plain.Sources[0].DocID {
		t.Fatalf("RAG with the adapter: %+v (%v), without: %+v", styled, err, plain.Sources)
	}
	t.Logf("RAG + adapter: %q (sources %s, %s)", styled.Text, styled.Sources[0].DocID, styled.Sources[1].DocID)
	if err := client.UnloadAdapter(ctx, "", "go-qv"); err != nil {
		t.Fatal(err)
	}
	_, err = client.Chat(ctx, model, []Message{{"user", "Hi"}}, &Options{Adapter: "go-qv"}, nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != NotFound {
		t.Fatalf("unloaded adapter: %v", err)
	}
}

// TAILOR_TEST_TRAINING is a JSONL training file under the generate stage's
// data_dirs (its config sets jobs_dir).
func TestFineTuneStartFollowAndServe(t *testing.T) {
	client, model, _ := setup(t)
	defer client.Close()
	ctx := context.Background()
	file := os.Getenv("TAILOR_TEST_TRAINING")
	if file == "" {
		t.Fatal("set TAILOR_TEST_TRAINING to a JSONL file under the generate stage's data_dirs")
	}
	var e *Error
	if _, err := client.StartFineTune(ctx, model, file, FineTuneOptions{Method: "dora"}); !errors.As(err, &e) || e.Status != BadRequest {
		t.Fatalf("an unknown method: %v", err)
	}
	options := FineTuneOptions{Suffix: "go", Method: "lora", Epochs: 1, BatchSize: 2, Rank: 2}
	job, err := client.StartFineTune(ctx, model, file, options)
	if err != nil {
		t.Fatal(err)
	}
	for tries := 0; job.Status == "queued" || job.Status == "running"; tries++ {
		if tries > 1200 {
			t.Fatalf("job stuck: %+v", job)
		}
		time.Sleep(100 * time.Millisecond)
		if job, err = client.FineTuneStatus(ctx, job.ID); err != nil {
			t.Fatal(err)
		}
	}
	if job.Status != "succeeded" || !strings.Contains(job.Model, ":go-") || job.Result != "" {
		t.Fatalf("job ended %+v", job)
	}
	events, err := client.FineTuneEvents(ctx, job.ID)
	if err != nil || len(events) != 2 || events[1].Step != 2 || math.IsNaN(events[1].Loss) {
		t.Fatalf("events %+v (%v)", events, err)
	}
	t.Logf("job %s: loss %.3f then %.3f; serving %s", job.ID, events[0].Loss, events[1].Loss, job.Model)
	if _, err := client.Generate(ctx, job.Model, "Hello", &Options{MaxTokens: 4}, nil); err != nil {
		t.Fatal(err)
	}
	if err := client.CancelFineTune(ctx, job.ID); !errors.As(err, &e) || e.Status != BadRequest {
		t.Fatalf("cancelling a finished job: %v", err)
	}
	if _, err := client.FineTuneStatus(ctx, "ftjob-none"); !errors.As(err, &e) || e.Status != NotFound {
		t.Fatalf("unknown job: %v", err)
	}
}
