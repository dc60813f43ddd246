"""The official E2B Python SDK, unmodified, with domain names in a sandbox's
egress rules: everything denied (ALL_TRAFFIC) but one name, which the
sandbox then reaches over HTTP while another name on the same address
stays out; `update_network` swaps the names at once.

Usage: python network_names.py TEMPLATE
Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY; HUTCH_ALLOWED_NAME
and HUTCH_OTHER_NAME, two names of one HTTP server on port 80 that the
server's nameservers (`hutch serve --dns`) resolve.
"""

import os
import sys

from e2b import ALL_TRAFFIC, CommandExitException, Sandbox
from checks import check, check_true, done

template = sys.argv[1]
allowed = os.environ["HUTCH_ALLOWED_NAME"]
other = os.environ["HUTCH_OTHER_NAME"]
BODY = "hello from the fake internet"


failures = []


def fetch(sbx, host):
    """What the sandbox gets from http://HOST/ (empty when it cannot; why
    is kept for the report)."""
    script = (
        "import urllib.request;"
        f"print(urllib.request.urlopen('http://{host}/', timeout=20).read().decode())"
    )
    try:
        return sbx.commands.run(f'python3 -c "{script}"', timeout=60).stdout
    except CommandExitException as e:
        failures.append(f"{host}: {e.stderr.strip().splitlines()[-1:]}")
        return ""


def reached(sbx, host, what):
    check_true(BODY in fetch(sbx, host), f"{what} (failures so far: {failures})")


sbx = Sandbox.create(
    template,
    network={"allow_out": [allowed], "deny_out": [ALL_TRAFFIC]},
    timeout=120,
)
reached(sbx, allowed, "the allowed name is reached")
check(fetch(sbx, other), "", "another name on the same address is not")

sbx.update_network({"allow_out": [other], "deny_out": [ALL_TRAFFIC]})
reached(sbx, other, "the newly allowed name is reached")
check(fetch(sbx, allowed), "", "the name no longer allowed is not")

sbx.update_network({"deny_out": [ALL_TRAFFIC]})
check(fetch(sbx, other), "", "no names: nothing")
sbx.kill()
done()
