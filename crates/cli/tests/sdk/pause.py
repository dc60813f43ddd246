"""The official E2B Python SDK, unmodified, against a Hutch server: a
filesystem-only pause and connect, connect with on_resume="reboot", the
lifecycle of a create (pause at the timeout, auto-resume by a request).

Usage: python pause.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
The template is the Debian test image (bash, procps).
"""

import sys
import time

from e2b import Sandbox, SandboxState
from checks import check, pause_filesystem, done

template = sys.argv[1]



def running_commands(sbx):
    return sbx.commands.run("ps -eo args").stdout


def wait_for_state(sandbox_id, state, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if Sandbox.get_info(sandbox_id).state == state:
            return
        time.sleep(0.2)
    raise AssertionError(f"{sandbox_id} never became {state}")


# A filesystem-only pause keeps the files and the sandbox's variables;
# connect boots it again on them, without its processes.
sbx = Sandbox.create(template, timeout=120, envs={"FROM_CREATE": "create-value"})
sbx.files.write("/home/user/kept.txt", "kept across the pause")
sbx.commands.run("sleep 1000", background=True)
check("sleep 1000" in running_commands(sbx), True, "a background process")
who = sbx.commands.run("whoami; pwd; hostname").stdout
check(pause_filesystem(sbx), True, "filesystem pause")
check(pause_filesystem(sbx), False, "pausing a paused sandbox")
check(Sandbox.get_info(sbx.sandbox_id).state, SandboxState.PAUSED, "state paused")
back = Sandbox.connect(sbx.sandbox_id)
check(Sandbox.get_info(sbx.sandbox_id).state, SandboxState.RUNNING, "state running")
check(back.files.read("/home/user/kept.txt"), "kept across the pause", "file kept")
check(back.commands.run("echo $FROM_CREATE").stdout, "create-value\n", "variables kept")
check(back.commands.run("whoami; pwd; hostname").stdout, who, "user, workdir, hostname kept")
check("sleep 1000" in running_commands(back), False, "processes stopped")
back.kill()

# connect(on_resume="reboot") boots a sandbox paused in memory again on its
# files.
sbx = Sandbox.create(template, timeout=120)
sbx.files.write("/tmp/note", "note")
sbx.commands.run("sleep 1000", background=True)
check(sbx.pause(), True, "memory pause")
back = Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
check(back.files.read("/tmp/note"), "note", "file after a reboot")
check("sleep 1000" in running_commands(back), False, "processes after a reboot")
back.kill()

# Paused at its timeout, then resumed by the first command that comes.
sbx = Sandbox.create(
    template, timeout=4, lifecycle={"on_timeout": "pause", "auto_resume": True}
)
sbx.commands.run("echo 42 > /tmp/n")
info = Sandbox.get_info(sbx.sandbox_id)
if info.lifecycle is not None:
    check(info.lifecycle, {"on_timeout": "pause", "auto_resume": True}, "lifecycle")
wait_for_state(sbx.sandbox_id, SandboxState.PAUSED, 30)
check(sbx.commands.run("cat /tmp/n").stdout, "42\n", "resumed by a command")
check(Sandbox.get_info(sbx.sandbox_id).state, SandboxState.RUNNING, "running again")
sbx.kill()

# Paused at its timeout keeping only its files; connect resumes it.
sbx = Sandbox.create(
    template, timeout=4, lifecycle={"on_timeout": {"action": "pause", "keep_memory": False}}
)
sbx.files.write("/home/user/f", "written")
wait_for_state(sbx.sandbox_id, SandboxState.PAUSED, 30)
back = Sandbox.connect(sbx.sandbox_id)
check(back.files.read("/home/user/f"), "written", "file after a filesystem auto-pause")
back.kill()

done()
