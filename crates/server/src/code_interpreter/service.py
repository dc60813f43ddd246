"""Hutch's code interpreter service.

Runs inside sandboxes of the `code-interpreter-v1` template, started by its
start command, and speaks the HTTP protocol of E2B's code interpreter SDKs
on port 49999:

- `POST /execute` `{code, context_id?, language?, env_vars?}`: runs the code
  in a stateful Jupyter kernel and streams one JSON object per line:
  `stdout` / `stderr` (`text`, `timestamp`), `result` (every MIME
  representation: `text`, `html`, `markdown`, `svg`, `png`, `jpeg`, `pdf`,
  `latex`, `json`, `javascript`, `data`, `chart`, other types in `extra`,
  and `is_main_result`), `error` (`name`, `value`, `traceback`),
  `number_of_executions`, then `end_of_execution`. A client that goes away
  (the SDK's timeout) interrupts the cell.
- `POST /contexts` `{language?, cwd?}`, `GET /contexts`,
  `POST /contexts/{id}/restart`, `DELETE /contexts/{id}`.
- `GET /health`: 200 once the default Python kernel answers.

The environment of the code is not merged here: before every cell the
service asks the sandbox's agent (`POST /environment` on its environment
socket) for the environment a process started now with the call's
`env_vars` would get, and sets exactly that in the kernel; after a call with
`env_vars` the kernel gets the environment without them again. So code run
in a kernel sees the same image, template, sandbox and call precedence as
every other process in the sandbox.
"""

import asyncio
import json
import logging
import os
import sys
import time
import uuid

import aiohttp
from aiohttp import web
from jupyter_client.manager import AsyncKernelManager

PORT = int(os.environ.get("HUTCH_INTERPRETER_PORT", "49999"))
# Where the sandbox's agent answers `POST /environment`.
SOCKET = os.environ.get("HUTCH_ENVIRONMENT_SOCKET", "/run/hutch/environment.sock")
# Kernel spec name per language, and the names accepted for each.
KERNELS = {"python": "python3", "bash": "bash"}
ALIASES = {"py": "python", "python3": "python", "sh": "bash", "shell": "bash"}
# MIME types and the result fields E2B's SDKs read them from.
FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}
# How often a running cell checks whether its client is still there.
POLL = 0.25

log = logging.getLogger("hutch-interpreter")

