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
import time

import websockets

from benchrun import herald

HEAVY = "heavy-token-0123456789"
LIGHT = "light-token-0123456789"


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
    tokens = ["--auth-tokens", f"heavy:{HEAVY},light:{LIGHT}"]
    with herald(options.mode, "fair", [*tokens, *options.server_arg]) as started:
        report = asyncio.run(run(started.address, options.burst, options.heavy_n, options.light_n))
        report["mode"] = options.mode
        report["server_args"] = options.server_arg
        print(json.dumps(report))


if __name__ == "__main__":
    main()
