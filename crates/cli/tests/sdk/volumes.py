"""The official E2B Python SDK's volumes, unmodified, against a Hutch server
started with `--volume-size-mb 32`: create, list and get volumes; mount one
into two sandboxes at once (by the Volume and by its name) and share files
through it; its quota; what a mount may not be; the data outliving the
sandboxes; the volume content API (the Volume's file methods, with its
token); deleting it (its data stays while a sandbox uses it).

Usage: python volumes.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_VOLUME_API_URL, E2B_API_KEY.
"""

import sys
import uuid

from e2b import CommandExitException, Sandbox, Volume
from checks import check, done, pause_filesystem, raises

template = sys.argv[1]



name = f"vol-{uuid.uuid4().hex[:8]}"
vol = Volume.create(name)
check(str(uuid.UUID(vol.volume_id)), vol.volume_id, "a volume id is a UUID")
check(vol.name, name, "its name")
raises("a taken name", "already exists", lambda: Volume.create(name))
raises("an invalid name", "Invalid volume name", lambda: Volume.create("bad name!"))
check(name in [v.name for v in Volume.list()], True, "listed")
info = Volume.get_info(vol.volume_id)
check((info.volume_id, info.name, bool(info.token)), (vol.volume_id, name, True), "get_info")
raises("an unknown volume", "not found", lambda: Volume.get_info(str(uuid.uuid4())))

# Two sandboxes share it: one mounts the Volume, the other names it.
a = Sandbox.create(template, volume_mounts={"/mnt/shared": vol}, timeout=120)
b = Sandbox.create(template, volume_mounts={"/data": name}, timeout=120)
a.commands.run("echo from-a > /mnt/shared/a.txt")
check(b.commands.run("cat /data/a.txt").stdout, "from-a\n", "b reads what a wrote")
b.files.write("/data/b.txt", "from-b")
check(a.files.read("/mnt/shared/b.txt"), "from-b", "a reads what b wrote")
check(
    b.commands.run("stat -c %U /data/a.txt").stdout,
    a.commands.run("whoami").stdout,
    "the writer's user owns the file in both",
)
options = a.commands.run("grep ' /mnt/shared ' /proc/self/mountinfo").stdout
check(("nosuid" in options, "nodev" in options), (True, True), f"mount options: {options}")

# Its size is its quota.
size = int(a.commands.run("df -m /mnt/shared | tail -1 | awk '{print $2}'").stdout)
check(20 <= size <= 32, True, f"the volume's size ({size} MiB)")
try:
    a.commands.run("dd if=/dev/zero of=/mnt/shared/big bs=1M count=64")
    raise AssertionError("writing past the quota succeeded")
except CommandExitException as e:
    check("No space left" in e.stderr, True, f"past the quota: {e.stderr}")
a.commands.run("rm /mnt/shared/big")
b.commands.run("head -c 1000000 /dev/zero > /data/mb")

# What the SDK reports of a sandbox's mounts (releases that have the field).
details = Sandbox.get_info(a.sandbox_id)
if "volume_mounts" in [f.name for f in details.__dataclass_fields__.values()]:
    check(details.volume_mounts, [{"name": name, "path": "/mnt/shared"}], "info.volume_mounts")

# Paused with its files only, a sandbox boots again with its volumes.
pause_filesystem(a)
b.files.write("/data/while-paused.txt", "written while a was paused")
a = Sandbox.connect(a.sandbox_id)
check(
    a.files.read("/mnt/shared/while-paused.txt"),
    "written while a was paused",
    "a sees the volume again after its filesystem pause",
)

# What a mount may not be.
raises("a relative path", "path must be absolute",
       lambda: Sandbox.create(template, volume_mounts={"rel": vol}, timeout=30))
raises("an unknown volume", "volume 'no-such-volume' not found",
       lambda: Sandbox.create(template, volume_mounts={"/v": "no-such-volume"}, timeout=30))
raises("a reserved path", "reserved",
       lambda: Sandbox.create(template, volume_mounts={"/proc/x": vol}, timeout=30))

# The data outlives the sandboxes.
a.kill()
b.kill()
c = Sandbox.create(template, volume_mounts={"/v": vol}, timeout=120)
check(c.commands.run("cat /v/a.txt /v/b.txt").stdout, "from-a\nfrom-b", "kept")

# The content API: the Volume's own file methods, with its token.
def kind(e):
    return getattr(e.type, "value", e.type)


written = vol.write_file("/docs/readme.txt", "hello volume", force=True)
check((kind(written), written.size, written.path), ("file", 12, "/docs/readme.txt"), "write_file")
check(vol.read_file("/docs/readme.txt"), "hello volume", "read_file")
check(c.commands.run("cat /v/docs/readme.txt").stdout, "hello volume", "the sandbox sees it")
c.commands.run("echo from-sandbox > /v/docs/from-sandbox.txt")
check(vol.read_file("/docs/from-sandbox.txt"), "from-sandbox\n", "the API sees the sandbox's file")
check(
    sorted(e.path for e in vol.list("/docs")),
    ["/docs/from-sandbox.txt", "/docs/readme.txt"],
    "list",
)
check(kind(vol.make_dir("/made")), "directory", "make_dir")
raises("make_dir of an existing directory", "already exists", lambda: vol.make_dir("/made"))
vol.make_dir("/made/a/b", force=True)
check((vol.exists("/made/a/b"), vol.exists("/nope")), (True, False), "exists")
check(len(vol.list("/made", depth=3)), 2, "a deeper listing")
check(vol.get_info("/docs/readme.txt").mode, 0o666, "a new file's mode")
check(vol.update_metadata("/docs/readme.txt", mode=0o600).mode, 0o600, "update_metadata")
raises("writing over a file without force", "already exists",
       lambda: vol.write_file("/docs/readme.txt", "again"))
vol.write_file("/docs/readme.txt", "replaced", force=True)
check(vol.read_file("/docs/readme.txt"), "replaced", "force replaces")
raises("a write past the quota", "full",
       lambda: vol.write_file("/big.bin", b"0" * (40 << 20), force=True))
vol.remove("/big.bin")
# A symlink a sandbox plants resolves inside the volume, never on the host.
c.commands.run("ln -s /etc/passwd /v/link")
link = vol.get_info("/link")
check((kind(link), link.target), ("symlink", "/etc/passwd"), "a symlink and its target")
raises("reading through it", "not found", lambda: vol.read_file("/link"))
vol.remove("/link")
vol.remove("/docs")
check(vol.exists("/docs"), False, "remove")
raises("removing the root", "root", lambda: vol.remove("/"))
other = Volume.create(f"{name}-other")
raises("another volume's token", "not valid",
       lambda: Volume(volume_id=vol.volume_id, name=name, token=other.token).read_file("/v"))
check(Volume.destroy(other.volume_id), True, "destroy the other")

# Deleted while c uses it: gone from the API, c keeps its files until it ends.
check(Volume.destroy(vol.volume_id), True, "destroy")
check(Volume.destroy(vol.volume_id), False, "destroy again")
check(name in [v.name for v in Volume.list()], False, "not listed once deleted")
check(c.commands.run("cat /v/a.txt").stdout, "from-a\n", "its sandbox still reads it")
raises("mounting a deleted volume", "not found",
       lambda: Sandbox.create(template, volume_mounts={"/v": name}, timeout=30))
raises("the content of a deleted volume", "not found",
       lambda: vol.read_file("/a.txt"))
again = Volume.create(name)
check(again.volume_id != vol.volume_id, True, "the name is free again")
c.kill()
check(Volume.destroy(again.volume_id), True, "destroy the second")

done()
