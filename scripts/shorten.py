#!/usr/bin/env python3
"""Shortens Herald's JSON lines for reading in a terminal: an `output` longer than N characters
(default 80) is cut to its first N, with a note of its length. Every other line passes unchanged.

    websocat --text -B 8000000 ws://127.0.0.1:8080/ws | python3 scripts/shorten.py

Each line is written as soon as it is read, so progress and results show as they come.
"""

import json
import sys


def shorten(line, limit):
    try:
        message = json.loads(line)
    except ValueError:
        return line
    output = message.get("output") if isinstance(message, dict) else None
    if output is None:
        return line
    text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
    if len(text) <= limit:
        return line
    message["output"] = f"{text[:limit]}… ({len(text)} characters)"
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    for line in sys.stdin:
        sys.stdout.write(shorten(line.rstrip("\n"), limit) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
