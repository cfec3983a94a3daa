#!/usr/bin/env python3
"""A webhook receiver for Herald's tests (tests/webhooks.rs).

Verifies each delivery's Standard Webhooks signature with Python's own hmac, an implementation
independent of Herald's, answers with the next status of its list (the last one repeats), and prints
one JSON line per delivery. Its first line is {"port": N}.

Usage: webhook_receiver.py whsec_<base64 secret> STATUS[,STATUS...]
"""

import base64
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = base64.b64decode(sys.argv[1].removeprefix("whsec_"))
STATUSES = [int(s) for s in sys.argv[2].split(",")]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        message_id = self.headers.get("webhook-id", "")
        timestamp = self.headers.get("webhook-timestamp", "")
        signed = f"{message_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(SECRET, signed, hashlib.sha256).digest()).decode()
        given = [
            part.split(",", 1)[1]
            for part in self.headers.get("webhook-signature", "").split()
            if part.startswith("v1,")
        ]
        valid = any(hmac.compare_digest(expected, signature) for signature in given)
        status = STATUSES.pop(0) if len(STATUSES) > 1 else STATUSES[0]
        print(
            json.dumps(
                {
                    "id": message_id,
                    "timestamp": timestamp,
                    "valid": valid,
                    "answered": status,
                    "path": self.path,
                    "body": json.loads(body),
                }
            ),
            flush=True,
        )
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
