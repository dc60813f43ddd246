"""What the suite's Python SDK scripts share: checks that count, and the
SDK's filesystem-only pause whatever its release. A script imports it from
its own directory (Python puts a script's directory first on its path)."""

import inspect

count = 0


def check(actual, expected, what):
    """`actual` must equal `expected`."""
    global count
    if actual != expected:
        raise AssertionError(f"{what}: expected {expected!r}, got {actual!r}")
    count += 1


def check_true(value, what):
    check(bool(value), True, what)


def raises(what, needle, f, kind=Exception):
    """`f()` must raise `kind` with `needle` in its message."""
    global count
    try:
        f()
    except kind as e:
        if needle not in str(e):
            raise AssertionError(f"{what}: {needle!r} not in {e!r}")
        count += 1
        return
    raise AssertionError(f"{what}: no error")


def pause_filesystem(sbx):
    """`mode="filesystem"`, or its older spelling `keep_memory=False` (older
    SDKs take unknown keywords silently)."""
    from e2b.sandbox_sync.sandbox_api import SandboxApi

    if "mode" in inspect.signature(SandboxApi._cls_pause).parameters:
        return sbx.pause(mode="filesystem")
    return sbx.pause(keep_memory=False)


def done():
    """The line the test runner looks for."""
    print(f"OK {count} checks")
