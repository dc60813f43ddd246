"""Drives `hutch mcp --http` with the official MCP Python SDK's streamable
HTTP client.

Usage: mcp_http_client.py URL KEY TEMPLATE. Prints one `name: value` line
per result, then OK.
"""

import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url, key, template):
    # Without the key, or with another one: refused before MCP.
    async with httpx2.AsyncClient() as plain:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            response = await plain.post(
                url,
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Accept": "application/json, text/event-stream", **headers},
            )
            print("refused:", response.status_code, response.json()["code"])

    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                info = await session.initialize()
                print("server:", info.server_info.name)
                tools = sorted(t.name for t in (await session.list_tools()).tools)
                print("tools:", ",".join(tools))
                created = await session.call_tool(
                    "create_sandbox", {"template": template, "envs": {"GREETING": "hi"}}
                )
                assert not created.is_error, created
                sid = created.content[0].text.strip()
                ran = await session.call_tool(
                    "run_command", {"sandbox_id": sid, "command": 'echo "$GREETING over http"'}
                )
                print("run:", ran.structured_content["stdout"].strip())
                killed = await session.call_tool("kill_sandbox", {"sandbox_id": sid})
                assert not killed.is_error, killed
    print("OK")


anyio.run(main, *sys.argv[1:4])
