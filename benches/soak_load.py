#!/usr/bin/env python3
"""Steady mixed load for benches/soak.sh: keep-alive HTTP/1.1 clients, each paced, each with its
own x-api-key (its own rate-limit key), plus one "hog" key paced well over the limit that is meant to get 429s.

Every request has the statuses it may get; anything else, a broken connection or a stream
without its final `data: [DONE]` is a failure. Prints one JSON summary on stdout at the end.
Standard library only.
"""

import argparse
import http.client
import json
import random
import threading
import time

CHAT = {"model": "demo-rag-1", "messages": [{"role": "user", "content": "What is ragscope?"}]}
STREAM = dict(CHAT, stream=True, stream_options={"include_usage": True})
# kind: (weight, expected statuses)
KINDS = {
    "chat": (5, {200}),
    "sse": (2, {200}),
    "feedback": (2, {202}),
    "bad_feedback": (1, {400}),
    "too_large": (1, {413}),
}


class OneWrite(http.client.HTTPConnection):
    """Sends each request's head and body in one write, as curl and most HTTP clients do.

    http.client writes them separately; ragscope's early answers (429, 401) then go out before
    the body has arrived, hyper closes the connection instead of reading the unread body, and
    the next request on it fails (reported to the lead; not what this soak measures).
    """

    def _send_output(self, message_body=None, encode_chunked=False):
        self._buffer.extend((b"", b""))
        head = b"\r\n".join(self._buffer)
        del self._buffer[:]
        if isinstance(message_body, str):
            message_body = message_body.encode()
        self.send(head + (message_body or b""))


class Client:
    def __init__(self, host, port, key):
        self.host, self.port, self.key = host, port, key
        self.conn = None
        self.last_trace = None

    def request(self, method, path, body, fresh=False):
        if fresh or self.conn is None:
            self.close()
            self.conn = OneWrite(self.host, self.port, timeout=30)
        headers = {"content-type": "application/json", "x-api-key": self.key}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.will_close or fresh:
            self.close()
        return resp, data

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def one(self, kind):
        """Sends one request of `kind`; returns (status, problem or None)."""
        if kind in ("chat", "hog"):
            resp, _ = self.request("POST", "/v1/chat/completions", json.dumps(CHAT))
            tr = resp.getheader("traceresponse")
            if resp.status == 200 and tr and len(tr) >= 35:
                self.last_trace = tr[3:35]
            return resp.status, None
        if kind == "sse":
            resp, data = self.request("POST", "/v1/chat/completions", json.dumps(STREAM))
            ok = resp.status != 200 or b"data: [DONE]" in data
            return resp.status, None if ok else "stream without data: [DONE]"
        if kind == "feedback":
            trace = self.last_trace or "%032x" % random.getrandbits(128)
            body = {"trace_id": trace, "score": random.choice([0, 1]), "label": random.choice(["good", "bad"]),
                    "comment": "soak"}
            resp, _ = self.request("POST", "/ragscope/feedback", json.dumps(body))
            return resp.status, None
        if kind == "bad_feedback":
            resp, _ = self.request("POST", "/ragscope/feedback", '{"trace_id":"nothex","score":"x"}')
            return resp.status, None
        if kind == "too_large":
            # Over RAGSCOPE_MAX_REQUEST_BODY (soak.sh sets 64 KiB), on its own connection.
            resp, _ = self.request("POST", "/v1/chat/completions", "x" * 80_000, fresh=True)
            return resp.status, None
        raise ValueError(kind)


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_kind = {}
        self.failures = []
        self.failure_count = 0

    def add(self, kind, status, problem):
        with self.lock:
            k = self.by_kind.setdefault(kind, {})
            k[str(status)] = k.get(str(status), 0) + 1
            if problem:
                self.failure_count += 1
                if len(self.failures) < 20:
                    self.failures.append(f"{kind}: {problem}")


def worker(args, key, paced, deadline, totals):
    client = Client(args.host, args.port, key)
    kinds = [k for k, (w, _) in KINDS.items() for _ in range(w)]
    interval = 1.0 / (args.rate if paced else args.hog_rate)
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        kind = random.choice(kinds) if paced else "hog"
        expected = KINDS[kind][1] if paced else {200, 429}
        try:
            status, problem = client.one(kind)
            if problem is None and status not in expected:
                problem = f"status {status}, expected {sorted(expected)}"
        except Exception as e:  # a broken connection is a failure, then reconnect
            client.close()
            status, problem = "error", f"{type(e).__name__}: {e}"
        totals.add(kind, status, problem)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    client.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--rate", type=float, default=20.0, help="requests/s per paced client")
    p.add_argument("--hog-rate", type=float, default=200.0, help="requests/s of the key meant to get 429s")
    args = p.parse_args()
    totals = Totals()
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=worker, args=(args, f"user-{i}", True, deadline, totals))
               for i in range(args.clients)]
    threads.append(threading.Thread(target=worker, args=(args, "hog", False, deadline, totals)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requests = sum(sum(v.values()) for v in totals.by_kind.values())
    print(json.dumps({"requests": requests, "failures": totals.failure_count, "by_kind": totals.by_kind,
                      "first_failures": totals.failures}))


if __name__ == "__main__":
    main()