# Run once in every Python kernel: matplotlib figures get an `e2b/chart`
# representation besides their PNG, the data the SDKs expose as
# `Result.chart` (line, scatter, bar and pie charts; a figure of several
# charts is a `superchart`).
PYTHON_SETUP = r"""
def __hutch_setup_charts():
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    from traitlets import Unicode

    def label_of(artist):
        # matplotlib names unlabeled artists "_child0" and the like.
        label = artist.get_label() or ""
        return "" if label.startswith("_") else label

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return str(v)

    def axis(ax, which):
        ticks = ax.get_xticks() if which == "x" else ax.get_yticks()
        labels = ax.get_xticklabels() if which == "x" else ax.get_yticklabels()
        scale = ax.get_xscale() if which == "x" else ax.get_yscale()
        label = ax.get_xlabel() if which == "x" else ax.get_ylabel()
        return {
            f"{which}_label": label or None,
            f"{which}_unit": None,
            f"{which}_ticks": [number(t) for t in ticks],
            f"{which}_tick_labels": [t.get_text() for t in labels],
            f"{which}_scale": scale,
        }

    def chart_of(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.container import BarContainer
        from matplotlib.patches import Wedge

        title = ax.get_title() or None
        wedges = [p for p in ax.patches if isinstance(p, Wedge)]
        if wedges:
            texts = [t.get_text() for t in ax.texts]
            return {
                "type": "pie",
                "title": title,
                "elements": [
                    {
                        "label": texts[i] if i < len(texts) else "",
                        "angle": float(w.theta2 - w.theta1),
                        "radius": float(w.r),
                    }
                    for i, w in enumerate(wedges)
                ],
            }
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        if bars:
            names = [t.get_text() for t in ax.get_xticklabels()]
            ticks = list(ax.get_xticks())
            elements = []
            for container in bars:
                group = label_of(container)
                for rect in container:
                    center = rect.get_x() + rect.get_width() / 2
                    nearest = min(range(len(ticks)), key=lambda i: abs(ticks[i] - center)) if ticks else None
                    label = names[nearest] if nearest is not None and nearest < len(names) else str(center)
                    elements.append({"label": label, "group": group, "value": float(rect.get_height())})
            chart = {"type": "bar", "title": title, "elements": elements}
            chart.update({k: v for k, v in axis(ax, "x").items() if k in ("x_label", "x_unit")})
            chart.update({k: v for k, v in axis(ax, "y").items() if k in ("y_label", "y_unit")})
            return chart
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        lines = [l for l in ax.get_lines() if len(l.get_xdata()) > 1]
        if scatters or lines:
            if scatters:
                kind = "scatter"
                elements = [
                    {"label": label_of(c), "points": [[number(x), number(y)] for x, y in c.get_offsets()]}
                    for c in scatters
                ]
            else:
                kind = "line"
                elements = [
                    {
                        "label": label_of(l),
                        "points": [[number(x), number(y)] for x, y in zip(l.get_xdata(), l.get_ydata())],
                    }
                    for l in lines
                ]
            chart = {"type": kind, "title": title, "elements": elements}
            chart.update(axis(ax, "x"))
            chart.update(axis(ax, "y"))
            return chart
        return None

    def figure_chart(fig):
        charts = [c for c in (chart_of(ax) for ax in fig.get_axes()) if c]
        if not charts:
            return None
        if len(charts) == 1:
            return charts[0]
        title = fig._suptitle.get_text() if fig._suptitle else None
        return {"type": "superchart", "title": title, "elements": charts}

    class ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = "_repr_e2b_chart_"
        _return_type = dict

        # Not a registered printer: the inline backend drops every printer
        # for `Figure` when pyplot is first imported.
        def __call__(self, obj):
            figure = sys.modules.get("matplotlib.figure")
            if figure is None or not isinstance(obj, figure.Figure):
                return None
            try:
                return figure_chart(obj)
            except Exception:
                return None

    import sys

    shell = get_ipython()
    shell.display_formatter.formatters["e2b/chart"] = ChartFormatter(parent=shell.display_formatter)
    if "e2b/chart" not in shell.display_formatter.active_types:
        shell.display_formatter.active_types.append("e2b/chart")

__hutch_setup_charts()
del __hutch_setup_charts
"""


