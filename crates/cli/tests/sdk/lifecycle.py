"""The official E2B Python SDK, unmodified, against a Hutch server: pause and
connect (resume), listing with metadata and state filters, metrics, PTY,
background commands, and a user port through the front door.

Usage: python lifecycle.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
The template is the Debian test image (bash, python3).
"""

import os
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx
from e2b import CommandExitException, PtySize, Sandbox, SandboxQuery, SandboxState
from checks import check, done, raises

template = sys.argv[1]
api_url = os.environ["E2B_API_URL"]


def listed(**query):
    paginator = Sandbox.list(query=SandboxQuery(**query))
    ids = []
    while paginator.has_next:
        ids.extend(s.sandbox_id for s in paginator.next_items())
    return ids


tag = f"lifecycle-{os.getpid()}"
sbx = Sandbox.create(template, metadata={"suite": tag, "role": "main"}, timeout=120)
other = Sandbox.create(template, metadata={"suite": tag, "role": "other"}, timeout=120)

# Pause with a process streaming output; connect resumes it and the output
# arrives whole.
counter = sbx.commands.run(
    "for i in $(seq 1 20); do echo $i; sleep 0.1; done", background=True
)
time.sleep(0.5)
check(sbx.pause(), True, "pause")
check(sbx.pause(), False, "pausing a paused sandbox")
check(Sandbox.get_info(sbx.sandbox_id).state, SandboxState.PAUSED, "state paused")
check(sbx.is_running(), False, "a paused sandbox does not answer")

check(sbx.sandbox_id in listed(state=[SandboxState.PAUSED]), True, "listed paused")
check(sbx.sandbox_id in listed(state=[SandboxState.RUNNING]), False, "not listed running")
check(other.sandbox_id in listed(state=[SandboxState.RUNNING]), True, "other listed running")
check(
    sorted(listed(metadata={"suite": tag})),
    sorted([sbx.sandbox_id, other.sandbox_id]),
    "metadata filter, both states",
)
check(
    listed(metadata={"suite": tag, "role": "main"}, state=[SandboxState.PAUSED]),
    [sbx.sandbox_id],
    "metadata and state filters",
)
check(
    listed(metadata={"suite": tag, "role": "main"}, state=[SandboxState.RUNNING]),
    [],
    "metadata and state filters exclude",
)

time.sleep(1)
sbx.connect()
check(sbx.is_running(), True, "running after connect")
check(Sandbox.get_info(sbx.sandbox_id).state, SandboxState.RUNNING, "state running")
result = counter.wait()
check(result.stdout, "".join(f"{i}\n" for i in range(1, 21)), "output across pause")
# Connecting to a running sandbox is fine too.
again = Sandbox.connect(sbx.sandbox_id)
check(again.commands.run("echo still").stdout, "still\n", "connect to a running sandbox")

# Metrics.
sbx.commands.run("head -c 4000000 /dev/urandom > /tmp/blob")
# Every running sandbox is sampled every few seconds: wait for a sample
# taken after the write.
deadline = time.time() + 30
while True:
    metrics = sbx.get_metrics()
    if metrics and metrics[-1].disk_used >= 4000000:
        break
    if time.time() > deadline:
        raise AssertionError(f"no metrics sample counts the blob: {metrics}")
    time.sleep(1)
stamps = [x.timestamp for x in metrics]
check(stamps, sorted(stamps), "samples oldest first")
check(len(set(stamps)), len(stamps), "one sample per time")
later = sbx.get_metrics(start=datetime.now(timezone.utc) + timedelta(hours=1))
check(later, [], "no samples after now")
m = metrics[-1]
check(m.cpu_count >= 1, True, "cpu count")
check(0 <= m.cpu_used_pct <= 100, True, "cpu percent")
check(0 < m.mem_used < m.mem_total, True, "memory")
check(m.disk_used >= 4000000, True, "disk used counts the blob")
check(m.disk_total > m.disk_used, True, "disk total")

