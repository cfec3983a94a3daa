#!/usr/bin/env python3
"""The smallest Herald model: its output is its input.

Herald's line protocol (docs/models.md): one job per line on stdin, {"id": ..., "input": ...};
one answer per job on stdout, {"output": ...}, flushed at once. Used by the benchmark of what an
executable model costs per job (BENCHMARKS.md).

    herald-worker --model echo="python3 examples/python/echo.py"
"""

import json
import sys


def main():
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.write(json.dumps({"output": job["input"]}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
