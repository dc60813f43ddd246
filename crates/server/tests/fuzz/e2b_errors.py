"""A schemathesis check: every error answer of Hutch's REST API is E2B's
error body, {"code": <the HTTP status>, "message": "<text>"}.

The volume content API answers {"code": "<NAME>", "message": "<text>"} (a
code name, as E2B's does); the OAuth endpoints add RFC 6749's "error" to
E2B's body. The CLI login pages are HTML.
"""

import json

import schemathesis


@schemathesis.check
def e2b_error_body(ctx, response, case):
    status = response.status_code
    if status < 400:
        return None
    path = case.operation.path
    media = response.headers.get("content-type", [""])
    media = media[0] if isinstance(media, list) else media
    if path == "/hutch/v1/cli-login/api/cli" and media.startswith("text/html"):
        return None
    if not media.startswith("application/json"):
        raise AssertionError(
            f"error {status} of {case.operation.label} is {media or 'untyped'}, not JSON"
        )
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"error {status} is not JSON: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        raise AssertionError(f"error {status} has no string 'message': {body!r}")
    code = body.get("code")
    if path.startswith("/volumecontent/"):
        if not isinstance(code, str) or not code:
            raise AssertionError(f"volume content error {status} has no code name: {body!r}")
    elif code != status or isinstance(code, bool):
        raise AssertionError(f"error {status} has code {code!r}: {body!r}")
    return None


@schemathesis.serializer("application/x-tar", "application/octet-stream")
def raw_bytes(ctx, value):
    """Tar archives and file contents are sent as the bytes generated for
    them (arbitrary bytes: the server must refuse them cleanly)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode()