# PTY: input, output, resize, kill.
pty = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.send_stdin(pty.pid, b"echo hi-$((20+22))\n")
sbx.pty.resize(pty.pid, PtySize(rows=30, cols=100))
sbx.pty.send_stdin(pty.pid, b"stty size\n")
sbx.pty.send_stdin(pty.pid, b"exit\n")
seen = []
pty.wait(on_pty=lambda data: seen.append(data))
screen = b"".join(seen).decode(errors="replace")
check("hi-42" in screen, True, "pty output")
check("30 100" in screen, True, "pty resized")
pty = sbx.pty.create(PtySize(rows=24, cols=80))
check(sbx.pty.kill(pty.pid), True, "pty kill")
try:
    pty.wait()
except CommandExitException:
    pass
check(pty.pid in [p.pid for p in sbx.commands.list()], False, "killed pty gone")

# Background command, connect, kill.
sleeper = sbx.commands.run("sleep 600", background=True)
attached = sbx.commands.connect(sleeper.pid)
check(attached.pid, sleeper.pid, "connect to a background command")
check(attached.kill(), True, "kill through the connected handle")
raises("waiting for a killed command", "", attached.wait, CommandExitException)

# A user port, addressed the SDK's way (sandbox.get_host).
sbx.commands.run(
    "mkdir -p /srv && echo hello-port > /srv/index.html && "
    "cd /srv && (python3 -m http.server 8080 > /dev/null 2>&1 &)"
)
host = sbx.get_host(8080)
check(host.startswith(f"8080-{sbx.sandbox_id}."), True, "get_host")
body = None
for _ in range(100):
    r = httpx.get(f"{api_url}/index.html", headers={"Host": host})
    if r.status_code == 200:
        body = r.text
        break
    time.sleep(0.1)
check(body, "hello-port\n", "user port through get_host")
r = httpx.get(f"{api_url}/", headers={"Host": sbx.get_host(8081)})
check(r.status_code, 502, "nothing on 8081")
check("no server is listening on port 8081" in r.json()["message"], True, "502 message")

# A private sandbox: requests to its ports need its traffic access token;
# they reach the server in it with the masked Host, without the token.
private = Sandbox.create(
    template,
    network={"allow_public_traffic": False, "mask_request_host": "app.internal:${PORT}"},
    timeout=120,
)
token = private.traffic_access_token
check(isinstance(token, str) and len(token) >= 32, True, "a traffic access token")
check(sbx.traffic_access_token, None, "public sandboxes have none")
private.files.write(
    "/tmp/echo.py",
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        seen = self.headers.get('Host', '') + '|' + self.headers.get('e2b-traffic-access-token', '-')\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(seen)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(seen.encode())\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "http.server.HTTPServer(('127.0.0.1', 8080), H).serve_forever()\n",
)
private.commands.run("python3 /tmp/echo.py", background=True)
private_host = private.get_host(8080)
for _ in range(100):
    r = httpx.get(
        f"{api_url}/", headers={"Host": private_host, "e2b-traffic-access-token": token}
    )
    if r.status_code == 200:
        break
    time.sleep(0.1)
check(
    (r.status_code, r.text),
    (200, "app.internal:8080|-"),
    "with the token: served, with the masked Host and without the token",
)
r = httpx.get(f"{api_url}/", headers={"Host": private_host})
check(r.status_code, 403, "without the token: refused")
check("e2b-traffic-access-token" in r.json()["message"], True, "the refusal names the header")
r = httpx.get(
    f"{api_url}/", headers={"Host": private_host, "e2b-traffic-access-token": "x" * len(token)}
)
check(r.status_code, 403, "with a wrong token: refused")
check(private.commands.run("echo agent").stdout, "agent\n", "the agent needs no traffic token")
private.kill()

other.kill()
sbx.kill()
check(sbx.sandbox_id in listed(metadata={"suite": tag}), False, "killed not listed")

done()
