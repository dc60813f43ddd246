"""E2B's code interpreter SDK, unmodified, against Hutch's code interpreter
template: stateful cells, streamed output, every MIME representation,
errors, timeouts and interrupts, contexts, Bash, and the environment
precedence (image, sandbox, call) in the kernel."""

import time

from e2b import TimeoutException
from e2b_code_interpreter import Sandbox

from checks import check, check_true, done, raises

# No template: the SDK's default, `code-interpreter-v1`.
sbx = Sandbox.create(envs={"SBX_VAR": "sandbox", "OVERRIDE": "sandbox"})
try:
    # State is kept between cells; the value of the last line is the main result.
    first = sbx.run_code("x = 41\nx + 1")
    check(first.text, "42", "main result")
    check(first.error, None, "no error")
    check(sbx.run_code("x").text, "41", "state kept")
    count = sbx.run_code("1").execution_count
    check(sbx.run_code("2").execution_count, count + 1, "execution count")
    check(sbx.run_code("'a string'").text, "a string", "a string's value")

    # stdout and stderr, streamed to callbacks as they are printed.
    seen = []
    started = time.monotonic()
    execution = sbx.run_code(
        "import sys, time\n"
        "for i in range(3):\n"
        "    print(f'line {i}', flush=True)\n"
        "    time.sleep(0.4)\n"
        "print('oops', file=sys.stderr)",
        on_stdout=lambda m: seen.append((m.line, time.monotonic() - started)),
        on_stderr=lambda m: seen.append((m.line, time.monotonic() - started)),
    )
    check("".join(execution.logs.stdout), "line 0\nline 1\nline 2\n", "stdout")
    check("".join(execution.logs.stderr), "oops\n", "stderr")
    check_true(seen[0][0].startswith("line 0"), f"first streamed line: {seen}")
    total = time.monotonic() - started
    check_true(seen[0][1] < total - 0.5, f"line 0 arrived while the cell ran: {seen}, {total}")

    # Errors: name, value, traceback; the context goes on.
    failed = sbx.run_code("def f():\n    return 1 / 0\nf()")
    check(failed.error.name, "ZeroDivisionError", "error name")
    check(failed.error.value, "division by zero", "error value")
    check_true("f()" in failed.error.traceback, "traceback")
    errors = []
    sbx.run_code("undefined_name", on_error=errors.append)
    check(errors[0].name, "NameError", "on_error")
    check(sbx.run_code("x").text, "41", "state after errors")

    # Every representation the kernel returns.
    rich = sbx.run_code(
        "from IPython.display import display, HTML, Markdown, SVG, Latex, JSON, Javascript\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('# title'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" height=\"1\"></svg>'))\n"
        "display(Latex(r'$\\alpha$'))\n"
        "display(JSON({'k': [1, 2]}))\n"
        "display(Javascript('console.log(1)'))\n"
        "class Custom:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/plain': 'custom', 'application/x-hutch': 'payload'}\n"
        "display(Custom())\n"
        "import pandas as pd\n"
        "pd.DataFrame({'a': [1, 2], 'b': [3, 4]})"
    )
    results = rich.results
    check(results[0].html, "<b>bold</b>", "html")
    check(results[1].markdown, "# title", "markdown")
    check_true(results[2].svg.startswith("<svg"), "svg")
    check(results[3].latex, "$\\alpha$", "latex")
    check(results[4].json, {"k": [1, 2]}, "json")
    check(results[5].javascript, "console.log(1)", "javascript")
    check(results[6].text, "custom", "custom text")
    check(results[6].extra, {"application/x-hutch": "payload"}, "extra")
    check([r.is_main_result for r in results], [False] * 7 + [True], "main result flags")
    check_true("<table" in results[7].html and "a" in results[7].text, "a DataFrame")

    chart = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()"
    )
    pngs = [r for r in chart.results if r.png]
    check(len(pngs), 1, "one PNG chart")
    check_true(pngs[0].png.startswith("iVBORw0KGgo"), "base64 PNG")
    line = pngs[0].chart
    check(line.type.value, "line", "chart type")
    check(line.elements[0].points, [(1.0, 1.0), (2.0, 4.0), (3.0, 9.0)], "line points")
    bars = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.bar(['a', 'b'], [3, 5], label='sales')\n"
        "plt.title('Q')\nplt.ylabel('units')\nplt.show()"
    ).results[0].chart
    check(bars.type.value, "bar", "bar chart")
    check((bars.title, bars.y_label), ("Q", "units"), "bar chart title and label")
    check(
        [(e.label, e.group, e.value) for e in bars.elements],
        [("a", "sales", 3.0), ("b", "sales", 5.0)],
        "bars",
    )
    pie = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.pie([1, 3], labels=['p', 'q'])\nplt.show()"
    ).results[0].chart
    check([(e.label, e.angle) for e in pie.elements], [("p", 90.0), ("q", 270.0)], "pie")
    jpeg = sbx.run_code(
        "from PIL import Image\nfrom IPython.display import display\nimport io\n"
        "b = io.BytesIO(); Image.new('RGB', (2, 2)).save(b, 'JPEG')\n"
        "from IPython.display import Image as I\ndisplay(I(data=b.getvalue(), format='jpeg'))"
    )
    check_true(jpeg.results[0].jpeg.startswith("/9j/"), "base64 JPEG")

    # The environment: image ENV, the sandbox's envs, the call's envs, in
    # that precedence, the call's for that call only; the kernel runs as the
    # template's user in its WORKDIR.
    env = "import os\n[os.environ.get(k) for k in ('MY_APP_CONFIG', 'SBX_VAR', 'OVERRIDE', 'CALL_VAR')]"
    check(
        sbx.run_code(env).text,
        "['/etc/myapp/config.json', 'sandbox', 'sandbox', None]",
        "image and sandbox env in the kernel",
    )
    check(
        sbx.run_code(env, envs={"OVERRIDE": "call", "CALL_VAR": "c"}).text,
        "['/etc/myapp/config.json', 'sandbox', 'call', 'c']",
        "the call's env",
    )
    check(
        sbx.run_code(env).text,
        "['/etc/myapp/config.json', 'sandbox', 'sandbox', None]",
        "the call's env did not leak",
    )
    sub = sbx.run_code(
        "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo $OVERRIDE'], capture_output=True, text=True).stdout, end='')",
        envs={"OVERRIDE": "child"},
    )
    check(sub.logs.stdout, ["child\n"], "a child process of the cell")
    who = sbx.run_code("import os, getpass\n(getpass.getuser(), os.getcwd())").text
    check(who, "('user', '/home/user')", "user and cwd")
    check(
        sbx.commands.run("echo $MY_APP_CONFIG $SBX_VAR").stdout,
        "/etc/myapp/config.json sandbox\n",
        "commands see the same",
    )

    # Bash.
    bash = sbx.run_code("echo $SBX_VAR $OVERRIDE; whoami", language="bash", envs={"OVERRIDE": "b"})
    check("".join(bash.logs.stdout), "sandbox b\nuser\n", "bash")
    check("".join(sbx.run_code("echo $OVERRIDE", language="bash").logs.stdout), "sandbox\n", "bash env reset")

    # Contexts.
    ctx = sbx.create_code_context(cwd="/tmp", language="python")
    check(ctx.cwd, "/tmp", "context cwd")
    check(sbx.run_code("import os\nos.getcwd()", context=ctx).text, "/tmp", "code runs in its cwd")
    sbx.run_code("y = 7", context=ctx)
    check(sbx.run_code("y", context=ctx).text, "7", "context state")
    check(sbx.run_code("'y' in globals()").text, "False", "contexts are separate")
    check_true(ctx.id in [c.id for c in sbx.list_code_contexts()], "listed")
    sbx.restart_code_context(ctx)
    check(sbx.run_code("y", context=ctx).error.name, "NameError", "restart clears state")
    sbx.remove_code_context(ctx)
    check_true(ctx.id not in [c.id for c in sbx.list_code_contexts()], "removed")
    raises("a removed context", "not found", lambda: sbx.run_code("1", context=ctx))
    raises("language and context", "", lambda: sbx.run_code("1", language="python", context=ctx))

    # A timeout interrupts the cell; the context goes on at once.
    raises(
        "timeout",
        "",
        lambda: sbx.run_code("import time\ntime.sleep(60)", timeout=2),
        kind=TimeoutException,
    )
    after = time.monotonic()
    check(sbx.run_code("x", timeout=20).text, "41", "the context after a timeout")
    check_true(time.monotonic() - after < 15, "the interrupted cell was stopped")
finally:
    sbx.kill()
done()
