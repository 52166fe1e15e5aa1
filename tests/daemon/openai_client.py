"""The official `openai` Python client against a running tailord.

  openai_client.py BASE_URL CHAT_MODEL EMBED_MODEL
Completes, streams and embeds, then checks the sampling and output fields
(stop, n, logprobs, seeds, penalties, content parts) and that unsupported
fields are refused by name; exits non-zero on the first mismatch.
"""
import math
import sys

import openai
from openai import OpenAI


def main(base_url: str, chat_model: str, embed_model: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="s3cret")
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=24, temperature=0)
    answer = reply.choices[0].message.content
    assert "Paris" in answer, answer
    assert reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=chat_model, messages=messages, max_tokens=24, temperature=0, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == answer, (streamed, answer)
    completion = client.completions.create(model=chat_model, prompt="The capital of France is", max_tokens=3)
    assert "Paris" in completion.choices[0].text, completion
    emb = client.embeddings.create(model=embed_model, input=["hello world", "bonjour"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    models = {m.id for m in client.models.list()}
    assert {chat_model, embed_model} <= models, models
    print(f"openai client: chat {answer!r}, stream equal, completion, 2 embeddings, models {sorted(models)}")
    check_stop(client, chat_model, messages)
    check_n_and_seeds(client, chat_model)
    check_logprobs(client, chat_model, messages)
    check_messages_and_refusals(client, chat_model)
    check_structured_output(client, chat_model)


def check_stop(client, model, messages):
    """`stop` ends the answer where the text first appears, also mid-stream."""
    free = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
    text = free.choices[0].message.content
    cut = text[2:7]  # "e cap": the end of one token and the start of the next
    stopped = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                             stop=["never-there", cut])
    assert stopped.choices[0].message.content == text[:text.index(cut)], (stopped, cut)
    assert stopped.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                            stop=cut, stream=True)
    chunks = [c for c in stream if c.choices]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text[:text.index(cut)], (streamed, cut)
    assert chunks[-1].choices[0].finish_reason == "stop"
    completion = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=20, stop=[" 7"])
    assert completion.choices[0].text.rstrip(",").endswith("6") and " 7" not in completion.choices[0].text, completion
    print(f"stop: {cut!r} cut {text!r} to {streamed!r} (also streamed); completion {completion.choices[0].text!r}")


def check_n_and_seeds(client, model):
    """n choices with distinct seeds; seeded calls repeat, unseeded ones do not."""
    prompt = [{"role": "user", "content": "Tell me a short story about a cat."}]
    three = client.chat.completions.create(model=model, messages=prompt, max_tokens=16, temperature=0.9, n=3, seed=5)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) == 3, texts
    assert three.usage.completion_tokens > 16, three.usage  # all three choices counted
    again = client.chat.completions.create(model=model, messages=prompt, max_tokens=16, temperature=0.9, n=3, seed=5)
    assert [c.message.content for c in again.choices] == texts
    unseeded = {client.chat.completions.create(model=model, messages=prompt, max_tokens=16,
                                               temperature=0.9).choices[0].message.content for _ in range(3)}
    assert len(unseeded) > 1, unseeded
    stream = client.chat.completions.create(model=model, messages=prompt, max_tokens=8, temperature=0.9, n=2,
                                            seed=5, stream=True)
    by_index = {}
    for chunk in stream:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + (choice.delta.content or "")
    assert sorted(by_index) == [0, 1], by_index
    penalised = client.chat.completions.create(model=model, messages=prompt, max_tokens=16, temperature=0,
                                               frequency_penalty=2.0, presence_penalty=1.0)
    greedy = client.chat.completions.create(model=model, messages=prompt, max_tokens=16, temperature=0)
    assert penalised.choices[0].message.content != greedy.choices[0].message.content
    print(f"n=3: {texts}; {len(unseeded)} different unseeded answers of 3; streamed n=2; penalties change the text")


