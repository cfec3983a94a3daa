#!/usr/bin/env python3
"""A slow sentiment model for Herald, with only Python's standard library.

It stands in for a real AI model: it "loads" once at start, then takes a few seconds per job and
reports its progress, so that a person can watch a job move and cancel it.

Input:  {"text": "what a lovely day", "seconds": 5}
        ("seconds", optional, 0 to 600, default 5: how long the job takes)
Output: {"label": "positive", "score": 0.5, "words": 4, "matched": ["lovely"]}

Run it behind Herald (docs/models.md has the line protocol):

    herald-worker --model sentiment="python3 examples/python/slow_sentiment.py"
    cargo run -p herald-server -- --model sentiment="python3 examples/python/slow_sentiment.py"
"""

import json
import re
import sys
import time

POSITIVE = {
    "good", "great", "lovely", "excellent", "happy", "love", "like", "nice", "wonderful",
    "fast", "best", "calm", "clear", "enjoy", "fine", "glad", "kind", "perfect", "pleasant",
}
NEGATIVE = {
    "bad", "awful", "terrible", "sad", "hate", "slow", "worst", "poor", "angry", "broken",
    "ugly", "boring", "wrong", "fail", "failed", "pain", "annoying", "horrible", "nasty",
}
NEGATIONS = {"not", "no", "never", "hardly", "don't", "isn't", "wasn't", "can't"}

DEFAULT_SECONDS = 5.0
MAX_SECONDS = 600.0
MAX_TEXT = 100_000
# Progress is worth sending a few times a second, not more: Herald forwards at most four a second.
STEP_SECONDS = 0.1


def log(message):
    """stderr goes to the worker's log, tagged with the model's name and the running job's ID."""
    print(message, file=sys.stderr, flush=True)


def send(message):
    """One message per line on stdout, flushed at once: Herald waits for whole lines."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def check(value):
    """The job's input as (text, seconds), or the reason it is refused."""
    if not isinstance(value, dict):
        return None, 'the input is an object: {"text": "...", "seconds": 5}'
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        return None, '"text" must be a non-empty string'
    if len(text) > MAX_TEXT:
        return None, f'"text" must be at most {MAX_TEXT} characters'
    seconds = value.get("seconds", DEFAULT_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None, '"seconds" must be a number'
    if not 0 <= seconds <= MAX_SECONDS:
        return None, f'"seconds" must be between 0 and {MAX_SECONDS:g}'
    return (text, float(seconds)), None


def score(text, seconds):
    words = re.findall(r"[a-z']+", text.lower())
    total = 0
    matched = []
    steps = max(1, int(seconds / STEP_SECONDS))
    for step in range(steps):
        # The "model" works through its words in steps, as a real one works through its layers.
        begin = len(words) * step // steps
        end = len(words) * (step + 1) // steps
        for i in range(begin, end):
            word = words[i]
            sign = 1 if word in POSITIVE else -1 if word in NEGATIVE else 0
            if sign and i > 0 and words[i - 1] in NEGATIONS:
                sign = -sign
            if sign:
                total += sign
                matched.append(word)
        time.sleep(seconds / steps)
        phase = "reading" if step < steps // 2 else "scoring"
        send({"progress": round((step + 1) / steps, 4), "phase": phase})
    value = total / max(1, len(matched))
    label = "positive" if value > 0 else "negative" if value < 0 else "neutral"
    return {"label": label, "score": round(value, 3), "words": len(words), "matched": matched}


def main():
    log(f"lexicon loaded: {len(POSITIVE)} positive and {len(NEGATIVE)} negative words")
    for line in sys.stdin:
        job = json.loads(line)
        checked, refused = check(job["input"])
        if refused:
            send({"error": refused})
            continue
        text, seconds = checked
        log(f"scoring {len(text)} characters over {seconds:g} s")
        send({"output": score(text, seconds)})


if __name__ == "__main__":
    main()
