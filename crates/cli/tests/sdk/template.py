"""The official E2B Python SDK's `Template` builder, unmodified, against a
Hutch server: build a template from another one with ENV, RUN (also as
another user), COPY (a file, a directory, an owner and a mode), USER,
WORKDIR and a start/ready command; create sandboxes from it by name and by
id and check what they see; rebuild it from the cache; a failing step;
tags (a tagged build, get/assign/remove, promoting a build to default, a
sandbox by tag and by build id); the template management routes; and the
upload route's authentication.

Usage: python template.py BASE_TEMPLATE NAME
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
The base template is the Debian test image (bash, python3; its image
environment has PYTHONPATH=/app/lib).
"""

import os
import re
import sys
import tempfile

import httpx
from e2b import BuildException, Sandbox, Template
from checks import check, check_true, done

base = sys.argv[1]
name = sys.argv[2]
api_url = os.environ["E2B_API_URL"]
api_key = os.environ["E2B_API_KEY"]



def write(rel, content):
    path = os.path.join(ctx, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


# The files COPY steps take, in a context directory of their own.
ctx = tempfile.mkdtemp(prefix="hutch-template-")
write("local.txt", "hello from the context\n")
write("conf/app.conf", "port=1\n")
write("conf/sub/extra.conf", "extra=2\n")


def template():
    return (
        Template(file_context_path=ctx)
        .from_template(base)
        .set_envs({"PYTHONPATH": "$PYTHONPATH:/extra", "GREETING": "hello world"})
        .run_cmd("echo built > /built.txt")
        .copy("local.txt", "/srv/")
        .copy("conf", "/etc/app/")
        .set_user("builder")
        .run_cmd("chown builder /srv", user="root")
        # No owner given: the current user's, as with E2B.
        .copy("local.txt", "/opt/owned.txt", mode=0o600)
        .set_workdir("/srv")
        .run_cmd(['whoami > /srv/who.txt', 'echo "$GREETING" > /srv/greeting.txt'])
        .set_start_cmd("echo started > /tmp/started && sleep 3600", "test -f /tmp/started")
    )


def build(t, build_name):
    entries = []
    info = Template.build(t, build_name, on_build_logs=entries.append)
    return info, [str(e.message) for e in entries]


# --- first build -------------------------------------------------------------
info, logs = build(template(), name)
joined = "\n".join(logs)
check(info.name, name, "build info name")
check_true(info.template_id, "build info template id")
check_true("Uploaded 'local.txt'" in joined, f"local.txt uploaded:\n{joined}")
check_true("Uploaded 'conf'" in joined, f"conf uploaded:\n{joined}")
check_true(
    any("RUN echo built > /built.txt" in m for m in logs), f"RUN step logged:\n{joined}"
)
check_true(
    any("RUN chown builder /srv (as root)" in m for m in logs),
    f"RUN as root logged:\n{joined}",
)
check(Template.exists(name), True, "the template exists")
check(Template.exists("no-such-template-here"), False, "an unknown template")

sbx = Sandbox.create(name, timeout=120)


def run(s, cmd):
    return s.commands.run(cmd).stdout


check(run(sbx, "echo $PYTHONPATH"), "/app/lib:/extra\n", "ENV expanded at build")
check(run(sbx, 'echo "$GREETING"'), "hello world\n", "ENV with a space")
check(run(sbx, "pwd"), "/srv\n", "WORKDIR is the default directory")
check(run(sbx, "whoami"), "builder\n", "USER is the default user")
check(run(sbx, "cat /built.txt"), "built\n", "RUN output")
check(run(sbx, "cat /srv/local.txt"), "hello from the context\n", "COPY to a directory")
check(run(sbx, "stat -c %U /srv/local.txt"), "root\n", "copied before USER: root's")
check(
    run(sbx, "cat /etc/app/app.conf /etc/app/sub/extra.conf"),
    "port=1\nextra=2\n",
    "COPY of a directory copies its contents",
)
check(run(sbx, "stat -c '%U %a' /opt/owned.txt"), "builder 600\n", "COPY owner and mode")
check(run(sbx, "cat /srv/who.txt"), "builder\n", "RUN as the template user")
check(run(sbx, "cat /srv/greeting.txt"), "hello world\n", "RUN sees ENV")
check(run(sbx, "cat /tmp/started"), "started\n", "the start command ran")
check(
    run(sbx, "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -c 'sleep 3600' || true")
    != "0\n",
    True,
    "the start command is still running",
)

by_id = Sandbox.create(info.template_id, timeout=60)
check(run(by_id, "whoami"), "builder\n", "a sandbox created by template id")
by_id.kill()

# --- the same build again: every layer from the cache ------------------------
info2, logs2 = build(template(), name)
joined2 = "\n".join(logs2)
check(info2.template_id, info.template_id, "a rebuild keeps the template id")
check_true(
    "Skipping upload of 'local.txt', already cached" in joined2,
    f"files not uploaded twice:\n{joined2}",
)
summary = [m for m in logs2 if "layer steps from the cache" in m]
check(len(summary), 1, f"cache summary line:\n{joined2}")
counts = re.search(r"(\d+) of (\d+) layer steps from the cache", summary[0])
check(counts is not None and counts.group(1) == counts.group(2), True, summary[0])
check(run(sbx, "cat /srv/who.txt"), "builder\n", "the first sandbox survives the rebuild")
sbx.kill()
again = Sandbox.create(name, timeout=60)
check(run(again, "cat /srv/local.txt"), "hello from the context\n", "sandbox of the rebuild")
again.kill()

# --- a failing step -----------------------------------------------------------
failing = (
    Template(file_context_path=ctx)
    .from_template(base)
    .run_cmd("echo about to fail && echo on stderr >&2 && exit 3")
)
try:
    Template.build(failing, f"{name}-bad")
    raise AssertionError("a failing RUN step did not fail the build")
except BuildException as e:
    message = str(e)
    check_true("about to fail" in message, f"the step's output in the error: {message}")
    check_true("on stderr" in message, f"its stderr too: {message}")
    check_true("code 3" in message, f"the exit code: {message}")
check(Template.exists(f"{name}-bad"), False, "a failed build leaves no template")

# --- tags --------------------------------------------------------------------
# A build of `name:v2` (with another tag) leaves the default build alone.
v2_template = (
    Template(file_context_path=ctx)
    .from_template(name)
    .run_cmd("echo two > /srv/version.txt")
)
info3 = Template.build(v2_template, f"{name}:v2", tags=["candidate"])
check(info3.template_id, info.template_id, "a tagged build keeps the template id")
check(sorted(info3.tags), ["candidate", "v2"], "the tags of a tagged build")
v2 = Sandbox.create(f"{name}:v2", timeout=60)
check(run(v2, "cat /srv/version.txt"), "two\n", "a sandbox of name:v2")
v2.kill()
default = Sandbox.create(name, timeout=60)
check(
    run(default, "cat /srv/version.txt 2>/dev/null || echo none"),
    "none\n",
    "the default build is unchanged by name:v2",
)
default.kill()
tags = {t.tag: t.build_id for t in Template.get_tags(info.template_id)}
check(sorted(tags), ["candidate", "default", "v2"], "get_tags")
check(tags["v2"], tags["candidate"], "two tags of one build")
check(tags["v2"] != tags["default"], True, "the default is another build")
check(tags["v2"], info3.build_id, "a tag names the build that made it")

assigned = Template.assign_tags(f"{name}:v2", "stable")
check((assigned.build_id, assigned.tags), (tags["v2"], ["stable"]), "assign_tags")
by_build = Sandbox.create(f"{name}:{tags['v2']}", timeout=60)
check(run(by_build, "cat /srv/version.txt"), "two\n", "a sandbox of name:<build id>")
by_build.kill()

# Promoting a build to `default`: the plain name starts it from now on.
Template.assign_tags(f"{name}:stable", "default")
promoted = Sandbox.create(name, timeout=60)
check(run(promoted, "cat /srv/version.txt"), "two\n", "the promoted default build")
promoted.kill()
Template.remove_tags(name, ["candidate", "v2"])
check(
    sorted(t.tag for t in Template.get_tags(info.template_id)),
    ["default", "stable"],
    "remove_tags",
)
try:
    Template.remove_tags(name, "no-such-tag")
    raise AssertionError("removing an unknown tag succeeded")
except Exception as e:
    check_true("no tag 'no-such-tag'" in str(e), f"unknown tag: {e}")
try:
    Sandbox.create(f"{name}:v2", timeout=30)
    raise AssertionError("a removed tag still starts sandboxes")
except Exception as e:
    check_true("not found" in str(e), f"removed tag: {e}")
try:
    Template.build(template(), f"{name}:bad/tag")
    raise AssertionError("an invalid tag was accepted")
except Exception as e:
    check_true("invalid tag 'bad/tag'" in str(e), f"invalid tag: {e}")

# The template as E2B's management routes show it.
headers = {"X-API-Key": api_key}
listed = httpx.get(f"{api_url}/templates", headers=headers).json()
mine = [t for t in listed if t["templateID"] == info.template_id]
check(len(mine), 1, f"GET /templates lists the template: {listed}")
check((mine[0]["names"], mine[0]["buildStatus"]), ([name], "ready"), "its names and status")
check(mine[0]["buildID"], tags["v2"], "its default build")
check_true(mine[0]["spawnCount"] >= 6, f"its sandboxes are counted: {mine[0]}")
details = httpx.get(f"{api_url}/templates/{name}", headers=headers).json()
check_true(
    tags["v2"] in [b["buildID"] for b in details["builds"]], f"its builds: {details}"
)
patched = httpx.patch(
    f"{api_url}/v2/templates/{info.template_id}", json={"public": True}, headers=headers
)
check((patched.status_code, patched.json()), (200, {"names": [name]}), "PATCH public")
check(
    httpx.get(f"{api_url}/templates/{name}", headers=headers).json()["public"],
    True,
    "the public flag is kept",
)
logs = httpx.get(
    f"{api_url}/templates/{info.template_id}/builds/{info3.build_id}/logs",
    params={"direction": "forward", "limit": 500},
    headers=headers,
).json()["logs"]
check_true(
    any("echo two > /srv/version.txt" in e["message"] for e in logs),
    f"the build's logs: {logs}",
)

# --- the upload route takes its token, not the API key -----------------------
upload = f"{api_url}/hutch/v1/build-files/{'0' * 64}"
check(httpx.put(upload, content=b"x").status_code, 401, "upload without a token")
check(
    httpx.put(upload + "?token=nope", content=b"x", headers={"X-API-Key": api_key}).status_code,
    403,
    "upload with a wrong token",
)
status = httpx.get(
    f"{api_url}/templates/{info.template_id}/builds/nope/status",
    headers={"X-API-Key": api_key},
)
check((status.status_code, "message" in status.json()), (404, True), "unknown build")

done()
