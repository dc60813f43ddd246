"""The official E2B Python SDK, unmodified, against a Hutch control plane
and the nodes that joined it: what one step of the cluster test asks.

Usage:
  python cluster.py create TEMPLATE N   create N sandboxes at once (each runs a
                                        command and a file round trip); prints
                                        "SANDBOX <id>" lines
  python cluster.py exec ID...          each still answers, with its environment
  python cluster.py lost ID             its node is lost: info says so, and a
                                        command fails naming the node
  python cluster.py kill ID...          kills them
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
"""

import sys
from concurrent.futures import ThreadPoolExecutor

from e2b import Sandbox
from checks import check, check_true, done, raises

mode = sys.argv[1]


def create(template, i):
    sbx = Sandbox.create(template, envs={"WHO": f"s{i}"}, timeout=600)
    out = sbx.commands.run("echo $WHO $MY_APP_CONFIG; pwd")
    check(out.stdout, f"s{i} /etc/myapp/config.json\n/app\n", "command in a new sandbox")
    sbx.files.write("/tmp/round-trip", f"data {i}")
    check(sbx.files.read("/tmp/round-trip"), f"data {i}", "file round trip")
    return sbx.sandbox_id


if mode == "create":
    template, n = sys.argv[2], int(sys.argv[3])
    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(lambda i: create(template, i), range(n)))
    check(len(set(ids)), n, "distinct sandboxes")
    for sid in ids:
        print(f"SANDBOX {sid}")
elif mode == "exec":
    for sid in sys.argv[2:]:
        sbx = Sandbox.connect(sid)
        out = sbx.commands.run("echo alive $MY_APP_CONFIG")
        check(out.stdout, "alive /etc/myapp/config.json\n", f"sandbox {sid} answers")
elif mode == "lost":
    sid = sys.argv[2]
    info = Sandbox.get_info(sid)
    check(info.sandbox_id, sid, "info of a sandbox on a lost node")
    sbx = Sandbox.connect(sid)
    raises("a command on a lost node", "lost", lambda: sbx.commands.run("echo hi"))
elif mode == "kill":
    for sid in sys.argv[2:]:
        check_true(Sandbox.kill(sid), f"kill {sid}")
else:
    raise SystemExit(f"unknown mode {mode}")
done()