class RequestError(Exception):
    """An error answered with an HTTP status and E2B's `{code, message}`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def language_of(name):
    if not name:
        return "python"
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    if name not in KERNELS:
        supported = ", ".join(sorted(KERNELS))
        raise RequestError(400, f"language '{name}' is not supported here; supported: {supported}")
    return name


async def agent_environment(session, envs=None):
    """The environment a process started now with `envs` would get, from the agent."""
    async with session.post("http://agent/environment", json={"envs": envs or {}}) as response:
        text = await response.text()
        if response.status != 200:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            status = 400 if response.status == 400 else 502
            raise RequestError(status, f"the sandbox's agent refused the environment: {message}")
        return json.loads(text)


def env_code(language, before, after):
    """Code that turns the kernel's environment from `before` (what the
    service set last) into `after`. Variables the kernel set for itself
    (`MPLBACKEND`, its prompt's) are left alone."""
    gone = [name for name in before if name not in after]
    changed = {name: value for name, value in after.items() if before.get(name) != value}
    if language == "python":
        return (
            "import os as __hutch_os\n"
            f"for __hutch_k in {gone!r}: __hutch_os.environ.pop(__hutch_k, None)\n"
            f"__hutch_os.environ.update({changed!r})\n"
            "del __hutch_os\n"
        )
    lines = [f"unset {name}" for name in gone]
    for name, value in changed.items():
        quoted = "'" + value.replace("'", "'\\''") + "'"
        lines.append(f"export {name}={quoted}")
    return "\n".join(lines) or ":"


def result_line(data, is_main):
    data = dict(data)
    line = {"type": "result", "is_main_result": is_main}
    for mime, field in FIELDS.items():
        if mime in data:
            line[field] = data.pop(mime)
    text = line.get("text")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        # A string's repr, shown as the string (as E2B's service does).
        line["text"] = text[1:-1]
    if data:
        line["extra"] = data
    return line


class Context:
    """One kernel: a language, a working directory, its state."""

    def __init__(self, language, cwd):
        self.id = str(uuid.uuid4())
        self.language = language
        self.cwd = cwd
        self.manager = AsyncKernelManager(kernel_name=KERNELS[language])
        self.client = None
        self.lock = asyncio.Lock()
        # The environment the kernel was started with or last given.
        self.applied = {}

    def describe(self):
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    async def start(self, env):
        if not os.path.isdir(self.cwd):
            raise RequestError(400, f"working directory '{self.cwd}' does not exist")
        await self.manager.start_kernel(cwd=self.cwd, env=env)
        self.launched_with = dict(env)
        self.applied = dict(env)
        await self.connect()
        await self.setup()

    async def setup(self):
        if self.language == "python":
            await self.quietly(PYTHON_SETUP)

    async def connect(self):
        self.client = self.manager.client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=120)

    async def restart(self):
        if self.client is not None:
            self.client.stop_channels()
        await self.manager.restart_kernel(now=True)
        self.applied = dict(self.launched_with)
        await self.connect()
        await self.setup()

    async def shutdown(self):
        if self.client is not None:
            self.client.stop_channels()
        await self.manager.shutdown_kernel(now=True)

    async def set_env(self, env):
        """Gives the kernel exactly `env` (besides its own variables)."""
        if env != self.applied:
            await self.quietly(env_code(self.language, self.applied, env))
            self.applied = dict(env)

    async def quietly(self, code):
        """Runs `code` without output or history; raises on its error."""
        msg_id = self.client.execute(code, silent=True, store_history=False)
        async for _ in self.messages(msg_id, None):
            pass
        # A silent cell publishes no error: its reply says how it went
        # (replies of earlier cells, never read, are skipped).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                reply = await self.client.get_shell_msg(timeout=1)
            except Exception:
                continue
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            if reply["content"].get("status") == "error":
                why = reply["content"].get("evalue", "")
                raise RequestError(500, f"preparing the kernel failed: {why}")
            return

    async def messages(self, msg_id, gone):
        """The iopub messages of one request until the kernel is idle again.

        `gone()` says whether the client left: then the cell is interrupted
        and its remaining messages are read and dropped."""
        interrupted = False
        while True:
            try:
                msg = await self.client.get_iopub_msg(timeout=POLL)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not await self.manager.is_alive():
                    raise KernelDied()
                if gone is not None and not interrupted and gone():
                    interrupted = True
                    await self.manager.interrupt_kernel()
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status":
                if msg["content"].get("execution_state") == "idle":
                    return
                continue
            yield msg


class KernelDied(Exception):
    pass


