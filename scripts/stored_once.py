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
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid


def start(binary, args, log):
    return subprocess.Popen([binary, *args], stdout=log, stderr=subprocess.STDOUT)


def listening_address(log_path, process):
    """The address the server logs once it listens (it was started on port 0)."""
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"the server stopped; see {log_path}")
        with open(log_path, encoding="utf-8", errors="replace") as log:
            found = re.search(r"listening on http://([0-9.:]+)", log.read())
        if found:
            return found.group(1)
        time.sleep(0.1)
    sys.exit(f"the server did not start listening; see {log_path}")


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


def redis_cli(url, *args):
    out = subprocess.run(["redis-cli", "-u", url, *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["embedded", "distributed"])
    parser.add_argument("--submits", type=int, default=200)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--server-arg", action="append", default=[])
    options = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binaries = os.environ.get("HERALD_BIN_DIR", os.path.join(target, "release"))
    logs = tempfile.mkdtemp(prefix="herald-stored-once-")
    data = os.path.join(logs, "data")
    tag = uuid.uuid4().hex[:12]
    redis_url = os.environ.get("HERALD_REDIS_URL", "redis://127.0.0.1:6379")
    prefix = f"herald-once:{tag}:"
    # Embedded: a fresh data directory, unless the server keeps its jobs in memory.
    backend = [] if "--in-memory" in options.server_arg else ["--data-dir", data]
    if options.mode == "distributed":
        backend = [
            "--amqp-url", os.environ.get("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            "--redis-url", redis_url,
            "--queue", f"herald-once.{tag}.{{model}}",
            "--reply-exchange", f"herald-once.{tag}.replies",
            "--redis-prefix", prefix,
        ]
    limits = [
        f"--max-in-flight={options.submits}",
        f"--max-queued-per-client={options.submits}",
    ]
    processes = []
    try:
        if options.mode == "distributed":
            worker_log = open(os.path.join(logs, "worker.log"), "w")
            processes.append(start(os.path.join(binaries, "herald-worker"), backend, worker_log))
        server_log_path = os.path.join(logs, "server.log")
        server = start(
            os.path.join(binaries, "herald-server"),
            [*backend, "--listen", "127.0.0.1:0", *limits, *options.server_arg],
            open(server_log_path, "w"),
        )
        processes.append(server)
        address = listening_address(server_log_path, server)
        if options.mode == "distributed":
            time.sleep(3)  # the server learns of the worker's factorial from its announcement
        report = run(address, options.submits, options.n)
        report["mode"] = options.mode
        report["server_args"] = options.server_arg
        if options.mode == "embedded":
            values = metrics(address)
            report["stored_outputs"] = values.get("herald_stored_outputs")
            report["stored_output_bytes"] = values.get("herald_stored_output_bytes")
            report["data_dir_bytes"] = sum(
                os.path.getsize(os.path.join(data, name))
                for name in os.listdir(data)
                if os.path.isdir(data) and name.startswith("herald.sqlite3")
            ) if os.path.isdir(data) else None
        else:
            keys = redis_cli(redis_url, "--scan", "--pattern", f"{prefix}output:*")
            report["stored_outputs"] = len(keys)
            report["stored_output_bytes"] = sum(
                int(redis_cli(redis_url, "MEMORY", "USAGE", key)[0]) for key in keys
            )
        print(json.dumps(report))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        if options.mode == "distributed":
            keys = redis_cli(redis_url, "--scan", "--pattern", f"{prefix}*")
            for start_at in range(0, len(keys), 500):
                redis_cli(redis_url, "DEL", *keys[start_at:start_at + 500])
            # The run's job queues, as scripts/bench.sh deletes its own.
            listed = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True
            )
            for queue in listed.stdout.split():
                if queue.startswith(f"herald-once.{tag}."):
                    subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


if __name__ == "__main__":
    main()
