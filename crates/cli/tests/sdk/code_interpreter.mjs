// E2B's code interpreter SDK for JavaScript, unmodified, against Hutch's
// code interpreter template.
//
// Usage: node code_interpreter.mjs   (E2B_SDK_DIR: where the pinned packages are)
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.

import { createRequire } from 'node:module'
import path from 'node:path'

import { check, done } from './checks.mjs'

const require = createRequire(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'index.js'))
const { Sandbox } = require('@e2b/code-interpreter')

// No template: the SDK's default, code-interpreter-v1.
const sbx = await Sandbox.create({ envs: { SBX_VAR: 'sandbox', OVERRIDE: 'sandbox' } })
try {
  await sbx.runCode('x = 1')
  check((await sbx.runCode('x + 1')).text, '2', 'state kept')

  const seen = []
  const started = Date.now()
  const streamed = await sbx.runCode(
    'import time\nfor i in range(3):\n    print(f"line {i}", flush=True)\n    time.sleep(0.4)',
    { onStdout: (m) => seen.push([m.line, Date.now() - started]) },
  )
  check(streamed.logs.stdout.join(''), 'line 0\nline 1\nline 2\n', 'stdout')
  const total = Date.now() - started
  check(seen[0][1] < total - 500, true, `line 0 arrived while the cell ran: ${JSON.stringify(seen)} of ${total} ms`)

  const chart = await sbx.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()')
  check(chart.results.filter((r) => r.png && r.png.startsWith('iVBORw0KGgo')).length, 1, 'a PNG chart')
  check(chart.results[0].chart.type, 'line', 'chart data')
  check(chart.results[0].chart.elements[0].points, [[0, 1], [1, 2], [2, 3]], 'line points')

  const failed = await sbx.runCode('1 / 0')
  check(failed.error.name, 'ZeroDivisionError', 'error name')
  check(failed.error.traceback.includes('ZeroDivisionError'), true, 'traceback')

  const env = 'import os\n[os.environ.get(k) for k in ("MY_APP_CONFIG", "SBX_VAR", "OVERRIDE")]'
  check((await sbx.runCode(env)).text, "['/etc/myapp/config.json', 'sandbox', 'sandbox']", 'image and sandbox env')
  check(
    (await sbx.runCode(env, { envs: { OVERRIDE: 'call' } })).text,
    "['/etc/myapp/config.json', 'sandbox', 'call']",
    "the call's env",
  )
  check((await sbx.runCode(env)).text, "['/etc/myapp/config.json', 'sandbox', 'sandbox']", 'no leak')

  const bash = await sbx.runCode('echo $SBX_VAR', { language: 'bash' })
  check(bash.logs.stdout.join(''), 'sandbox\n', 'bash')

  const ctx = await sbx.createCodeContext({ cwd: '/tmp', language: 'python' })
  check((await sbx.runCode('import os\nos.getcwd()', { context: ctx })).text, '/tmp', 'context cwd')
  await sbx.runCode('y = 7', { context: ctx })
  await sbx.restartCodeContext(ctx)
  check((await sbx.runCode('y', { context: ctx })).error.name, 'NameError', 'restart clears state')
  check((await sbx.listCodeContexts()).some((c) => c.id === ctx.id), true, 'listed')
  await sbx.removeCodeContext(ctx)
  check((await sbx.listCodeContexts()).some((c) => c.id === ctx.id), false, 'removed')

  let timedOut = false
  try {
    await sbx.runCode('import time\ntime.sleep(60)', { timeoutMs: 2000 })
  } catch (e) {
    timedOut = true
  }
  check(timedOut, true, 'timeout')
  const after = Date.now()
  check((await sbx.runCode('x')).text, '1', 'the context after a timeout')
  check(Date.now() - after < 15000, true, 'the interrupted cell was stopped')
} finally {
  await sbx.kill()
}
done()
