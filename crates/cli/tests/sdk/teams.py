"""The official E2B Python SDK, unmodified, with two teams' keys: what one
team makes (a sandbox, a snapshot, a volume, a private template), the
other team's key does not find, list, connect to, time, kill or mount;
the first team's things are unchanged afterwards.

Usage: python teams.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_VOLUME_API_URL, E2B_API_KEY
(the first team's key), HUTCH_OTHER_KEY (another team's).
"""

import os
import sys

from e2b import NotFoundException, Sandbox, Template, Volume
from checks import check, check_true, done, raises

template = sys.argv[1]
other = os.environ["HUTCH_OTHER_KEY"]

sbx = Sandbox.create(template, timeout=120)
sid = sbx.sandbox_id
snapshot = sbx.create_snapshot()
vol = Volume.create("team-volume")

# The other team's key finds none of it.
raises("connect", "not found", lambda: Sandbox.connect(sid, api_key=other), NotFoundException)
raises("get_info", "not found", lambda: Sandbox.get_info(sid, api_key=other), NotFoundException)
raises("set_timeout", "not found", lambda: Sandbox.set_timeout(sid, 60, api_key=other), NotFoundException)
check(Sandbox.kill(sid, api_key=other), False, "kill by another team: not found")
listed = Sandbox.list(api_key=other).next_items()
check(sid in [s.sandbox_id for s in listed], False, "not listed for another team")
check(Template.exists(template, api_key=other), False, "a private template does not exist for another team")
raises("create from it", "not found", lambda: Sandbox.create(template, api_key=other))
raises("create from its snapshot", "not found", lambda: Sandbox.create(snapshot.snapshot_id, api_key=other))
check(vol.name in [v.name for v in Volume.list(api_key=other)], False, "its volume is not listed")
raises("its volume", "not found", lambda: Volume.get_info(vol.volume_id, api_key=other))
raises(
    "mount its volume",
    "not found",
    lambda: Sandbox.create(template, volume_mounts={"/v": vol.name}, api_key=other),
)
check(Volume.destroy(vol.volume_id, api_key=other), False, "destroy by another team: not found")
check(len(Sandbox.list_snapshots(api_key=other).next_items()), 0, "no snapshots for another team")

# The first team's things are as they were.
check_true(sbx.is_running(), "still running")
check(sbx.commands.run("echo here").stdout, "here\n", "still answering")
check(Template.exists(template), True, "the template exists for its team")
check(Volume.get_info(vol.volume_id).name, "team-volume", "its volume is there")
check(
    snapshot.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots().next_items()],
    True,
    "its snapshot is listed",
)
check(Sandbox.kill(sid), True, "killed by its team")
check(Volume.destroy(vol.volume_id), True, "its volume destroyed by its team")
done()
