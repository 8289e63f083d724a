#!/usr/bin/env python3
"""Config propagation between two release-built nodes on one PostgreSQL
schema: WRITES admin writes (a new API each) on node A; after each commit
(A's 201), node B is polled on a kept-alive connection until it serves the
new path. Prints min, median, p99 and max of the delays.

    python3 bench/propagation.py      # target/release/tollgate must exist

Standard library only; PostgreSQL at $TOLLGATE_TEST_POSTGRES_URL (default
postgres://postgres@127.0.0.1:5432/test), reached with psql for the schema.
"""
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

WRITES = int(os.environ.get("WRITES", "200"))
BASE = os.environ.get("TOLLGATE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
TOKEN = "bench-admin-token-0123456789abcdef"
MASTER = "0123456789abcdef" * 4
SCHEMA = f"tollgate_bench_propagation_{os.getpid()}"
BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "tollgate")


def psql(sql):
    env = dict(os.environ, PGOPTIONS="-c client_min_messages=warning")
    subprocess.run(["psql", BASE, "-qc", sql], check=True, stdout=subprocess.DEVNULL, env=env)


def start(name, proxy, admin, url, workdir):
    config = os.path.join(workdir, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(
            f"listen: {{ proxy: '127.0.0.1:{proxy}', admin: '127.0.0.1:{admin}' }}\n"
            f"storage: {{ database: '{url}' }}\nnode: {{ name: {name} }}\n"
        )
    env = dict(os.environ, TOLLGATE_ADMIN_TOKEN=TOKEN, TOLLGATE_MASTER_KEY=MASTER)
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(
        [BIN, "serve", "--config", config, "--workers", "1"],
        cwd=workdir, env=env, stdout=log, stderr=log,
    )
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{name} did not start; see {workdir}/{name}.log")


def admin(conn, method, path, body):
    conn.request(method, path, json.dumps(body),
                 {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    res = conn.getresponse()
    res.read()
    return res.status


def main():
    psql(f"CREATE SCHEMA {SCHEMA}")
    sep = "&" if "?" in BASE else "?"
    url = f"{BASE}{sep}options=-csearch_path%3D{SCHEMA}"
    workdir = tempfile.mkdtemp(prefix="tollgate-propagation-")
    procs = []
    try:
        procs.append(start("prop-a", 18130, 18131, url, workdir))
        procs.append(start("prop-b", 18132, 18133, url, workdir))
        a = http.client.HTTPConnection("127.0.0.1", 18131, timeout=5)
        b = http.client.HTTPConnection("127.0.0.1", 18132, timeout=5)
        assert admin(a, "POST", "/admin/v1/services",
                     {"name": "s", "upstream": {"targets": [{"url": "http://127.0.0.1:9"}]}}) == 201
        delays = []
        for i in range(WRITES):
            api = {"name": f"p{i}", "service": "s", "match": {"paths": [f"/p{i}"]},
                   "policies": {"ip": {"deny": ["127.0.0.0/8"]}}}
            assert admin(a, "POST", "/admin/v1/apis", api) == 201
            committed = time.perf_counter()
            while True:
                b.request("GET", f"/p{i}")
                res = b.getresponse()
                res.read()
                if res.status == 403:  # served, and its policy enforced
                    break
                if time.perf_counter() - committed > 5:
                    sys.exit(f"node b does not serve /p{i} 5 s after the write")
            delays.append((time.perf_counter() - committed) * 1000)
            time.sleep(0.013 * (i % 7))  # spread the writes over the poll period
        delays.sort()
        pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
        print(f"config propagation, {WRITES} admin writes, node a -> node b enforcing: "
              f"min {delays[0]:.1f} ms, median {pick(0.5):.1f} ms, p99 {pick(0.99):.1f} ms, "
              f"max {delays[-1]:.1f} ms")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        psql(f"DROP SCHEMA {SCHEMA} CASCADE")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
