"""Drives `hutch mcp`'s run_code tool with the official MCP Python SDK over
stdio, in a sandbox of the code interpreter template.

Usage: mcp_run_code.py HUTCH_BIN, with HUTCH_SERVER and HUTCH_API_KEY set.
Prints one `name: value` line per result, then OK.
"""

import os
import sys

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


async def call(client, name, args, error=False):
    result = await client.call_tool(name, args)
    assert bool(result.is_error) == error, (name, args, result)
    return result


async def main(hutch):
    params = StdioServerParameters(
        command=hutch,
        args=["mcp"],
        env={
            "HUTCH_SERVER": os.environ["HUTCH_SERVER"],
            "HUTCH_API_KEY": os.environ["HUTCH_API_KEY"],
        },
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as client:
            await client.initialize()
            created = await call(
                client,
                "create_sandbox",
                {"template": "code-interpreter-v1", "envs": {"STAGE": "sandbox"}},
            )
            sid = created.content[0].text.strip()

            first = await call(client, "run_code", {"sandbox_id": sid, "code": "x = 6 * 7\nprint('hi')\nx"})
            out = first.structured_content
            print("value:", out["results"][0]["text"], out["stdout"].strip(), out["error"])
            again = await call(client, "run_code", {"sandbox_id": sid, "code": "x + 1"})
            print("state:", again.structured_content["results"][0]["text"])

            env = await call(
                client,
                "run_code",
                {
                    "sandbox_id": sid,
                    "code": "import os\n(os.environ['STAGE'], os.environ.get('CALL'), os.environ['MY_APP_CONFIG'])",
                    "envs": {"CALL": "c"},
                },
            )
            print("env:", env.structured_content["results"][0]["text"])

            chart = await call(
                client,
                "run_code",
                {
                    "sandbox_id": sid,
                    "code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
                },
            )
            images = [c for c in chart.content if c.type == "image"]
            print("chart:", len(images), images[0].mime_type, chart.structured_content["results"][0]["formats"])

            failed = await call(client, "run_code", {"sandbox_id": sid, "code": "1 / 0"})
            print("error:", failed.structured_content["error"]["name"])

            bash = await call(
                client, "run_code", {"sandbox_id": sid, "code": "echo $STAGE", "language": "bash"}
            )
            print("bash:", bash.structured_content["stdout"].strip())

            slow = await call(
                client,
                "run_code",
                {"sandbox_id": sid, "code": "import time\nprint('started', flush=True)\ntime.sleep(60)", "timeout_seconds": 2},
                error=True,
            )
            print("timed out:", slow.content[0].text.splitlines()[0])
            after = await call(client, "run_code", {"sandbox_id": sid, "code": "x"})
            print("after:", after.structured_content["results"][0]["text"])

            await call(client, "kill_sandbox", {"sandbox_id": sid})
    print("OK")


anyio.run(main, sys.argv[1])
