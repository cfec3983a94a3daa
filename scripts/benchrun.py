"""Runs release Herald binaries for the Python benchmarks (scripts/fairness.py, scripts/stored_once.py):
an embedded server on a fresh data directory, or a server and a worker on the RabbitMQ and Redis of
scripts/services.sh under names of the run's own, deleted at the end as scripts/bench.sh deletes its
own.

Binaries: $HERALD_BIN_DIR, else $CARGO_TARGET_DIR/release, else target/release of the repository.
"""

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid

AMQP_URL = os.environ.get("HERALD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("HERALD_REDIS_URL", "redis://127.0.0.1:6379")


def binaries():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    return os.environ.get("HERALD_BIN_DIR", os.path.join(target, "release"))


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


def redis_cli(*args):
    out = subprocess.run(["redis-cli", "-u", REDIS_URL, *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


class Run:
    """What a started Herald offers its benchmark."""

    def __init__(self, mode, name):
        self.mode = mode
        self.logs = tempfile.mkdtemp(prefix=f"herald-{name}-")
        self.data = os.path.join(self.logs, "data")
        tag = uuid.uuid4().hex[:12]
        self.queue_prefix = f"herald-{name}.{tag}."
        self.redis_prefix = f"herald-{name}:{tag}:"
        self.address = None

    def backend(self, server_args):
        if self.mode == "distributed":
            return [
                "--amqp-url", AMQP_URL, "--redis-url", REDIS_URL,
                "--queue", f"{self.queue_prefix}{{model}}",
                # Shared with scripts/bench.sh's runs: it routes each completion by its server's own
                # instance ID, and a shared one is not left behind once per run.
                "--reply-exchange", "herald-bench.replies",
                "--redis-prefix", self.redis_prefix,
            ]
        # A data directory of this run's own (the default, herald-data in the working directory,
        # would carry one run's jobs into the next), unless the server keeps its jobs in memory.
        return [] if "--in-memory" in server_args else ["--data-dir", self.data]

    def clean_up(self):
        keys = redis_cli("--scan", "--pattern", f"{self.redis_prefix}*")
        for start_at in range(0, len(keys), 500):
            redis_cli("DEL", *keys[start_at:start_at + 500])
        listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                                text=True)
        for queue in listed.stdout.split():
            if queue.startswith(self.queue_prefix):
                subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


@contextlib.contextmanager
def herald(mode, name, server_args):
    """Starts Herald in `mode` ("embedded" or "distributed") with `server_args`; yields its Run once
    the server listens (and, distributed, knows the worker's factorial); stops it all at the end."""
    run = Run(mode, name)
    backend = run.backend(server_args)
    processes = []
    try:
        if mode == "distributed":
            worker_log = open(os.path.join(run.logs, "worker.log"), "w")
            processes.append(subprocess.Popen([os.path.join(binaries(), "herald-worker"), *backend],
                                              stdout=worker_log, stderr=subprocess.STDOUT))
        server_log = os.path.join(run.logs, "server.log")
        server = subprocess.Popen(
            [os.path.join(binaries(), "herald-server"), *backend, "--listen", "127.0.0.1:0",
             *server_args],
            stdout=open(server_log, "w"), stderr=subprocess.STDOUT,
        )
        processes.append(server)
        run.address = listening_address(server_log, server)
        if mode == "distributed":
            time.sleep(3)  # the server learns of the worker's factorial from its announcement
        yield run
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        if mode == "distributed":
            run.clean_up()