class Service:
    def __init__(self):
        self.contexts = {}
        self.defaults = {}
        self.session = None
        self.ready = False
        self.base_cwd = os.getcwd()
        self.default_lock = asyncio.Lock()

    async def new_context(self, language, cwd):
        context = Context(language, cwd or self.base_cwd)
        await context.start((await agent_environment(self.session))["envs"])
        self.contexts[context.id] = context
        return context

    async def default_context(self, language):
        async with self.default_lock:
            context = self.defaults.get(language)
            if context is None or context.id not in self.contexts:
                context = await self.new_context(language, None)
                self.defaults[language] = context
            return context

    # ----- routes -----

    async def health(self, request):
        if not self.ready:
            return web.json_response({"code": 503, "message": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    async def create_context(self, request):
        body = await json_body(request)
        language = language_of(body.get("language"))
        cwd = body.get("cwd") or None
        context = await self.new_context(language, cwd)
        return web.json_response(context.describe())

    async def list_contexts(self, request):
        return web.json_response([c.describe() for c in self.contexts.values()])

    def context_named(self, request):
        context = self.contexts.get(request.match_info["id"])
        if context is None:
            raise RequestError(404, f"context '{request.match_info['id']}' not found")
        return context

    async def restart_context(self, request):
        context = self.context_named(request)
        async with context.lock:
            await context.restart()
        return web.json_response(context.describe())

    async def remove_context(self, request):
        context = self.context_named(request)
        async with context.lock:
            del self.contexts[context.id]
            await context.shutdown()
        return web.Response(status=204)

    async def execute(self, request):
        body = await json_body(request)
        code = body.get("code")
        if not isinstance(code, str):
            raise RequestError(400, "'code' must be a string")
        context_id = body.get("context_id")
        language = body.get("language")
        if context_id and language:
            raise RequestError(400, "give a context or a language, not both")
        envs = body.get("env_vars") or {}
        if not isinstance(envs, dict) or not all(isinstance(v, str) for v in envs.values()):
            raise RequestError(400, "'env_vars' must map names to strings")
        if context_id:
            context = self.contexts.get(context_id)
            if context is None:
                raise RequestError(404, f"context '{context_id}' not found")
        else:
            context = await self.default_context(language_of(language))
        # The environment as the agent resolves it, with and without the call's own layer.
        env = (await agent_environment(self.session, envs))["envs"]
        plain = (await agent_environment(self.session))["envs"] if envs else env

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        def gone():
            transport = request.transport
            return transport is None or transport.is_closing()

        async def send(line):
            if not gone():
                await response.write((json.dumps(line) + "\n").encode())

        async with context.lock:
            try:
                await context.set_env(env)
                msg_id = context.client.execute(code, store_history=True, allow_stdin=False)
                async for msg in context.messages(msg_id, gone):
                    kind, content = msg["msg_type"], msg["content"]
                    if kind == "stream":
                        await send({
                            "type": "stdout" if content.get("name") == "stdout" else "stderr",
                            "text": content.get("text", ""),
                            "timestamp": time.time_ns(),
                        })
                    elif kind in ("execute_result", "display_data"):
                        await send(result_line(content.get("data", {}), kind == "execute_result"))
                    elif kind == "error":
                        await send({
                            "type": "error",
                            "name": content.get("ename", ""),
                            "value": content.get("evalue", ""),
                            "traceback": "\n".join(content.get("traceback", [])),
                        })
                    elif kind == "execute_input":
                        await send({
                            "type": "number_of_executions",
                            "execution_count": content.get("execution_count", 0),
                        })
                if envs:
                    await context.set_env(plain)
                await send({"type": "end_of_execution"})
            except KernelDied:
                await send({
                    "type": "error",
                    "name": "KernelDied",
                    "value": "the kernel died while running the code; its context was restarted",
                    "traceback": "",
                })
                await send({"type": "unexpected_end_of_execution"})
                await context.restart()
        try:
            await response.write_eof()
        except ConnectionError:
            pass
        return response


async def json_body(request):
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError as e:
        raise RequestError(400, f"the body is not JSON: {e}")
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    return body


@web.middleware
async def errors(request, handler):
    try:
        return await handler(request)
    except RequestError as e:
        return web.json_response({"code": e.status, "message": e.message}, status=e.status)


async def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    service = Service()
    app = web.Application(middlewares=[errors], client_max_size=64 << 20)
    app.add_routes([
        web.get("/health", service.health),
        web.post("/execute", service.execute),
        web.post("/contexts", service.create_context),
        web.get("/contexts", service.list_contexts),
        web.post("/contexts/{id}/restart", service.restart_context),
        web.delete("/contexts/{id}", service.remove_context),
    ])
    service.session = aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=SOCKET),
        timeout=aiohttp.ClientTimeout(total=30),
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", PORT).start()
    log.info("listening on port %d", PORT)
    # The default Python kernel, so that the first cell does not wait for one.
    await service.default_context("python")
    service.ready = True
    log.info("ready")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