def check_logprobs(client, model, messages):
    """Chat logprobs in OpenAI's shape, streamed too; completions' legacy shape."""
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens, content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0 and bytes(t.bytes) == t.token.encode()
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(t.logprob, t.top_logprobs[0].logprob, abs_tol=1e-5), t
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True)
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-5) for a, b in zip(streamed, content))
    completion = client.completions.create(model=model, prompt="The capital of France is", max_tokens=3,
                                           temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3, lp
    assert lp.text_offset[0] == 0 and all(len(m) == 2 for m in lp.top_logprobs), lp
    print(f"logprobs: {[(t.token, round(t.logprob, 3)) for t in content]}")


def check_messages_and_refusals(client, model):
    """Text parts are accepted; what tailord does not support is a 400 naming the field."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                          {"type": "text", "text": "of France?"}]}]
    reply = client.chat.completions.create(model=model, messages=parts, max_tokens=12, temperature=0)
    joined = [{"role": "user", "content": "What is the capital of France?"}]
    same = client.chat.completions.create(model=model, messages=joined, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == same.choices[0].message.content, (reply, same)
    plain = [{"role": "user", "content": "Hi"}]
    refusals = [
        dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
        dict(logit_bias={"1": 5}),
        dict(n=1000),
        dict(top_logprobs=50, logprobs=True),
        dict(stop=["a", "b", "c", "d", "e"]),
        dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                                            "patternProperties": {}}}}),
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]),
    ]
    for extra in refusals:
        args = dict(model=model, messages=plain, max_tokens=2) | extra
        try:
            client.chat.completions.create(**args)
        except openai.BadRequestError as e:
            error = e.body if isinstance(e.body, dict) else {}
            assert "message" in error and "type" in error, e.body
            continue
        raise AssertionError(f"{extra} was accepted")
    print(f"text parts answered; {len(refusals)} unsupported requests refused with 400")


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40},
    "age": {"type": "integer"},
    "role": {"enum": ["engineer", "artist", "doctor"]},
    "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 3},
    "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                              "remote": {"type": "boolean"}}, "required": ["city", "remote"]},
}, "required": ["name", "age", "role", "skills", "home"]}


def is_person(value):
    """PERSON's rules, written out (no schema library in this venv)."""
    home = value.get("home") if isinstance(value, dict) else None
    return (isinstance(value, dict) and list(value) == ["name", "age", "role", "skills", "home"]
            and isinstance(value["name"], str) and len(value["name"]) <= 40
            and isinstance(value["age"], int) and not isinstance(value["age"], bool)
            and value["role"] in ("engineer", "artist", "doctor")
            and isinstance(value["skills"], list) and 1 <= len(value["skills"]) <= 3
            and all(isinstance(s, str) and len(s) <= 30 for s in value["skills"])
            and isinstance(home, dict) and list(home) == ["city", "remote"]
            and isinstance(home["city"], str) and isinstance(home["remote"], bool))


def check_structured_output(client, model):
    """json_schema answers parse and validate on 20 prompts (sampled); json_object gives an object."""
    import json
    people = ["a baker from Lyon", "a retired pilot", "a young violinist", "a nurse in Oslo", "a carpenter"]
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for i in range(20):
        who = people[i % len(people)]
        # Room for the longest record: the strings alone may take 40 + 3*30 + 30
        # one-character tokens (160 cut a sampled record short on Zen 4).
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Describe {who} as a JSON record."}],
            max_tokens=320, temperature=0.8, seed=i, response_format=format_)
        text = reply.choices[0].message.content
        value = json.loads(text)
        assert is_person(value), (i, text)
        assert reply.choices[0].finish_reason == "stop", reply
    plain = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": 'Give the capital of France as a JSON object with the key "capital".'}],
        max_tokens=60, temperature=0, response_format={"type": "json_object"})
    assert isinstance(json.loads(plain.choices[0].message.content), dict), plain
    print(f"structured output: 20 schema answers parse and validate (last {text}); json_object "
          f"{plain.choices[0].message.content}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
