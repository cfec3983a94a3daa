#!/usr/bin/env python3
"""Stored-once benchmark (BENCHMARKS.md, "Stored outputs"): one client submits the same n many times
(200 of n = 10^6 by default) with POST /jobs and reads every job back with GET /jobs/ID; prints how long that took and
what the store holds for them: embedded, the server's `herald_stored_outputs` and
`herald_stored_output_bytes` and the size of its data directory; distributed, the output keys in
Redis and their `MEMORY USAGE`.

Starts release binaries (build them first: cargo build --release -p herald-server -p herald-worker;
HERALD_BIN_DIR names another directory of binaries) with their default settings but the limits that
would refuse one client's 200 submits (--max-in-flight, --max-queued-per-client), embedded (durable,
in a fresh data directory) or distributed (against the RabbitMQ and Redis of scripts/services.sh,
under names of their own: its Redis keys and queues are deleted at the end, with `redis-cli` and
`rabbitmqctl`), and stops them at the end.

    python3 scripts/stored_once.py embedded|distributed [--submits 200] [--n 1000000]
                                   [--server-arg=--in-memory ...]

Needs, distributed, `redis-cli` and `rabbitmqctl`.
"""

import argparse
import json
import os
import time
import urllib.error
import urllib.request

from benchrun import herald, redis_cli


def metrics(address):
    """The server's /metrics as {name with labels: value}."""
    with urllib.request.urlopen(f"http://{address}/metrics") as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                values[name] = float(value)
            except ValueError:
                pass
    return values


def post_job(address, n):
    """POST /jobs of one factorial job, waiting as told when the server is busy: (ID, refusal)."""
    body = json.dumps({"n": n}).encode()
    while True:
        request = urllib.request.Request(
            f"http://{address}/jobs", data=body, method="POST",
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request) as response:
                return json.loads(response.read())["id"], None
        except urllib.error.HTTPError as error:
            wait = error.headers.get("retry-after")
            if error.code in (429, 503) and wait:
                time.sleep(float(wait))
                continue
            return None, f"{error.code} {error.read()[:200]!r}"


def final_job(address, job):
    """GET /jobs/ID until the job is final."""
    while True:
        with urllib.request.urlopen(f"http://{address}/jobs/{job}") as response:
            record = json.loads(response.read())
        if record["status"] in ("done", "failed", "cancelled"):
            return record
        time.sleep(0.2)


def run(address, submits, n):
    # Over HTTP, not one WebSocket: 200 results of 5.6 MB pushed to one socket at once would pass its
    # outgoing buffer, and the server would close it (as it should: see --max-buffered-bytes).
    clock = time.monotonic()
    posted = [post_job(address, n) for _ in range(submits)]
    ids = [job for job, _ in posted if job]
    refused = [why for _, why in posted if why]
    results, digits = 0, set()
    for job in ids:
        record = final_job(address, job)
        if record["status"] == "done":
            results += 1
            digits.add(len(record.get("output", "")))
    seconds = time.monotonic() - clock
    return {
        "submits": submits,
        "n": n,
        "accepted": len(ids),
        "results": results,
        "refused": refused[:3],
        "output_lengths": sorted(digits),
        "seconds_to_every_result": round(seconds, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["embedded", "distributed"])
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--server-arg", action="append", default=[])
    options = parser.parse_args()
    limits = [
        f"--max-in-flight={options.submits}",
        f"--max-queued-per-client={options.submits}",
    ]
    with herald(options.mode, "once", [*limits, *options.server_arg]) as started:
        report = run(started.address, options.submits, options.n)
        report["mode"] = options.mode
        report["server_args"] = options.server_arg
        if options.mode == "embedded":
            values = metrics(started.address)
            report["stored_outputs"] = values.get("herald_stored_outputs")
            report["stored_output_bytes"] = values.get("herald_stored_output_bytes")
            data = started.data
            report["data_dir_bytes"] = sum(
                os.path.getsize(os.path.join(data, name))
                for name in os.listdir(data)
                if name.startswith("herald.sqlite3")
            ) if os.path.isdir(data) else None
        else:
            keys = redis_cli("--scan", "--pattern", f"{started.redis_prefix}output:*")
            report["stored_outputs"] = len(keys)
            report["stored_output_bytes"] = sum(
                int(redis_cli("MEMORY", "USAGE", key)[0]) for key in keys
            )
        print(json.dumps(report))


if __name__ == "__main__":
    main()
