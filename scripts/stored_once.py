#!/usr/bin/env python3
"""Stored-once benchmark (BENCHMARKS.md, "Stored outputs"): one client submits the same n many times
(200 of n = 10^6 by default) on one WebSocket and reads every result; prints how long that took and
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

Needs the `websockets` package (pip install websockets) and, distributed, `redis-cli` and
`rabbitmqctl`.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import websockets


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


async def run(address, submits, n):
    async with websockets.connect(f"ws://{address}/ws", max_size=256 * 1024 * 1024) as socket:
        clock = time.monotonic()
        for _ in range(submits):
            await socket.send(json.dumps({"type": "submit", "n": n}))
        accepted, results, digits, refused = 0, 0, set(), []
        while results + len(refused) < submits:
            message = json.loads(await socket.recv())
            if message["type"] == "accepted":
                accepted += 1
            elif message["type"] == "result":
                results += 1
                digits.add(len(message.get("output", "")))
            elif message["type"] == "error":
                refused.append(message.get("message"))
        seconds = time.monotonic() - clock
    return {
        "submits": submits,
        "n": n,
        "accepted": accepted,
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
    backend = ["--data-dir", data]
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
        report = asyncio.run(run(address, options.submits, options.n))
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
