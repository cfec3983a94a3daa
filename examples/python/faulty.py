#!/usr/bin/env python3
"""A model that misbehaves on request, for Herald's tests of executable models.

Input: {"do": WHAT, ...}; WHAT is one of
  echo (or no "do")  answer {"pid": <its PID>, "input": <the input>}
  crash              exit with status 3 mid-job
  garbage            print a line that is not JSON
  error              answer {"error": <"message", or "refused">}
  bad_progress       report a progress of 1.5
  huge               answer {"output": "xxx…"}, a line of "bytes" bytes (at least 14)
  endless            print "x" without end and never a newline
  hang               never answer, say nothing
  sleep              report progress with the phase "pid <PID>" every 50 ms, never answer
  stubborn           as sleep, but ignore SIGTERM
  two_answers        answer twice, in one write
  log                print "text" to stderr, then answer as echo
  size               answer the length of the job's line, in bytes

Options: --exit-at-start CODE (print to stderr and exit at once), --live SECONDS (exit with status
5 that long after starting, whatever it is doing), --answer-early (read the first 64 bytes of the
first job, answer {"pid": <its PID>}, then read nothing more).
"""

import json
import os
import signal
import sys
import threading
import time

PID = os.getpid()


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def sleep_forever(reporting):
    while True:
        if reporting:
            send({"progress": 0.5, "phase": f"pid {PID}"})
        time.sleep(0.05)


def serve(line):
    value = json.loads(line)["input"]
    what = value.get("do", "echo") if isinstance(value, dict) else "echo"
    if what == "echo":
        send({"output": {"pid": PID, "input": value}})
    elif what == "crash":
        send({"progress": 0.1})
        sys.exit(3)
    elif what == "garbage":
        sys.stdout.write("this is not JSON\n")
        sys.stdout.flush()
    elif what == "error":
        send({"error": value.get("message", "refused")})
    elif what == "bad_progress":
        send({"progress": 1.5})
    elif what == "huge":
        send({"output": "x" * (value["bytes"] - 14)})
    elif what == "endless":
        chunk = "x" * 65536
        while True:
            sys.stdout.write(chunk)
    elif what == "hang":
        sleep_forever(reporting=False)
    elif what == "sleep":
        sleep_forever(reporting=True)
    elif what == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sleep_forever(reporting=True)
    elif what == "two_answers":
        sys.stdout.write('{"output":1}\n{"output":2}\n')
        sys.stdout.flush()
    elif what == "log":
        print(value["text"], file=sys.stderr, flush=True)
        send({"output": {"pid": PID, "input": value}})
    elif what == "size":
        send({"output": len(line.encode())})
    else:
        send({"error": f"unknown behaviour {what!r}"})


def main():
    args = sys.argv[1:]
    if "--exit-at-start" in args:
        print("faulty.py: told to exit at start", file=sys.stderr, flush=True)
        sys.exit(int(args[args.index("--exit-at-start") + 1]))
    if "--live" in args:
        seconds = float(args[args.index("--live") + 1])
        threading.Timer(seconds, lambda: os._exit(5)).start()
    if "--answer-early" in args:
        sys.stdin.buffer.read(64)
        send({"output": {"pid": PID}})
        sleep_forever(reporting=False)
    for line in sys.stdin:
        serve(line)


if __name__ == "__main__":
    main()
