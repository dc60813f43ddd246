"""Hutch and Docker side by side, each through the official SDK a user calls.

Run by `hutch-bench --docker` (which starts a Hutch server and a private
`dockerd`, installs the pinned SDKs, and prints the table):

    python docker_bench.py CONFIG_JSON

CONFIG_JSON: {"iterations", "warmup", "archive" (a `docker save` tar of the
image), "template" (the Hutch template name to import it as),
"concurrency", "density", "imports"}. Hutch is reached
with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (the SDK's own checks left
on), Docker with DOCKER_HOST. Prints one JSON object:
{"hutch": {op: [seconds]}, "docker": {op: [seconds]}, "memory": {...}}.

Operations, the same on both sides (commands run as `bash -l -c CMD`, which
is what `commands.run` does):

* import: the image archive made a template (Hutch: the archive streamed to
  `POST /hutch/v1/templates`, as `hutch template import` does; Docker:
  `images.load`), after the previous import was removed with its layers
* create_first_command: a new sandbox / container (`sleep infinity`) and
  `echo hi` run in it, until its output is back
* command: `true` on a live sandbox / container (`commands.run` /
  `exec_run`)
* write_read_64k, write_read_16m: a file written and read back
  (`files.write` + `files.read`; `put_archive` + `get_archive`, the Docker
  SDK's file API)
* pause_resume: `pause()` then `connect()`; `pause()` then `unpause()`
* kill: `kill()`; `remove(force=True)`
* concurrent_kill: CONCURRENCY sandboxes / containers killed at once, each
  kill timed
* create_at_1, create_at_n: creates (without a command) when nothing else
  runs and when DENSITY idle ones run
* memory per idle: the fall of MemAvailable (once settled) over DENSITY
  idle sandboxes / containers, divided by DENSITY: everything each costs
  the host (Docker's includes its per-container shim and daemon state,
  Hutch's its pooled sandbox and server state)
"""

import concurrent.futures
import http.client
import io
import json
import os
import sys
import tarfile
import time
import urllib.parse

import docker
from e2b import Sandbox

clock = time.perf_counter


def timed(f):
    start = clock()
    value = f()
    return clock() - start, value


def mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no MemAvailable in /proc/meminfo")


def settled_mem_available():
    """MemAvailable once it has stopped moving (teardowns and daemons done
    releasing memory): two readings a second apart within 1 MiB, or after
    60 s the last reading."""
    last = mem_available()
    for _ in range(60):
        time.sleep(1)
        now = mem_available()
        if abs(now - last) < (1 << 20):
            return now
        last = now
    return last


class Hutch:
    name = "hutch"

    def __init__(self, cfg):
        self.template = cfg["template"]
        self.url = urllib.parse.urlparse(os.environ["E2B_API_URL"])
        self.key = os.environ["E2B_API_KEY"]

    def _request(self, method, path, body=None, length=None):
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=600)
        headers = {"X-API-Key": self.key}
        if length is not None:
            headers["Content-Length"] = str(length)
            headers["Content-Type"] = "application/x-tar"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if resp.status >= 300:
            raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
        return data

    def import_image(self, archive):
        with open(archive, "rb") as f:
            self._request(
                "POST",
                f"/hutch/v1/templates?name={self.template}",
                body=f,
                length=os.path.getsize(archive),
            )

    def remove_image(self):
        self._request("DELETE", f"/hutch/v1/templates/{self.template}")

    def create(self):
        return Sandbox.create(self.template)

    def run(self, box, cmd):
        return box.commands.run(cmd).stdout

    def write_read(self, box, data):
        box.files.write("/tmp/payload", data)
        return bytes(box.files.read("/tmp/payload", format="bytes"))

    def pause_resume(self, box):
        box.pause()
        box.connect()

    def snapshot(self, box):
        return box.create_snapshot().snapshot_id

    def remove_snapshot(self, snapshot):
        Sandbox.delete_snapshot(snapshot)

    def fork(self, box):
        return box.fork(count=1)[0]

    def kill(self, box):
        box.kill()


