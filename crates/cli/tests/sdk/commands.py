"""The official E2B Python SDK, unmodified, against a Hutch server.

Usage: python commands.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
The template is the Debian test image of docs/environment.md (bash, sudo,
a user `user`, Env with MY_APP_CONFIG, PYTHONPATH, EMPTY_VAR, TRICKY,
OVERRIDE=image and /opt/tool/bin on PATH, WorkingDir /app).
"""

import sys
import time

from e2b import CommandExitException, Sandbox
from checks import check, done

template = sys.argv[1]


sbx = Sandbox.create(
    template,
    envs={"OVERRIDE": "sandbox", "SBX_ONLY": "s"},
    metadata={"suite": "sdk-commands"},
    timeout=120,
)
run = sbx.commands.run

# The image's environment, through the SDK's login shell.
check(run("echo $MY_APP_CONFIG").stdout, "/etc/myapp/config.json\n", "image ENV")
check(run("command -v mytool").stdout, "/opt/tool/bin/mytool\n", "image PATH in a login shell")
check(run("echo $PYTHONPATH").stdout, "/app/lib\n", "PYTHONPATH")
check(run("printenv TRICKY").stdout, "a=b c  d\n", "value with = and spaces")
check(run("echo ${EMPTY_VAR+set}").stdout, "set\n", "empty value kept")
check(run("pwd").stdout, "/app\n", "image WORKDIR")

# Sandbox and process layers.
check(run("echo $OVERRIDE $SBX_ONLY").stdout, "sandbox s\n", "sandbox envs")
check(run("echo $OVERRIDE", envs={"OVERRIDE": "process"}).stdout, "process\n", "process envs")
check(run("echo $OVERRIDE").stdout, "sandbox\n", "process envs do not leak")
check(run("echo $PATH", envs={"PATH": "/custom:/usr/bin:/bin"}).stdout, "/custom:/usr/bin:/bin\n", "process PATH in a login shell")
check(run("env | cut -d= -f1 | sort | uniq -d").stdout, "", "no duplicate names")
check(run("echo $LEAK", envs={"LEAK": "1"}).stdout, "1\n", "process env")
check(run("echo ${LEAK-unset}").stdout, "unset\n", "no leak")
check(run("sudo -n sh -c 'echo ${LEAK-unset}'", user="user").stdout, "unset\n", "no leak through sudo")
check(run("sudo -n whoami", user="user").stdout, "root\n", "passwordless sudo as user")

# cwd and user.
check(run("pwd", cwd="/tmp").stdout, "/tmp\n", "cwd")
check(run("whoami", user="root").stdout, "root\n", "user root")
check(run("whoami; echo $HOME; id -u", user="user").stdout, "user\n/home/user\n1000\n", "user user")

# Exit codes and streams.
try:
    run("echo out; echo err >&2; exit 3")
    raise AssertionError("exit 3 did not raise")
except CommandExitException as e:
    check(e.exit_code, 3, "exit code")
    check(e.stdout, "out\n", "stdout of a failed command")
    check(e.stderr, "err\n", "stderr of a failed command")
seen = []
run("for i in 1 2 3; do echo line$i; done", on_stdout=lambda s: seen.append(s))
check("".join(seen), "line1\nline2\nline3\n", "streamed stdout callback")

# Background command, list, connect, kill.
handle = run("sleep 60", background=True)
pids = [p.pid for p in sbx.commands.list()]
check(handle.pid in pids, True, "background process listed")
check(sbx.commands.kill(handle.pid), True, "kill")
time.sleep(0.2)
check(handle.pid in [p.pid for p in sbx.commands.list()], False, "killed process gone")

counter = run("for i in 1 2 3 4 5; do echo tick$i; sleep 0.3; done", background=True)
attached = sbx.commands.connect(counter.pid)
result = attached.wait()
check("tick5" in result.stdout, True, "connect receives later output")

# stdin.
cat = run("cat", background=True, stdin=True)
sbx.commands.send_stdin(cat.pid, "hello stdin\n")
time.sleep(0.3)
sbx.commands.kill(cat.pid)
try:
    cat.wait()
except CommandExitException as e:
    check("hello stdin" in e.stdout, True, "stdin reached the process")

# Sandbox lifecycle.
info = sbx.get_info()
check(info.sandbox_id, sbx.sandbox_id, "get_info")
check(info.metadata.get("suite"), "sdk-commands", "metadata")
sbx.set_timeout(60)
check(sbx.is_running(), True, "running")
sbx.kill()
check(sbx.is_running(), False, "killed")

done()
