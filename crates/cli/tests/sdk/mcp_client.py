"""Drives `hutch mcp` with the official MCP Python SDK over stdio.

Usage: mcp_client.py HUTCH_BIN TEMPLATE. The server URL and API key come
from HUTCH_SERVER and HUTCH_API_KEY, passed on to `hutch mcp`. Prints one
`name: value` line per result, then OK.
"""

import json
import os
import sys

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

TOOLS = {
    "create_sandbox": {"template", "timeout_seconds", "envs"},
    "run_command": {"sandbox_id", "command", "cwd", "envs", "timeout_seconds"},
    "run_code": {"sandbox_id", "code", "language", "envs", "timeout_seconds"},
    "write_file": {"sandbox_id", "path", "content"},
    "read_file": {"sandbox_id", "path"},
    "list_files": {"sandbox_id", "path"},
    "kill_sandbox": {"sandbox_id"},
    "list_sandboxes": set(),
}


def text_of(result):
    assert len(result.content) == 1, result
    assert result.content[0].type == "text", result
    return result.content[0].text


async def call(client, name, args, error=False):
    result = await client.call_tool(name, args)
    assert bool(result.is_error) == error, (name, args, result)
    return result


async def main(hutch, template):
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
            info = await client.initialize()
            print("server:", info.server_info.name)

            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == set(TOOLS), sorted(tools)
            for name, props in TOOLS.items():
                schema = tools[name].input_schema
                assert schema["type"] == "object", (name, schema)
                assert set(schema.get("properties", {})) == props, (name, schema)
                assert tools[name].description, name
            assert set(tools["run_command"].input_schema["required"]) == {
                "sandbox_id",
                "command",
            }
            print("tools:", ",".join(sorted(tools)))

            created = await call(
                client,
                "create_sandbox",
                {"template": template, "timeout_seconds": 120, "envs": {"GREETING": "hi"}},
            )
            sid = text_of(created).strip()
            assert sid, created
            print("sandbox:", sid)

            ran = await call(
                client,
                "run_command",
                {
                    "sandbox_id": sid,
                    "command": 'echo "$GREETING $WHO from $(pwd)"; echo oops >&2; exit 3',
                    "cwd": "/tmp",
                    "envs": {"WHO": "mcp"},
                },
            )
            out = ran.structured_content
            assert out == json.loads(text_of(ran)), ran
            assert out["exit_code"] == 3, out
            assert out["stdout"] == "hi mcp from /tmp\n", out
            assert out["stderr"] == "oops\n", out
            print("run:", out["exit_code"], out["stdout"].strip())

            big = await call(
                client,
                "run_command",
                {"sandbox_id": sid, "command": "head -c 100000 /dev/zero | tr '\\0' x"},
            )
            stdout = big.structured_content["stdout"]
            assert stdout.startswith("x" * 65536), stdout[:100]
            assert stdout.endswith("[stdout cut: first 65536 of 100000 bytes shown]"), stdout[-100:]
            print("capped: yes")

            slow = await call(
                client,
                "run_command",
                {"sandbox_id": sid, "command": "echo started; sleep 300; echo never", "timeout_seconds": 1},
                error=True,
            )
            assert "stdout so far:\nstarted\n" in text_of(slow), slow
            print("timed out:", text_of(slow).splitlines()[0])
            ps = await call(client, "run_command", {"sandbox_id": sid, "command": "ps -o args"})
            procs = ps.structured_content["stdout"].splitlines()
            assert any("ps -o args" in p for p in procs), procs
            print("left running:", sum(p.startswith("sleep 300") for p in procs))

            no_kernel = await call(client, "run_code", {"sandbox_id": sid, "code": "1"}, error=True)
            print("no interpreter:", "code-interpreter-v1" in text_of(no_kernel))

            zero = await call(
                client,
                "run_command",
                {"sandbox_id": sid, "command": "true", "timeout_seconds": 0},
                error=True,
            )
            print("zero timeout:", text_of(zero))

            body = "line one\nligne deux é\n"
            await call(
                client,
                "write_file",
                {"sandbox_id": sid, "path": "/tmp/mcp/notes.txt", "content": body},
            )
            read_back = text_of(
                await call(client, "read_file", {"sandbox_id": sid, "path": "/tmp/mcp/notes.txt"})
            )
            assert read_back == body, read_back
            print("read:", json.dumps(read_back))
            listed = await call(client, "list_files", {"sandbox_id": sid, "path": "/tmp/mcp"})
            entries = listed.structured_content["entries"]
            assert entries == [
                {"name": "notes.txt", "type": "file", "size": len(body.encode())}
            ], entries
            print("listed:", entries[0]["name"], entries[0]["type"], entries[0]["size"])

            missing = await call(
                client, "read_file", {"sandbox_id": sid, "path": "/tmp/nope"}, error=True
            )
            print("missing file:", text_of(missing))

            unknown = await call(
                client,
                "run_command",
                {"sandbox_id": "no-such-sandbox", "command": "true"},
                error=True,
            )
            print("unknown sandbox:", text_of(unknown))

            bad = await call(
                client, "create_sandbox", {"template": "no-such-template"}, error=True
            )
            print("unknown template:", text_of(bad))

            running = await call(client, "list_sandboxes", {})
            ids = [s["sandbox_id"] for s in running.structured_content["sandboxes"]]
            assert sid in ids, running
            print("listed sandboxes:", len(ids))

            killed = await call(client, "kill_sandbox", {"sandbox_id": sid})
            print("killed:", text_of(killed))
            after = await call(client, "list_sandboxes", {})
            ids = [s["sandbox_id"] for s in after.structured_content["sandboxes"]]
            assert sid not in ids, after
            print("gone: yes")

            again = await call(client, "kill_sandbox", {"sandbox_id": sid}, error=True)
            print("kill again:", text_of(again))
    print("OK")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
