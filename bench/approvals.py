#!/usr/bin/env python3
"""Decision -> held operation released, standalone mode: the p50/p99 time from an approver's
decision (POST /approvals/NAME/approve on the admin API) to the held HTTP request's response.

Standard library only. Usage:
  approvals.py GATEWAY_URL ADMIN_URL AGENT_TOKEN APPROVER_TOKEN ITERATIONS
Prints one JSON object: {"n", "p50_ms", "p99_ms", "max_ms"}.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request


def call(method, url, token, body=None, timeout=90):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main():
    gateway, admin, agent, approver, n = sys.argv[1:6]
    n = int(n)
    latencies = []
    for i in range(n):
        done = {}

        def held():
            status, _ = call("PUT", f"{gateway}/held/{i}", agent, body=b"{}")
            done["status"] = status
            done["at"] = time.perf_counter()

        t = threading.Thread(target=held)
        t.start()
        name = None
        deadline = time.time() + 30
        while name is None and time.time() < deadline:
            status, body = call("GET", f"{admin}/approvals", approver)
            if status == 200:
                for item in json.loads(body).get("items", []):
                    phase = (item.get("status") or {}).get("phase")
                    if phase == "Pending" and item["spec"]["operation"]["summary"].endswith(f"/held/{i}"):
                        name = item["metadata"]["name"]
            if name is None:
                time.sleep(0.002)
        if name is None:
            raise SystemExit(f"iteration {i}: no pending request appeared")
        start = time.perf_counter()
        status, body = call("POST", f"{admin}/approvals/{name}/approve", approver, body=b'{"reason":"bench"}')
        if status != 200:
            raise SystemExit(f"approve failed: {status} {body!r}")
        t.join()
        if done.get("status") != 200:
            raise SystemExit(f"iteration {i}: held request answered {done.get('status')}")
        latencies.append((done["at"] - start) * 1000)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(json.dumps({"n": n, "p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2), "max_ms": round(latencies[-1], 2)}))


if __name__ == "__main__":
    main()
