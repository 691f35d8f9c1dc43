"""
L{Recorder}: one client's random puts, appends and gets against a real
cluster through L{kvpaxos.client}, each recorded with its call and return
times for the linearizability checker (L{kvpaxos.testing.linearizability}).
An operation whose outcome is unknown (a write that failed) is recorded
with no return; a failed read is left out (it had no effect).  Every
acknowledged append is kept apart so a test can check none was lost.
"""

from __future__ import annotations

import random
import threading
import time

from kvpaxos.client import Client, ClientError
from kvpaxos.testing.linearizability import Operation, check

PUT_KEYS = [b"p0", b"p1"]
APPEND_KEYS = [b"a0", b"a1"]


class Recorder:
    """Runs one client's random operations and records them with their times."""

    def __init__(self, client_id, endpoints, history, lock, acked_appends, seed, timeout_s=3.0):
        self.client_id = client_id
        self.client = Client(endpoints, timeout_s=timeout_s)
        self.history = history
        self.lock = lock
        self.acked_appends = acked_appends
        self.rng = random.Random(seed)
        self.count = 0

    def one(self):
        rng = self.rng
        self.count += 1
        choice = rng.random()
        start = time.monotonic()
        if choice < 0.35:
            key = rng.choice(PUT_KEYS + APPEND_KEYS)
            try:
                value = self.client.get(key)
            except ClientError:
                return  # a failed read has no effect: leave it out
            op = Operation(self.client_id, "get", key, output=value, call=start, ret=time.monotonic())
        elif choice < 0.7:
            key = rng.choice(PUT_KEYS)
            value = f"c{self.client_id}-{self.count}".encode()
            try:
                self.client.put(key, value)
                ret = time.monotonic()
            except ClientError:
                ret = None  # outcome unknown
            op = Operation(self.client_id, "put", key, input=value, call=start, ret=ret)
        else:
            key = rng.choice(APPEND_KEYS)
            token = f"<{self.client_id}.{self.count}>".encode()
            try:
                self.client.append(key, token)
                ret = time.monotonic()
                with self.lock:
                    self.acked_appends.append((key, token))
            except ClientError:
                ret = None
            op = Operation(self.client_id, "append", key, input=token, call=start, ret=ret)
        with self.lock:
            self.history.append(op)

    def run(self, stop):
        try:
            while not stop.is_set():
                self.one()
        finally:
            self.client.close()


def run_recorders(endpoints, count: int, seed: int = 1, timeout_s: float = 3.0):
    """
    Start C{count} L{Recorder}s in threads, each with the endpoints in
    another order; return C{(history, acked, stop)}, where C{stop()} ends
    them (bounded joins) and returns the history.
    """
    history, acked, lock, stopping = [], [], threading.Lock(), threading.Event()
    recorders = [
        Recorder(seed * 100 + i, endpoints[i % len(endpoints):] + endpoints[:i % len(endpoints)],
                 history, lock, acked, seed=seed * 100 + i, timeout_s=timeout_s)
        for i in range(1, count + 1)
    ]
    threads = [threading.Thread(target=r.run, args=(stopping,), daemon=True) for r in recorders]
    for thread in threads:
        thread.start()

    def stop():
        stopping.set()
        for thread in threads:
            thread.join(30)
        return history

    return history, acked, stop


def final_check(test, endpoints, history, acked, time_limit_s: float = 60):
    """
    Read every key once more, check that every acknowledged append survived
    exactly once and that C{history} is linearizable; return the number of
    operations checked.
    """
    final = Client(endpoints, timeout_s=10.0)
    try:
        values = {key: final.get(key) or b"" for key in APPEND_KEYS}
        for key, token in acked:
            test.assertIn(token, values[key], f"acknowledged append {token!r} to {key!r} lost")
        for op in history:
            if op.kind == "append":
                test.assertLessEqual(values[op.key].count(op.input), 1, f"{op.input!r} applied twice")
        for key in PUT_KEYS + APPEND_KEYS:
            now = time.monotonic()
            history.append(Operation(0, "get", key, output=final.get(key), call=now, ret=time.monotonic()))
    finally:
        final.close()
    verdict = check(history, time_limit_s=time_limit_s)
    test.assertEqual(verdict.outcome, "ok", verdict.explain())
    return len(history)
