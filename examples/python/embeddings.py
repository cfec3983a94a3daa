#!/usr/bin/env python3
"""Sentence embeddings behind Herald: a real ML model from PyPI (WordLlama), weights included.

Setup (once, from the repository root; about 190 MB in target/, which git ignores; nothing is
fetched at run time):

    python3 -m venv target/embeddings-venv
    target/embeddings-venv/bin/pip install -r examples/python/requirements-embeddings.txt

Serve it (docs/models.md has the line protocol):

    herald-worker --model embed="target/embeddings-venv/bin/python examples/python/embeddings.py"

Inputs, one of:
    {"texts": ["first sentence", "second"]}
        -> {"dim": 256, "embeddings": [[...256 floats...], [...]]}
    {"query": "i went to the car", "candidates": ["the park", "the vehicle"]}
        -> {"ranked": [{"text": "the vehicle", "score": 0.74}, {"text": "the park", "score": 0.15}]}
"""

import json
import pathlib
import sys

# stdout carries the protocol only; whatever a library prints goes to the log.
protocol = sys.stdout
sys.stdout = sys.stderr

MAX_TEXTS = 1024
MAX_CHARS = 10_000
BATCH = 64


def send(message):
    protocol.write(json.dumps(message) + "\n")
    protocol.flush()


def load():
    import wordllama
    from wordllama import WordLlama

    # The wheel holds weights/ and tokenizers/; pointing the cache there keeps it offline.
    package = pathlib.Path(wordllama.__file__).parent
    return WordLlama.load(cache_dir=package, disable_download=True)


def strings(value, name):
    if not isinstance(value, list) or not value or len(value) > MAX_TEXTS:
        raise ValueError(f'"{name}" must be a list of 1 to {MAX_TEXTS} strings')
    for text in value:
        if not isinstance(text, str) or not text or len(text) > MAX_CHARS:
            raise ValueError(f'each of "{name}" must be a string of 1 to {MAX_CHARS} characters')
    return value


def embed(model, texts):
    vectors = []
    for start in range(0, len(texts), BATCH):
        batch = texts[start : start + BATCH]
        vectors.extend(model.embed(batch).tolist())
        send({"progress": round(len(vectors) / len(texts), 4), "phase": "embedding"})
    return {"dim": len(vectors[0]), "embeddings": [[round(x, 6) for x in v] for v in vectors]}


def rank(model, query, candidates):
    ranked = model.rank(query, candidates, sort=True)
    return {"ranked": [{"text": text, "score": round(float(score), 4)} for text, score in ranked]}


def main():
    model = load()
    print("WordLlama loaded", flush=True)
    for line in sys.stdin:
        value = json.loads(line)["input"]
        try:
            if not isinstance(value, dict):
                raise ValueError('the input is {"texts": [...]} or {"query": "...", "candidates": [...]}')
            if "texts" in value:
                send({"output": embed(model, strings(value["texts"], "texts"))})
            elif "query" in value:
                query = value["query"]
                if not isinstance(query, str) or not query or len(query) > MAX_CHARS:
                    raise ValueError(f'"query" must be a string of 1 to {MAX_CHARS} characters')
                send({"output": rank(model, query, strings(value.get("candidates"), "candidates"))})
            else:
                raise ValueError('the input is {"texts": [...]} or {"query": "...", "candidates": [...]}')
        except ValueError as refused:
            send({"error": str(refused)})


if __name__ == "__main__":
    main()
