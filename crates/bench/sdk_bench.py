"""Hutch through the official E2B Python SDK, as a user calls it.

Run by `hutch-bench` (which starts the server, installs the pinned SDK and
measures runc on the same root file system in the same run):

    python sdk_bench.py ITERATIONS WARMUP TEMPLATE

with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at the server
(the SDK's own key check left on). Prints one JSON object of samples, in
seconds:

* create_run_kill: Sandbox.create() -> commands.run("echo hi") -> kill()
* run_true: commands.run("true") on a live sandbox
* raw_start: the request `commands.run("true")` makes — a Connect
  `process.Process/Start` of `/bin/bash -l -c true`, read to the end of its
  stream — written by hand on one kept-alive HTTP/1.1 connection through the
  front door: the same work without the SDK
* raw_health: GET /health of that sandbox's agent through the front door,
  on one kept-alive HTTP/1.1 connection (the floor under any SDK call)
"""

import http.client
import json
import os
import struct
import sys
import time
import urllib.parse

from e2b import Sandbox


def main():
    iterations, warmup, template = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    clock = time.perf_counter
    samples = {"create_run_kill": [], "run_true": [], "raw_start": [], "raw_health": []}

    for i in range(warmup + iterations):
        start = clock()
        sbx = Sandbox.create(template)
        out = sbx.commands.run("echo hi")
        sbx.kill()
        took = clock() - start
        if out.stdout != "hi\n":
            raise SystemExit(f"unexpected output {out.stdout!r}")
        if i >= warmup:
            samples["create_run_kill"].append(took)

    sbx = Sandbox.create(template)
    try:
        for i in range(warmup + iterations):
            start = clock()
            sbx.commands.run("true")
            took = clock() - start
            if i >= warmup:
                samples["run_true"].append(took)

        url = urllib.parse.urlparse(os.environ["E2B_SANDBOX_URL"])
        conn = http.client.HTTPConnection(url.hostname, url.port)
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}

        message = json.dumps(
            {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "true"], "envs": {}}}
        ).encode()
        envelope = struct.pack(">BI", 0, len(message)) + message
        start_headers = dict(
            headers,
            **{
                "Content-Type": "application/connect+json",
                "Connect-Protocol-Version": "1",
                "Authorization": "Basic dXNlcjo=",
            },
        )
        for i in range(warmup + iterations):
            start = clock()
            conn.request("POST", "/process.Process/Start", body=envelope, headers=start_headers)
            resp = conn.getresponse()
            body = resp.read()
            took = clock() - start
            if resp.status != 200 or b'"exitCode"' in body or b'"end"' not in body:
                raise SystemExit(f"Start: {resp.status} {body[-300:]!r}")
            if i >= warmup:
                samples["raw_start"].append(took)

        for i in range(warmup + iterations):
            start = clock()
            conn.request("GET", "/health", headers=headers)
            resp = conn.getresponse()
            resp.read()
            took = clock() - start
            if resp.status >= 300:
                raise SystemExit(f"GET /health: {resp.status}")
            if i >= warmup:
                samples["raw_health"].append(took)
        conn.close()
    finally:
        sbx.kill()
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
