// Package tailor is the Go binding of libtailor (include/tailor.h): a
// client of a running tailord for chat and completion with streaming,
// embeddings, retrieval and document management.
//
// Build: cgo finds libtailor through pkg-config (`tailor.pc`). A Client may
// be shared between goroutines. Each call pins its goroutine to its OS
// thread until it has read tailor_last_error, which is per thread.
//
// Every call takes a context.Context: its deadline bounds the whole call
// and cancelling it stops the call (within about 50 ms) and the daemon's
// work on it; the error then wraps ctx.Err(), so errors.Is(err,
// context.DeadlineExceeded) and errors.Is(err, context.Canceled) work.
package tailor

/*
#cgo pkg-config: tailor
#include <stdlib.h>
#include <tailor.h>

int tailor_go_relay(const char *text, size_t len, void *user_data);
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// Status is a tailor_status value.
type Status int

// Every status tailor.h names.
const (
	OK              Status = C.TAILOR_OK
	InvalidArgument Status = C.TAILOR_ERR_INVALID_ARGUMENT
	Connect         Status = C.TAILOR_ERR_CONNECT
	Unauthorized    Status = C.TAILOR_ERR_UNAUTHORIZED
	NotFound        Status = C.TAILOR_ERR_NOT_FOUND
	BadRequest      Status = C.TAILOR_ERR_BAD_REQUEST
	TooLarge        Status = C.TAILOR_ERR_TOO_LARGE
	Unavailable     Status = C.TAILOR_ERR_UNAVAILABLE
	Server          Status = C.TAILOR_ERR_SERVER
	Protocol        Status = C.TAILOR_ERR_PROTOCOL
	IO              Status = C.TAILOR_ERR_IO
	Cancelled       Status = C.TAILOR_ERR_CANCELLED
	Internal        Status = C.TAILOR_ERR_INTERNAL
	Conflict        Status = C.TAILOR_ERR_CONFLICT
	Timeout         Status = C.TAILOR_ERR_TIMEOUT
)

func (s Status) String() string { return C.GoString(C.tailor_status_name(C.int(s))) }

// Error is a failed call: its status and libtailor's message, and the
// context's error when the context ended the call.
type Error struct {
	Status  Status
	Message string
	cause   error
}

func (e *Error) Error() string { return fmt.Sprintf("%v: %s", e.Status, e.Message) }

// Unwrap gives the context's error when the context ended the call.
func (e *Error) Unwrap() error { return e.cause }

// call runs one C call on a pinned OS thread and turns a failure into *Error.
func call(f func() C.tailor_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status := f()
	if status == C.TAILOR_OK {
		return nil
	}
	return &Error{Status: Status(status), Message: C.GoString(C.tailor_last_error())}
}

// Version is libtailor's version.
func Version() string { return C.GoString(C.tailor_version()) }

// Client is an open connection setting for one tailord.
type Client struct {
	handle *C.tailor_client
}

// Open connects over tailord's Unix socket ("" takes $TAILOR_SOCKET or
// /run/tailor/tailord.sock), with an optional bearer token, and checks
// that the daemon answers (and takes the token).
func Open(ctx context.Context, socketPath, token string) (*Client, error) {
	return openWithin(ctx, socketPath, "", token)
}

// OpenTCP connects to tailord's HTTP listener at "host:port".
func OpenTCP(ctx context.Context, address, token string) (*Client, error) {
	return openWithin(ctx, "", address, token)
}

// openWithin opens on a goroutine of its own, so ctx can end the wait; a
// client that opens after ctx ended is closed there.
func openWithin(ctx context.Context, socketPath, address, token string) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type opened struct {
		client *Client
		err    error
	}
	result := make(chan opened, 1)
	abandoned := make(chan struct{})
	go func() {
		client, err := open(socketPath, address, token)
		select {
		case result <- opened{client, err}:
		case <-abandoned:
			if client != nil {
				client.Close()
			}
		}
	}()
	select {
	case r := <-result:
		return r.client, r.err
	case <-ctx.Done():
		close(abandoned)
		// The opener may have finished just now: take its client back to close it.
		select {
		case r := <-result:
			if r.client != nil {
				r.client.Close()
			}
		default:
		}
		return nil, ctx.Err()
	}
}

func open(socketPath, address, token string) (*Client, error) {
	var strings cStrings
	defer strings.free()
	params := C.tailor_client_default_params()
	if socketPath != "" {
		params.socket_path = strings.add(socketPath)
	}
	if address != "" {
		params.address = strings.add(address)
	}
	if token != "" {
		params.token = strings.add(token)
	}
	client := &Client{}
	err := call(func() C.tailor_status { return C.tailor_client_open(&params, &client.handle) })
	if err != nil {
		return nil, err
	}
	return client, nil
}

// Close frees the client.
func (c *Client) Close() {
	C.tailor_client_close(c.handle)
	c.handle = nil
}

// do runs one C call on a client bound to ctx: a derived client whose
// calls end at ctx's deadline, with a cancel token raised when ctx is
// done. A context that can neither expire nor be cancelled uses c as is.
func (c *Client) do(ctx context.Context, f func(*C.tailor_client) C.tailor_status) error {
	if err := ctx.Err(); err != nil {
		return &Error{Status: Cancelled, Message: err.Error(), cause: err}
	}
	deadline, bounded := ctx.Deadline()
	if !bounded && ctx.Done() == nil {
		return call(func() C.tailor_status { return f(c.handle) })
	}
	var timeoutMs C.uint32_t
	if bounded {
		left := time.Until(deadline)
		if left <= 0 {
			return &Error{Status: Timeout, Message: "the context's deadline passed", cause: context.DeadlineExceeded}
		}
		timeoutMs = C.uint32_t(math.MaxUint32)
		if ms := (left + time.Millisecond - 1) / time.Millisecond; ms < math.MaxUint32 {
			timeoutMs = C.uint32_t(ms) // at least 1: left > 0 rounds up
		}
	}
	cancel := C.tailor_cancel_new()
	defer C.tailor_cancel_free(cancel)
	var derived *C.tailor_client
	if err := call(func() C.tailor_status { return C.tailor_client_derive(c.handle, timeoutMs, cancel, &derived) }); err != nil {
		return err
	}
	defer C.tailor_client_close(derived)
	finished, watcherDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watcherDone)
		select {
		case <-ctx.Done():
			// At the deadline libtailor's own bound (the same instant,
			// rounded up to a millisecond) ends the call as a timeout.
			if ctx.Err() != context.DeadlineExceeded {
				C.tailor_cancel_trigger(cancel)
			}
		case <-finished:
		}
	}()
	err := call(func() C.tailor_status { return f(derived) })
	close(finished)
	<-watcherDone
	if e, ok := err.(*Error); ok && (e.Status == Cancelled || e.Status == Timeout) && ctx.Err() != nil {
		e.cause = ctx.Err()
	}
	return err
}

// cStrings owns C copies of Go strings for the length of a call.
type cStrings []*C.char

func (s *cStrings) add(text string) *C.char {
	p := C.CString(text)
	*s = append(*s, p)
	return p
}

func (s *cStrings) free() {
	for _, p := range *s {
		C.free(unsafe.Pointer(p))
	}
}

// Model is one of the daemon's stages, or an adapter.
type Model struct {
	ID, Kind string
	// Tokens of context of a generate stage, per text of an embed stage; 0 otherwise.
	ContextLength int
	// Floats per embedding of an embed stage; 0 otherwise.
	EmbeddingDim int
}

// Models lists the daemon's stages and adapters.
func (c *Client) Models(ctx context.Context) ([]Model, error) {
	var list *C.tailor_models
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_models_list(h, &list) }); err != nil {
		return nil, err
	}
	defer C.tailor_models_free(list)
	models := make([]Model, int(C.tailor_models_count(list)))
	for i := range models {
		at := C.size_t(i)
		models[i] = Model{ID: C.GoString(C.tailor_models_id(list, at)), Kind: C.GoString(C.tailor_models_kind(list, at)),
			ContextLength: int(C.tailor_models_context_length(list, at)), EmbeddingDim: int(C.tailor_models_embedding_dim(list, at))}
	}
	return models, nil
}

// Tokenize returns the token ids a generation of prompt on generate stage
// model starts from, and the model's context length.
func (c *Client) Tokenize(ctx context.Context, model, prompt string) (ids []uint32, contextLength int, err error) {
	var strings cStrings
	defer strings.free()
	cModel, cPrompt := strings.add(model), strings.add(prompt)
	var tokens *C.tailor_tokens
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_tokenize(h, cModel, cPrompt, &tokens) }); err != nil {
		return nil, 0, err
	}
	defer C.tailor_tokens_free(tokens)
	if n := int(C.tailor_tokens_count(tokens)); n > 0 {
		ids = append([]uint32(nil), unsafe.Slice((*uint32)(unsafe.Pointer(C.tailor_tokens_ids(tokens))), n)...)
	}
	return ids, int(C.tailor_tokens_context_length(tokens)), nil
}

// Message is one chat turn.
type Message struct {
	Role, Content string
}

// Options are sampling, output and RAG settings. A nil *Options and the
// zero value both mean the defaults: greedy, the daemon's max_tokens, a
// fresh seed, one choice, no log-probabilities.
type Options struct {
	MaxTokens    int
	Temperature  float32
	TopP         float32 // 0 means 1
	TopK         int
	Seed         *int64 // nil: a fresh random seed per call (see SeedOf)
	Index        string // RAG index for Chat; "" is off
	K            int
	Adapter      string  // a loaded LoRA adapter; "" is the base model
	AdapterScale float32 // 0 means 1
	// API 1.3: the answer ends before the first of these (up to 4) to appear.
	Stop             []string
	PresencePenalty  float32 // -2..2
	FrequencyPenalty float32 // -2..2
	// JSON output: a JSON schema the answer validates against, "object" for
	// any JSON object; "" is free text.
	JSONSchema string
	// API 1.4: generations of the prompt (0 means 1); more than 1 does not stream.
	N int
	// API 1.4: each token's log-probability, and TopLogprobs (0..20) alternatives.
	Logprobs    bool
	TopLogprobs int
}

// SeedOf is a seed for Options.Seed.
func SeedOf(seed int64) *int64 { return &seed }

// outputOf fills the API 1.3 output options; the stop list lives in C
// memory (block, to be freed by the caller) and its strings in strings.
func outputOf(o Options, strings *cStrings) (output C.tailor_output_options, block unsafe.Pointer) {
	if len(o.Stop) > 0 {
		block = C.malloc(C.size_t(len(o.Stop)) * C.size_t(unsafe.Sizeof((*C.char)(nil))))
		raw := unsafe.Slice((**C.char)(block), len(o.Stop))
		for i, stop := range o.Stop {
			raw[i] = strings.add(stop)
		}
		output.stop, output.n_stop = (**C.char)(block), C.size_t(len(o.Stop))
	}
	output.presence_penalty, output.frequency_penalty = C.float(o.PresencePenalty), C.float(o.FrequencyPenalty)
	if o.JSONSchema != "" {
		output.json_schema = strings.add(o.JSONSchema)
	}
	return output, block
}

// Source is a retrieved passage.
type Source struct {
	Number             int
	Score              float32
	DocID, Origin      string
	Text               string
	SpanStart, SpanEnd int
}

// Answer is a finished generation. Text and FinishReason are the first
// choice's.
type Answer struct {
	Text, FinishReason             string
	PromptTokens, CompletionTokens int
	Sources                        []Source
	Choices                        []Choice // API 1.4: Options.N of them
}

// Choice is one generation of the prompt.
type Choice struct {
	Text, FinishReason string
	Logprobs           []TokenLogprob // with Options.Logprobs
}

// TokenLogprob is a generated token's natural log-probability and its most
// likely alternatives, most likely first.
type TokenLogprob struct {
	Token   string
	Logprob float64
	Top     []TopLogprob
}

// TopLogprob is a token that could have come instead.
type TopLogprob struct {
	Token   string
	Logprob float64
}

// TokenFunc receives each piece of streamed text; returning false stops the
// generation: the call then fails with status Cancelled and returns the
// answer so far (finish reason "cancelled") with the error.
type TokenFunc func(piece string) bool

//export goTokenRelay
func goTokenRelay(text *C.char, length C.size_t, userData unsafe.Pointer) C.int {
	handle := cgo.Handle(*(*C.uintptr_t)(userData))
	if handle.Value().(TokenFunc)(C.GoStringN(text, C.int(length))) {
		return 0
	}
	return 1
}

// relay is a C block holding a cgo.Handle to a TokenFunc, for user_data.
type relay struct {
	block  unsafe.Pointer
	handle cgo.Handle
}

func newRelay(f TokenFunc) *relay {
	if f == nil {
		return nil
	}
	r := &relay{block: C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0)))), handle: cgo.NewHandle(f)}
	*(*C.uintptr_t)(r.block) = C.uintptr_t(r.handle)
	return r
}

func (r *relay) free() {
	if r != nil {
		r.handle.Delete()
		C.free(r.block)
	}
}

func sourcesOf(list *C.tailor_sources) []Source {
	sources := make([]Source, int(C.tailor_sources_count(list)))
	for i := range sources {
		s := C.tailor_sources_get(list, C.size_t(i))
		sources[i] = Source{int(s.number), float32(s.score), C.GoString(s.doc_id), C.GoString(s.source),
			C.GoString(s.text), int(s.span_start), int(s.span_end)}
	}
	return sources
}

// answerOf copies an answer out of C and frees it; nil for none.
func answerOf(a *C.tailor_answer) *Answer {
	if a == nil {
		return nil
	}
	defer C.tailor_answer_free(a)
	answer := &Answer{
		Text:             C.GoString(C.tailor_answer_text(a)),
		FinishReason:     C.GoString(C.tailor_answer_finish_reason(a)),
		PromptTokens:     int(C.tailor_answer_prompt_tokens(a)),
		CompletionTokens: int(C.tailor_answer_completion_tokens(a)),
		Sources:          sourcesOf(C.tailor_answer_sources(a)),
		Choices:          make([]Choice, int(C.tailor_answer_choices_count(a))),
	}
	for i := range answer.Choices {
		at := C.size_t(i)
		choice := &answer.Choices[i]
		choice.Text = C.GoString(C.tailor_answer_choice_text(a, at))
		choice.FinishReason = C.GoString(C.tailor_answer_choice_finish_reason(a, at))
		for j := 0; j < int(C.tailor_answer_logprobs_count(a, at)); j++ {
			t := C.tailor_answer_logprob(a, at, C.size_t(j))
			entry := TokenLogprob{Token: C.GoString(t.token), Logprob: float64(t.logprob)}
			if t.n_top > 0 {
				for _, alt := range unsafe.Slice(t.top, int(t.n_top)) {
					entry.Top = append(entry.Top, TopLogprob{C.GoString(alt.token), float64(alt.logprob)})
				}
			}
			choice.Logprobs = append(choice.Logprobs, entry)
		}
	}
	return answer
}

// withDefaults is opts with its zero fields replaced by tailor.h's defaults.
func withDefaults(opts *Options) Options {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.TopP == 0 {
		o.TopP = 1
	}
	return o
}

// seedOf is tailor.h's seed field for o (-1: none).
func seedOf(o Options) C.int64_t {
	if o.Seed == nil {
		return -1
	}
	return C.int64_t(*o.Seed)
}

// logprobsOf is tailor.h's logprobs field for o (-1: none).
func logprobsOf(o Options) C.int32_t {
	if !o.Logprobs {
		return -1
	}
	return C.int32_t(o.TopLogprobs)
}

// Chat answers a conversation; with onToken, the text streams through it
// first. A stream cut short (onToken, ctx, the daemon failing) returns the
// answer so far together with the error.
func (c *Client) Chat(ctx context.Context, model string, messages []Message, opts *Options, onToken TokenFunc) (*Answer, error) {
	o := withDefaults(opts)
	var strings cStrings
	defer strings.free()
	block := C.malloc(C.size_t(len(messages)+1) * C.size_t(unsafe.Sizeof(C.tailor_message{})))
	defer C.free(block)
	raw := unsafe.Slice((*C.tailor_message)(block), len(messages)+1)
	for i, m := range messages {
		raw[i] = C.tailor_message{role: strings.add(m.Role), content: strings.add(m.Content)}
	}
	params := C.tailor_chat_default_params()
	params.model = strings.add(model)
	params.messages = &raw[0]
	params.n_messages = C.size_t(len(messages))
	params.max_tokens, params.temperature, params.top_p = C.int32_t(o.MaxTokens), C.float(o.Temperature), C.float(o.TopP)
	params.top_k, params.seed, params.k = C.int32_t(o.TopK), seedOf(o), C.uint32_t(o.K)
	params.n, params.logprobs = C.uint32_t(o.N), logprobsOf(o)
	if o.Index != "" {
		params.index = strings.add(o.Index)
	}
	if o.Adapter != "" {
		params.adapter = strings.add(o.Adapter)
	}
	params.adapter_scale = C.float(o.AdapterScale)
	output, stops := outputOf(o, &strings)
	defer C.free(stops)
	params.output = output
	r := newRelay(onToken)
	defer r.free()
	if r != nil {
		params.on_token, params.user_data = C.tailor_token_fn(C.tailor_go_relay), r.block
	}
	var answer *C.tailor_answer
	err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_chat(h, &params, &answer) })
	return answerOf(answer), err
}

// Generate completes a prompt as is (no chat template); a stream cut short
// returns the answer so far together with the error, as Chat does.
func (c *Client) Generate(ctx context.Context, model, prompt string, opts *Options, onToken TokenFunc) (*Answer, error) {
	o := withDefaults(opts)
	var strings cStrings
	defer strings.free()
	params := C.tailor_generate_default_params()
	params.model, params.prompt = strings.add(model), strings.add(prompt)
	params.max_tokens, params.temperature, params.top_p = C.int32_t(o.MaxTokens), C.float(o.Temperature), C.float(o.TopP)
	params.top_k, params.seed = C.int32_t(o.TopK), seedOf(o)
	params.n, params.logprobs = C.uint32_t(o.N), logprobsOf(o)
	if o.Adapter != "" {
		params.adapter = strings.add(o.Adapter)
	}
	params.adapter_scale = C.float(o.AdapterScale)
	output, stops := outputOf(o, &strings)
	defer C.free(stops)
	params.output = output
	r := newRelay(onToken)
	defer r.free()
	if r != nil {
		params.on_token, params.user_data = C.tailor_token_fn(C.tailor_go_relay), r.block
	}
	var answer *C.tailor_answer
	err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_generate(h, &params, &answer) })
	return answerOf(answer), err
}

// cArray copies Go strings into a C array of C strings owned by `strings`.
func cArray(strings *cStrings, texts []string) (**C.char, func()) {
	block := C.malloc(C.size_t(len(texts)+1) * C.size_t(unsafe.Sizeof((*C.char)(nil))))
	raw := unsafe.Slice((**C.char)(block), len(texts)+1)
	for i, t := range texts {
		raw[i] = strings.add(t)
	}
	return &raw[0], func() { C.free(block) }
}

// Embed returns one vector per text.
func (c *Client) Embed(ctx context.Context, model string, texts []string) ([][]float32, error) {
	var strings cStrings
	defer strings.free()
	array, release := cArray(&strings, texts)
	defer release()
	cModel := strings.add(model)
	var e *C.tailor_embeddings
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status {
		return C.tailor_embed(h, cModel, array, C.size_t(len(texts)), &e)
	}); err != nil {
		return nil, err
	}
	defer C.tailor_embeddings_free(e)
	dim := int(C.tailor_embeddings_dim(e))
	vectors := make([][]float32, int(C.tailor_embeddings_count(e)))
	for i := range vectors {
		row := unsafe.Slice((*float32)(unsafe.Pointer(C.tailor_embeddings_vector(e, C.size_t(i)))), dim)
		vectors[i] = append([]float32(nil), row...)
	}
	return vectors, nil
}

// Search returns the k passages of index nearest to query (k 0: 4).
func (c *Client) Search(ctx context.Context, index, query string, k int) ([]Source, error) {
	var strings cStrings
	defer strings.free()
	params := C.tailor_search_default_params()
	params.index, params.query, params.k = strings.add(index), strings.add(query), C.uint32_t(k)
	var list *C.tailor_sources
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_search(h, &params, &list) }); err != nil {
		return nil, err
	}
	defer C.tailor_sources_free(list)
	return sourcesOf(list), nil
}

// CreateIndex creates an index of kind "flat" or "hnsw" ("" is flat).
func (c *Client) CreateIndex(ctx context.Context, name, kind string) error {
	var strings cStrings
	defer strings.free()
	cName, cKind := strings.add(name), (*C.char)(nil)
	if kind != "" {
		cKind = strings.add(kind)
	}
	return c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_index_create(h, cName, cKind) })
}

// Index is an index as the daemon lists it.
type Index struct {
	Name, Kind string // Kind: "flat" or "hnsw"
	Dim        int
}

// Indexes lists the indexes of the daemon's index stage.
func (c *Client) Indexes(ctx context.Context) ([]Index, error) {
	var list *C.tailor_indexes
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_indexes_list(h, &list) }); err != nil {
		return nil, err
	}
	defer C.tailor_indexes_free(list)
	indexes := make([]Index, int(C.tailor_indexes_count(list)))
	for i := range indexes {
		at := C.size_t(i)
		indexes[i] = Index{C.GoString(C.tailor_indexes_name(list, at)), C.GoString(C.tailor_indexes_kind(list, at)),
			int(C.tailor_indexes_dim(list, at))}
	}
	return indexes, nil
}

// DropIndex deletes an index with all its documents.
func (c *Client) DropIndex(ctx context.Context, name string) error {
	var strings cStrings
	defer strings.free()
	cName := strings.add(name)
	return c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_index_drop(h, cName) })
}

// Document is a text to index under an id.
type Document struct {
	ID, Text string
}

// AddDocuments indexes documents; returns how many were new or changed.
func (c *Client) AddDocuments(ctx context.Context, index string, docs []Document) (int, error) {
	var strings cStrings
	defer strings.free()
	block := C.malloc(C.size_t(len(docs)+1) * C.size_t(unsafe.Sizeof(C.tailor_document{})))
	defer C.free(block)
	raw := unsafe.Slice((*C.tailor_document)(block), len(docs)+1)
	for i, d := range docs {
		raw[i] = C.tailor_document{id: strings.add(d.ID), text: strings.add(d.Text)}
	}
	cIndex := strings.add(index)
	var added C.size_t
	err := c.do(ctx, func(h *C.tailor_client) C.tailor_status {
		return C.tailor_index_add(h, cIndex, &raw[0], C.size_t(len(docs)), &added)
	})
	return int(added), err
}

// DeleteDocuments deletes documents by id or source; returns how many went.
func (c *Client) DeleteDocuments(ctx context.Context, index string, ids []string) (int, error) {
	var strings cStrings
	defer strings.free()
	array, release := cArray(&strings, ids)
	defer release()
	cIndex := strings.add(index)
	var deleted C.size_t
	err := c.do(ctx, func(h *C.tailor_client) C.tailor_status {
		return C.tailor_index_delete(h, cIndex, array, C.size_t(len(ids)), &deleted)
	})
	return int(deleted), err
}

// IndexInfo returns the counts of documents and chunks in an index.
func (c *Client) IndexInfo(ctx context.Context, index string) (documents, chunks int, err error) {
	var strings cStrings
	defer strings.free()
	cIndex := strings.add(index)
	var d, k C.size_t
	err = c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_index_info(h, cIndex, &d, &k) })
	return int(d), int(k), err
}

// Adapter is a LoRA adapter as the daemon lists it.
type Adapter struct {
	Name, Model string // Model: the generate stage it belongs to
	Rank        int
}

// optional returns NULL for "" and a C copy otherwise.
func (s *cStrings) optional(text string) *C.char {
	if text == "" {
		return nil
	}
	return s.add(text)
}

// LoadAdapter loads the PEFT adapter folder path (on the daemon's machine,
// under the stage's adapter_dirs) as name on generate stage model ("" is the
// first).
func (c *Client) LoadAdapter(ctx context.Context, model, name, path string) error {
	var strings cStrings
	defer strings.free()
	cModel, cName, cPath := strings.optional(model), strings.add(name), strings.add(path)
	return c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_adapter_load(h, cModel, cName, cPath) })
}

// UnloadAdapter unloads adapter name; requests using it finish first.
func (c *Client) UnloadAdapter(ctx context.Context, model, name string) error {
	var strings cStrings
	defer strings.free()
	cModel, cName := strings.optional(model), strings.add(name)
	return c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_adapter_unload(h, cModel, cName) })
}

// Adapters lists the adapters of every generate stage.
func (c *Client) Adapters(ctx context.Context) ([]Adapter, error) {
	var list *C.tailor_adapters
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_adapters_list(h, &list) }); err != nil {
		return nil, err
	}
	defer C.tailor_adapters_free(list)
	adapters := make([]Adapter, int(C.tailor_adapters_count(list)))
	for i := range adapters {
		at := C.size_t(i)
		adapters[i] = Adapter{C.GoString(C.tailor_adapters_name(list, at)), C.GoString(C.tailor_adapters_model(list, at)),
			int(C.tailor_adapters_rank(list, at))}
	}
	return adapters, nil
}

// FineTuneOptions are a fine-tuning job's settings; the zero value means
// the daemon's defaults (Seed nil: none given).
type FineTuneOptions struct {
	ValidationFile, Suffix  string
	Method                  string // "lora" ("": the default), "qlora" or "full" (API 1.5)
	Epochs, BatchSize, Rank int
	LearningRateMultiplier  float32
	Seed                    *int64
}

// FineTuneJob is a fine-tuning job's state.
type FineTuneJob struct {
	ID, Status string // Status: queued, running, succeeded, failed, cancelled
	Model      string // once succeeded: the trained model's name ("stage:adapter")
	Error      string // once failed: why
	Result     string // once a full fine-tune succeeded: its Hugging Face folder (API 1.5)
}

// FineTuneEvent is one step of a job's log (NaN: not measured then).
type FineTuneEvent struct {
	Step           int
	Loss, EvalLoss float64
}

// StartFineTune starts a LoRA fine-tuning job on generate stage model's base,
// on trainingFile (a JSONL path on the daemon's machine, under the stage's
// data_dirs), and returns its first state.
func (c *Client) StartFineTune(ctx context.Context, model, trainingFile string, o FineTuneOptions) (FineTuneJob, error) {
	var strings cStrings
	defer strings.free()
	params := C.tailor_fine_tune_default_params()
	params.model = strings.add(model)
	params.training_file = strings.add(trainingFile)
	params.validation_file = strings.optional(o.ValidationFile)
	params.suffix = strings.optional(o.Suffix)
	params.method = strings.optional(o.Method)
	params.n_epochs = C.uint32_t(o.Epochs)
	params.batch_size = C.uint32_t(o.BatchSize)
	params.rank = C.uint32_t(o.Rank)
	params.learning_rate_multiplier = C.float(o.LearningRateMultiplier)
	params.seed = -1
	if o.Seed != nil {
		params.seed = C.int64_t(*o.Seed)
	}
	var job *C.tailor_fine_tune_job
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_fine_tune_start(h, &params, &job) }); err != nil {
		return FineTuneJob{}, err
	}
	defer C.tailor_fine_tune_job_free(job)
	return jobOf(job), nil
}

// FineTuneStatus returns the current state of job id.
func (c *Client) FineTuneStatus(ctx context.Context, id string) (FineTuneJob, error) {
	var strings cStrings
	defer strings.free()
	cID := strings.add(id)
	var job *C.tailor_fine_tune_job
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_fine_tune_get(h, cID, &job) }); err != nil {
		return FineTuneJob{}, err
	}
	defer C.tailor_fine_tune_job_free(job)
	return jobOf(job), nil
}

// FineTuneEvents returns job id's log, step by step.
func (c *Client) FineTuneEvents(ctx context.Context, id string) ([]FineTuneEvent, error) {
	var strings cStrings
	defer strings.free()
	cID := strings.add(id)
	var events *C.tailor_fine_tune_events
	if err := c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_fine_tune_events_get(h, cID, &events) }); err != nil {
		return nil, err
	}
	defer C.tailor_fine_tune_events_free(events)
	out := make([]FineTuneEvent, int(C.tailor_fine_tune_events_count(events)))
	for i := range out {
		at := C.size_t(i)
		out[i] = FineTuneEvent{int(C.tailor_fine_tune_events_step(events, at)),
			float64(C.tailor_fine_tune_events_loss(events, at)), float64(C.tailor_fine_tune_events_eval_loss(events, at))}
	}
	return out, nil
}

// CancelFineTune asks job id to stop.
func (c *Client) CancelFineTune(ctx context.Context, id string) error {
	var strings cStrings
	defer strings.free()
	cID := strings.add(id)
	return c.do(ctx, func(h *C.tailor_client) C.tailor_status { return C.tailor_fine_tune_cancel(h, cID) })
}

// jobOf copies a job state out of C.
func jobOf(job *C.tailor_fine_tune_job) FineTuneJob {
	optional := func(s *C.char) string {
		if s == nil {
			return ""
		}
		return C.GoString(s)
	}
	return FineTuneJob{C.GoString(C.tailor_fine_tune_job_id(job)), C.GoString(C.tailor_fine_tune_job_status(job)),
		optional(C.tailor_fine_tune_job_model(job)), optional(C.tailor_fine_tune_job_error(job)),
		optional(C.tailor_fine_tune_job_result(job))}
}
