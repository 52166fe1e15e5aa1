"""Fine-tuning through OpenAI's own Python client against a live tailord:
upload a JSONL file (multipart, as the client sends it), list and fetch it,
start a job on the upload, follow it to the end, chat with the model it
made, and delete the file. A malformed upload and an unknown file id are
400s that say why. Exits non-zero on any mismatch.

    python openai_fine_tune.py BASE_URL MODEL TRAIN_JSONL BROKEN_JSONL
"""
import sys
import time

import openai


def main(base_url, model, train_path, broken_path):
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    with open(train_path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    size = len(open(train_path, "rb").read())
    assert uploaded.id.startswith("file-") and uploaded.bytes == size, uploaded
    assert uploaded.filename == "train.jsonl" and uploaded.purpose == "fine-tune", uploaded
    assert any(f.id == uploaded.id for f in client.files.list().data)
    assert client.files.retrieve(uploaded.id).bytes == size
    assert client.files.content(uploaded.id).read() == open(train_path, "rb").read()

    try:
        with open(broken_path, "rb") as f:
            client.files.create(file=f, purpose="fine-tune")
        raise AssertionError("a broken JSONL upload was taken")
    except openai.BadRequestError as e:
        assert "line 2" in str(e), e
    try:
        client.fine_tuning.jobs.create(model=model, training_file="file-" + "0" * 24)
        raise AssertionError("an unknown file id was taken")
    except openai.BadRequestError as e:
        assert "no uploaded file" in str(e), e

    job = client.fine_tuning.jobs.create(
        model=model, training_file=uploaded.id, suffix="upload",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 2}}})
    # The job keeps its own copy: deleting the upload does not hurt it.
    assert client.files.delete(uploaded.id).deleted
    assert all(f.id != uploaded.id for f in client.files.list().data)
    started = time.time()
    while job.status in ("queued", "running", "validating_files"):
        assert time.time() - started < 300, f"job stuck: {job}"
        time.sleep(0.3)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job
    assert job.training_file == uploaded.id, job
    events = client.fine_tuning.jobs.list_events(job.id).data
    assert any("training loss" in e.message for e in events), events
    answer = client.chat.completions.create(
        model=job.fine_tuned_model, max_tokens=8,
        messages=[{"role": "user", "content": "How do I reset my password?"}])
    assert answer.choices[0].message.content, answer
    print(f"uploaded {uploaded.id} ({size} bytes), job {job.id} -> {job.fine_tuned_model}, "
          f"{len(events)} events: {answer.choices[0].message.content!r}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
