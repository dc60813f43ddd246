"""The official E2B Python SDK, unmodified, against a Hutch server:
snapshots (create, start sandboxes from one, list, delete) and forks.

Usage: python snapshots.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
The template is the Debian test image (bash, sudo for `user`).
"""

import sys

from e2b import Sandbox
from checks import check, done, pause_filesystem

template = sys.argv[1]


def sh(sbx, cmd):
    return sbx.commands.run(cmd).stdout.strip()


def snapshot_ids(**filters):
    pages = Sandbox.list_snapshots(**filters)
    ids = []
    while pages.has_next:
        ids += [s.snapshot_id for s in pages.next_items()]
    return ids


source = Sandbox.create(
    template, timeout=300, envs={"FROM_CREATE": "create-value"}, metadata={"team": "a"}
)
source.files.write("/home/user/kept.txt", "kept in the snapshot")
sh(source, "sudo rm /etc/issue.net && mkdir -p /home/user/dir/sub && echo x > /home/user/dir/sub/f")

# Unnamed: known by its id. The source runs on, unchanged.
info = source.create_snapshot()
check(info.names, [], "an unnamed snapshot's names")
check(sh(source, "cat /home/user/kept.txt"), "kept in the snapshot", "the source after its snapshot")
source.files.write("/home/user/after.txt", "written after the snapshot")

child = Sandbox.create(info.snapshot_id, timeout=120)
check(child.files.read("/home/user/kept.txt"), "kept in the snapshot", "a file in the snapshot")
check(sh(child, "cat /home/user/dir/sub/f"), "x", "a new directory tree")
check(sh(child, "test -e /etc/issue.net; echo $?"), "1", "a file the sandbox removed")
check(sh(child, "test -e /home/user/after.txt; echo $?"), "1", "a file written after it")
# The environment: the image's, and the snapshotted sandbox's own.
check(sh(child, "echo $MY_APP_CONFIG"), "/etc/myapp/config.json", "the image's variable")
check(sh(child, "echo $FROM_CREATE"), "create-value", "the sandbox's variable")
check(sh(child, "whoami; pwd"), sh(source, "whoami; pwd"), "user and working directory")
# A sandbox of the snapshot sets its own variables over it.
# (Named with E2B's default tag, as E2B's snapshot ids are.)
own = Sandbox.create(f"{info.snapshot_id}:default", timeout=60, envs={"FROM_CREATE": "own"})
check(sh(own, "echo $FROM_CREATE"), "own", "a new sandbox's own variable")
own.kill()

# Named: replaced by a new snapshot of the same name.
named = source.create_snapshot(name="snap-test")
check((named.snapshot_id, named.names), ("snap-test", ["snap-test"]), "a named snapshot")
again = source.create_snapshot(name="snap-test")
check(again.snapshot_id, "snap-test", "the name taken again")
from_named = Sandbox.create("snap-test", timeout=60)
check(from_named.files.read("/home/user/after.txt"), "written after the snapshot", "the newest")
from_named.kill()

listed = snapshot_ids()
check(info.snapshot_id in listed and "snap-test" in listed, True, f"listed: {listed}")
check(listed.count("snap-test"), 1, "a replaced snapshot is listed once")
check(sorted(snapshot_ids(sandbox_id=source.sandbox_id)), sorted([info.snapshot_id, "snap-test"]), "by sandbox")
check(snapshot_ids(sandbox_id=child.sandbox_id), [], "a sandbox with no snapshot")

# Forks: the source's files, variables and metadata; the source runs on.
forks = source.fork(count=2)
check(len(forks), 2, "two forks")
for fork in forks:
    check(isinstance(fork, Sandbox), True, f"a fork: {fork!r}")
    check(fork.files.read("/home/user/after.txt"), "written after the snapshot", "a fork's file")
    check(sh(fork, "echo $FROM_CREATE"), "create-value", "a fork's variable")
    check(Sandbox.get_info(fork.sandbox_id).metadata, {"team": "a"}, "a fork's metadata")
forks[0].files.write("/home/user/kept.txt", "changed in a fork")
check(source.files.read("/home/user/kept.txt"), "kept in the snapshot", "a fork's change stays there")
check(forks[1].files.read("/home/user/kept.txt"), "kept in the snapshot", "and out of its sibling")
check(Sandbox.get_info(source.sandbox_id).state.value, "running", "the source after forking")

# A sandbox paused with its files only is read as it is, and stays paused.
stopped = Sandbox.create(template, timeout=120)
stopped.files.write("/home/user/stopped.txt", "from a stopped sandbox")
pause_filesystem(stopped)
cold = stopped.create_snapshot()
check(Sandbox.get_info(stopped.sandbox_id).state.value, "paused", "still paused after its snapshot")
from_cold = Sandbox.create(cold.snapshot_id, timeout=60)
check(from_cold.files.read("/home/user/stopped.txt"), "from a stopped sandbox", "a stopped sandbox's file")
from_cold.kill()
back = Sandbox.connect(stopped.sandbox_id)
check(back.files.read("/home/user/stopped.txt"), "from a stopped sandbox", "the sandbox boots again after")
back.kill()
check(Sandbox.delete_snapshot(cold.snapshot_id), True, "deleting that snapshot")

# Deleting: refused while a sandbox of it runs, then done once.
try:
    Sandbox.delete_snapshot(info.snapshot_id)
    raise AssertionError("a snapshot in use was deleted")
except AssertionError:
    raise
except Exception as e:
    check("running sandbox" in str(e), True, f"deleting a snapshot in use: {e}")
child.kill()
check(Sandbox.delete_snapshot(info.snapshot_id), True, "deleting a snapshot")
check(Sandbox.delete_snapshot(info.snapshot_id), False, "deleting it again")
check(Sandbox.delete_snapshot("snap-test"), True, "deleting a named snapshot")
check(info.snapshot_id in snapshot_ids(), False, "a deleted snapshot is not listed")
for fork in forks:
    fork.kill()
source.kill()
done()
