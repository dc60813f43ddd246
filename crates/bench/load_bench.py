"""Many concurrent clients of one Hutch server through the official E2B
Python SDK (its asyncio API, `AsyncSandbox`), as users call it.

Run by `hutch-bench --load N` (which starts the server, imports the
template, installs the pinned SDK and checks the host afterwards):

    python load_bench.py CLIENTS ROUNDS TEMPLATE

with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at the server
(the SDK's own checks left on). CLIENTS tasks of one event loop run at
once; each, ROUNDS times: creates a sandbox, runs `echo`, a command that
exits 3, one printing about 60 KB, writes a file, reads it back, lists its
directory, kills the sandbox. Every answer is checked; a wrong one counts
as an error of its operation, like an exception. After an error the round
stops and its sandbox is killed (that kill measured like any other).

Prints one JSON object: per operation its latencies (seconds) and errors
(count and first messages), the wall time, the rounds that went through
without an error, the most sandboxes live at once
(created and not yet killed, as the clients saw them) and every sandbox id.
Progress goes to stderr.
"""

import asyncio
import json
import os
import sys
import time

from e2b import AsyncSandbox, CommandExitException

OPERATIONS = [
    "create",
    "run echo",
    "run exit 3",
    "run 60 KB output",
    "write file",
    "read file",
    "list dir",
    "kill",
]
KEEP_MESSAGES = 5
BIG_LINES = 12_000
BIG_OUTPUT = "".join(f"{i}\n" for i in range(1, BIG_LINES + 1))


class Mismatch(Exception):
    pass


class Load:
    def __init__(self):
        self.latencies = {op: [] for op in OPERATIONS}
        self.errors = {op: {"count": 0, "first": []} for op in OPERATIONS}
        self.live = 0
        self.peak = 0
        self.ids = []
        self.rounds_done = 0
        self.rounds_ok = 0

    async def timed(self, op, coro):
        start = time.perf_counter()
        try:
            result = await coro
        except Exception as e:
            self.error(op, e)
            raise
        self.latencies[op].append(time.perf_counter() - start)
        return result

    def error(self, op, e):
        errors = self.errors[op]
        errors["count"] += 1
        if len(errors["first"]) < KEEP_MESSAGES:
            errors["first"].append(f"{type(e).__name__}: {e}"[:500])

    def check(self, op, got, want):
        if got != want:
            e = Mismatch(f"got {summary(got)}, expected {summary(want)}")
            self.error(op, e)
            raise e

    async def client(self, client, rounds, template):
        for r in range(rounds):
            await self.round(client, r, template)
            self.rounds_done += 1

    async def round(self, client, r, template):
        try:
            sbx = await self.timed("create", AsyncSandbox.create(template, timeout=300))
        except Exception:
            return
        self.ids.append(sbx.sandbox_id)
        self.live += 1
        self.peak = max(self.peak, self.live)
        ok = False
        try:
            await self.work(sbx, client, r)
            ok = True
        except Exception:
            pass
        try:
            await self.timed("kill", sbx.kill())
        except Exception:
            ok = False
        self.live -= 1
        if ok:
            self.rounds_ok += 1

    async def work(self, sbx, client, r):
        out = await self.timed("run echo", sbx.commands.run(f"echo hello {client}"))
        self.check("run echo", (out.exit_code, out.stdout), (0, f"hello {client}\n"))

        start = time.perf_counter()
        try:
            await sbx.commands.run("echo failing >&2; exit 3")
            e = Mismatch("exited 0, expected 3")
            self.error("run exit 3", e)
            raise e
        except CommandExitException as e:
            took = time.perf_counter() - start
            self.check("run exit 3", (e.exit_code, e.stderr), (3, "failing\n"))
            self.latencies["run exit 3"].append(took)
        except Mismatch:
            raise
        except Exception as e:
            self.error("run exit 3", e)
            raise

        out = await self.timed("run 60 KB output", sbx.commands.run(f"seq 1 {BIG_LINES}"))
        self.check("run 60 KB output", (out.exit_code, out.stdout), (0, BIG_OUTPUT))

        data = os.urandom(16 * 1024)
        path = f"/tmp/load/c{client}-r{r}.bin"
        await self.timed("write file", sbx.files.write(path, data))
        back = await self.timed("read file", sbx.files.read(path, format="bytes"))
        self.check("read file", bytes(back), data)
        entries = await self.timed("list dir", sbx.files.list("/tmp/load"))
        self.check("list dir", [e.name for e in entries], [f"c{client}-r{r}.bin"])

    async def progress(self, total):
        started = time.perf_counter()
        while True:
            await asyncio.sleep(10)
            print(
                f"load: {self.rounds_done}/{total} rounds after {time.perf_counter() - started:.0f} s, "
                f"{self.live} sandboxes live",
                file=sys.stderr,
                flush=True,
            )


def summary(value):
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:120]}... ({len(text)} chars)"


async def main():
    clients, rounds, template = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    load = Load()
    reporter = asyncio.create_task(load.progress(clients * rounds))
    start = time.perf_counter()
    await asyncio.gather(*(load.client(c, rounds, template) for c in range(clients)))
    wall = time.perf_counter() - start
    reporter.cancel()
    json.dump(
        {
            "wall_seconds": wall,
            "peak_live": load.peak,
            "rounds_ok": load.rounds_ok,
            "operations": [
                {"name": op, "latencies": load.latencies[op], **load.errors[op]}
                for op in OPERATIONS
            ],
            "ids": load.ids,
        },
        sys.stdout,
    )


asyncio.run(main())
