"""The official E2B Python SDK's filesystem API, unmodified, against Hutch.

Usage: python files.py TEMPLATE
"""

import sys
import time

from e2b import FileType, FilesystemEventType, Sandbox
from checks import check, done

template = sys.argv[1]


sbx = Sandbox.create(template, timeout=120)
fs = sbx.files

# write / read, as the default user and as root.
info = fs.write("/tmp/hello.txt", "hello from the sdk\n")
check(info.path, "/tmp/hello.txt", "write returns the path")
check(fs.read("/tmp/hello.txt"), "hello from the sdk\n", "read text")
check(bytes(fs.read("/tmp/hello.txt", format="bytes")), b"hello from the sdk\n", "read bytes")
check(sbx.commands.run("cat /tmp/hello.txt").stdout, "hello from the sdk\n", "a command sees the file")
fs.write("/home/user/nested/dir/f.txt", "x", user="user")
check(
    sbx.commands.run("stat -c %U:%G /home/user/nested/dir /home/user/nested/dir/f.txt", user="root").stdout,
    "user:user\nuser:user\n",
    "created files and parents belong to the requesting user",
)
binary = bytes(range(256)) * 1000
fs.write("/tmp/blob.bin", binary)
check(bytes(fs.read("/tmp/blob.bin", format="bytes")), binary, "binary round trip")

# exists / list / make_dir / rename / remove.
check(fs.exists("/tmp/hello.txt"), True, "exists")
check(fs.exists("/tmp/nope.txt"), False, "not exists")
check(fs.make_dir("/tmp/newdir/sub"), True, "make_dir")
check(fs.make_dir("/tmp/newdir/sub"), False, "make_dir on an existing dir")
fs.write("/tmp/newdir/a.txt", "a")
names = sorted(e.name for e in fs.list("/tmp/newdir"))
check(names, ["a.txt", "sub"], "list")
types = {e.name: e.type for e in fs.list("/tmp/newdir")}
check(types["sub"], FileType.DIR, "directory type")
check(types["a.txt"], FileType.FILE, "file type")
moved = fs.rename("/tmp/newdir/a.txt", "/tmp/newdir/b.txt")
check(moved.path, "/tmp/newdir/b.txt", "rename")
check(fs.exists("/tmp/newdir/a.txt"), False, "renamed away")
fs.remove("/tmp/newdir")
check(fs.exists("/tmp/newdir"), False, "remove")

# watch (the sync SDK polls: CreateWatcher / GetWatcherEvents).
fs.make_dir("/tmp/watched/sub")
handle = fs.watch_dir("/tmp/watched", recursive=True)
fs.write("/tmp/watched/new.txt", "w")
fs.write("/tmp/watched/sub/deep.txt", "d")
events = []
deadline = time.time() + 10
while time.time() < deadline and not {"new.txt", "sub/deep.txt"} <= {e.name for e in events}:
    events.extend(handle.get_new_events())
    time.sleep(0.1)
handle.stop()
seen = {(e.name, e.type) for e in events}
check(("new.txt", FilesystemEventType.CREATE) in seen, True, f"watch sees a create ({seen})")
check(("sub/deep.txt", FilesystemEventType.CREATE) in seen, True, f"recursive watch ({seen})")

sbx.kill()
done()