class Docker:
    name = "docker"

    def __init__(self, cfg):
        self.image = None
        self.client = docker.from_env(timeout=600)

    def import_image(self, archive):
        with open(archive, "rb") as f:
            images = self.client.images.load(f.read())
        self.image = images[0].id

    def remove_image(self):
        self.client.images.remove(self.image, force=True)

    def create(self):
        return self.client.containers.run(self.image, ["sleep", "infinity"], detach=True)

    def run(self, box, cmd):
        result = box.exec_run(["bash", "-l", "-c", cmd])
        if result.exit_code != 0:
            raise SystemExit(f"docker exec {cmd!r}: exit {result.exit_code}")
        return result.output.decode()

    def write_read(self, box, data):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("payload")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        box.put_archive("/tmp", buf.getvalue())
        stream, _ = box.get_archive("/tmp/payload")
        got = io.BytesIO(b"".join(stream))
        with tarfile.open(fileobj=got) as tar:
            return tar.extractfile("payload").read()

    def pause_resume(self, box):
        box.pause()
        box.unpause()

    def snapshot(self, box):
        return box.commit().id

    def remove_snapshot(self, snapshot):
        self.client.images.remove(snapshot, force=True)

    def fork(self, box):
        # What a fork is with Docker: commit, and run the image.
        image = box.commit()
        return self.client.containers.run(image.id, ["sleep", "infinity"], detach=True)

    def kill(self, box):
        box.remove(force=True)


def timed_creates(side, n):
    """n creates, each timed and killed before the next."""
    took = []
    for _ in range(n):
        t, box = timed(side.create)
        took.append(t)
        side.kill(box)
    return took


def measure(side, cfg):
    n, w = cfg["iterations"], cfg["warmup"]
    samples = {}

    def keep(op, i, took):
        if i >= w:
            samples.setdefault(op, []).append(took)

    # Each import starts from nothing: the previous one is removed with its
    # layers (the last one stays for what follows).
    imports = cfg["imports"]
    for i in range(imports):
        took, _ = timed(lambda: side.import_image(cfg["archive"]))
        samples.setdefault("import", []).append(took)
        if i + 1 < imports:
            side.remove_image()

    for i in range(n + w):
        start = clock()
        box = side.create()
        out = side.run(box, "echo hi")
        keep("create_first_command", i, clock() - start)
        if out != "hi\n":
            raise SystemExit(f"{side.name}: echo hi printed {out!r}")
        took, _ = timed(lambda: side.kill(box))
        keep("kill", i, took)

    box = side.create()
    try:
        for i in range(n + w):
            took, _ = timed(lambda: side.run(box, "true"))
            keep("command", i, took)
        for op, size in [("write_read_64k", 64 << 10), ("write_read_16m", 16 << 20)]:
            data = os.urandom(size)
            for i in range(n + w):
                took, got = timed(lambda: side.write_read(box, data))
                if got != data:
                    raise SystemExit(f"{side.name}: {op} read back other bytes")
                keep(op, i, took)
        for i in range(n + w):
            took, _ = timed(lambda: side.pause_resume(box))
            keep("pause_resume", i, took)
        if side.run(box, "echo alive") != "alive\n":
            raise SystemExit(f"{side.name}: not alive after pause and resume")
        # Snapshot and fork a sandbox that wrote 1 MiB of its own.
        side.write_read(box, os.urandom(1 << 20))
        for i in range(n + w):
            took, snapshot = timed(lambda: side.snapshot(box))
            keep("snapshot", i, took)
            side.remove_snapshot(snapshot)
        for i in range(n + w):
            start = clock()
            fork = side.fork(box)
            out = side.run(fork, "cat /tmp/payload | wc -c")
            keep("fork_first_command", i, clock() - start)
            if out.strip() != str(1 << 20):
                raise SystemExit(f"{side.name}: the fork has {out!r} bytes of the payload")
            side.kill(fork)
    finally:
        side.kill(box)

    k = cfg["concurrency"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=k) as pool:
        boxes = list(pool.map(lambda _: side.create(), range(k)))
        samples["concurrent_kill"] = list(pool.map(lambda b: timed(lambda: side.kill(b))[0], boxes))

    # Density: creates at 1 live, then DENSITY idle, then creates again.
    d = cfg["density"]
    memory = {}
    # Hutch's kills answer before their teardowns end: let those finish so
    # that "nothing else running" holds on both sides.
    settled_mem_available()
    samples["create_at_1"] = timed_creates(side, 10)
    before = settled_mem_available()
    idle = []
    for _ in range(d):
        idle.append(side.create())
    after = settled_mem_available()
    memory["per_idle_bytes"] = max(0, before - after) // max(d, 1)
    samples["create_at_n"] = timed_creates(side, 10)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(side.kill, idle))
    return samples, memory


def main():
    cfg = json.loads(sys.argv[1])
    result = {"memory": {}}
    for side in [Hutch(cfg), Docker(cfg)]:
        samples, memory = measure(side, cfg)
        result[side.name] = samples
        result["memory"][side.name] = memory
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
