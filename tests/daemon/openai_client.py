"""The official `openai` Python client against a running tailord.

  openai_client.py BASE_URL CHAT_MODEL EMBED_MODEL
Completes, streams and embeds; exits non-zero on the first mismatch.
"""
import sys

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


if __name__ == "__main__":
    main(*sys.argv[1:4])
