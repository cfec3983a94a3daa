#!/usr/bin/env python3
"""Fair share benchmark (BENCHMARKS.md, "Fair share"): one client's burst of long jobs, then another
client's short job; prints how long the short one took from its submit to its result.

Starts release binaries (build them first: cargo build --release -p herald-server -p herald-worker;
HERALD_BIN_DIR names another directory of binaries) with their default settings and two identities
(static tokens `heavy` and `light`, so the two are different clients), embedded (durable, in a fresh
data directory) or distributed (against the RabbitMQ and Redis of scripts/services.sh, under names of
their own), and stops them at the end.

    python3 scripts/fairness.py embedded|distributed [--burst 100] [--heavy-n 960000] [--light-n 10]
                                [--server-arg=--max-queued-per-client=0 ...]

Needs the `websockets` package (pip install websockets).
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
import uuid

import websockets

HEAVY = "heavy-token-0123456789"
LIGHT = "light-token-0123456789"


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


async def run(address, burst, heavy_n, light_n):
    url = f"ws://{address}/ws"
    big = 64 * 1024 * 1024
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {HEAVY}"}, max_size=big
    ) as heavy:
        for i in range(burst):
            await heavy.send(json.dumps({"type": "submit", "n": heavy_n + i}))
        accepted, busy, heavy_done = [], 0, 0
        while len(accepted) + busy < burst:
            message = json.loads(await heavy.recv())
            if message["type"] == "accepted":
                accepted.append(message["id"])
            elif message["type"] == "error" and message["code"] == "busy":
                busy += 1
            elif message["type"] == "result":
                heavy_done += 1
        # The heavy client keeps reading its results meanwhile, as a real client would: a socket that
        # stops reading is closed by the server's buffer budget, and by this library's keepalive.
        done = {"heavy": heavy_done}

        async def drain():
            async for text in heavy:
                if json.loads(text)["type"] == "result":
                    done["heavy"] += 1

        draining = asyncio.create_task(drain())
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {LIGHT}"}, max_size=big
        ) as light:
            clock = time.monotonic()
            await light.send(json.dumps({"type": "submit", "n": light_n}))
            while True:
                message = json.loads(await light.recv())
                if message["type"] == "result":
                    break
            seconds = time.monotonic() - clock
            heavy_done = done["heavy"]
            light_result = message
        for job in accepted:
            await heavy.send(json.dumps({"type": "cancel", "id": job}))
        draining.cancel()
    return {
        "burst": burst,
        "accepted": len(accepted),
        "busy": busy,
        "heavy_done_before_light": heavy_done,
        "light_seconds": round(seconds, 3),
        "light_status": light_result.get("status"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["embedded", "distributed"])
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--heavy-n", type=int, default=960_000)
    parser.add_argument("--light-n", type=int, default=10)
    parser.add_argument("--server-arg", action="append", default=[])
    options = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    binaries = os.environ.get("HERALD_BIN_DIR", os.path.join(target, "release"))
    logs = tempfile.mkdtemp(prefix="herald-fairness-")
    tag = uuid.uuid4().hex[:12]
    # Embedded: a data directory of this run's own (the default, herald-data in the working
    # directory, would carry one run's jobs into the next).
    backend = ["--data-dir", os.path.join(logs, "data")]
    if options.mode == "distributed":
        backend = [
            "--amqp-url", os.environ.get("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            "--redis-url", os.environ.get("HERALD_REDIS_URL", "redis://127.0.0.1:6379"),
            "--queue", f"herald-fair.{tag}.{{model}}",
            "--reply-exchange", f"herald-fair.{tag}.replies",
            "--redis-prefix", f"herald-fair:{tag}:",
        ]
    processes = []
    try:
        if options.mode == "distributed":
            worker_log = open(os.path.join(logs, "worker.log"), "w")
            processes.append(start(os.path.join(binaries, "herald-worker"), backend, worker_log))
        server_log_path = os.path.join(logs, "server.log")
        server = start(
            os.path.join(binaries, "herald-server"),
            [*backend, "--listen", "127.0.0.1:0", "--auth-tokens",
             f"heavy:{HEAVY},light:{LIGHT}", *options.server_arg],
            open(server_log_path, "w"),
        )
        processes.append(server)
        address = listening_address(server_log_path, server)
        if options.mode == "distributed":
            time.sleep(3)  # the server learns of the worker's factorial from its announcement
        report = asyncio.run(run(address, options.burst, options.heavy_n, options.light_n))
        report["mode"] = options.mode
        report["server_args"] = options.server_arg
        print(json.dumps(report))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        if options.mode == "distributed":
            # The run's keys and queues, as scripts/bench.sh deletes its own.
            redis_url = os.environ.get("HERALD_REDIS_URL", "redis://127.0.0.1:6379")
            keys = subprocess.run(
                ["redis-cli", "-u", redis_url, "--scan", "--pattern", f"herald-fair:{tag}:*"],
                capture_output=True, text=True,
            ).stdout.split()
            for start_at in range(0, len(keys), 500):
                subprocess.run(["redis-cli", "-u", redis_url, "DEL", *keys[start_at:start_at + 500]],
                               capture_output=True)
            listed = subprocess.run(
                ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True
            )
            for queue in listed.stdout.split():
                if queue.startswith(f"herald-fair.{tag}."):
                    subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


if __name__ == "__main__":
    main()
