// The official E2B JavaScript SDK, unmodified, against a Hutch server.
//
// Usage: node commands.mjs TEMPLATE   (with NODE_PATH pointing at the SDK)
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
// The template is the Debian test image of docs/environment.md.

import http from 'node:http'
import { createRequire } from 'node:module'
import path from 'node:path'

import { check, done } from './checks.mjs'

const require = createRequire(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'index.js'))
const { Sandbox, CommandExitError } = require('e2b')

const template = process.argv[2]

const sbx = await Sandbox.create(template, {
  envs: { OVERRIDE: 'sandbox', SBX_ONLY: 's' },
  metadata: { suite: 'sdk-js' },
  timeoutMs: 120_000,
})
const run = (cmd, opts) => sbx.commands.run(cmd, opts)

check((await run('echo $MY_APP_CONFIG')).stdout, '/etc/myapp/config.json\n', 'image ENV')
check((await run('command -v mytool')).stdout, '/opt/tool/bin/mytool\n', 'image PATH in a login shell')
check((await run('printenv TRICKY')).stdout, 'a=b c  d\n', 'value with = and spaces')
check((await run('echo ${EMPTY_VAR+set}')).stdout, 'set\n', 'empty value kept')
check((await run('pwd')).stdout, '/app\n', 'image WORKDIR')
check((await run('echo $OVERRIDE $SBX_ONLY')).stdout, 'sandbox s\n', 'sandbox envs')
check((await run('echo $OVERRIDE', { envs: { OVERRIDE: 'process' } })).stdout, 'process\n', 'process envs')
check((await run('echo $OVERRIDE')).stdout, 'sandbox\n', 'process envs do not leak')
check((await run('env | cut -d= -f1 | sort | uniq -d')).stdout, '', 'no duplicate names')
check((await run('pwd', { cwd: '/tmp' })).stdout, '/tmp\n', 'cwd')
check((await run('whoami; id -u', { user: 'user' })).stdout, 'user\n1000\n', 'user')
check((await run('whoami', { user: 'root' })).stdout, 'root\n', 'root')

try {
  await run('echo err >&2; exit 4')
  throw new Error('exit 4 did not throw')
} catch (e) {
  if (!(e instanceof CommandExitError)) throw e
  check(e.exitCode, 4, 'exit code')
  check(e.stderr, 'err\n', 'stderr')
}

const chunks = []
await run('for i in 1 2 3; do echo l$i; done', { onStdout: (d) => chunks.push(d) })
check(chunks.join(''), 'l1\nl2\nl3\n', 'streamed stdout')

const bg = await run('sleep 60', { background: true })
check((await sbx.commands.list()).some((p) => p.pid === bg.pid), true, 'background listed')
check(await sbx.commands.kill(bg.pid), true, 'kill')

// Pause, then connect (resume): a background command's output survives.
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const counter = await run('for i in $(seq 1 10); do echo $i; sleep 0.1; done', { background: true })
await sleep(300)
check(await sbx.pause(), true, 'pause')
check((await Sandbox.getInfo(sbx.sandboxId)).state, 'paused', 'state paused')
check(await sbx.isRunning(), false, 'a paused sandbox does not answer')
await sleep(500)
await sbx.connect()
check((await Sandbox.getInfo(sbx.sandboxId)).state, 'running', 'state running')
check((await counter.wait()).stdout, '1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n', 'output across pause')

// Metrics.
const metrics = await sbx.getMetrics()
check(metrics.length >= 1, true, 'metrics samples')
const latest = metrics[metrics.length - 1]
check(latest.memUsed > 0 && latest.memUsed < latest.memTotal, true, 'memory metrics')

// A user port, addressed by sandbox.getHost.
await run("mkdir -p /srv && echo hello-js > /srv/index.html && cd /srv && (python3 -m http.server 8080 > /dev/null 2>&1 &)")
const get = (host) =>
  new Promise((resolve, reject) => {
    const req = http.get(`${process.env.E2B_API_URL}/index.html`, { headers: { Host: host } }, (res) => {
      let body = ''
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
let page = { status: 0 }
for (let i = 0; i < 100 && page.status !== 200; i++) {
  page = await get(sbx.getHost(8080))
  if (page.status !== 200) await sleep(100)
}
check(page, { status: 200, body: 'hello-js\n' }, 'user port through getHost')

const info = await sbx.getInfo()
check(info.sandboxId, sbx.sandboxId, 'getInfo')
check(info.metadata.suite, 'sdk-js', 'metadata')
await sbx.setTimeout(60_000)
check(await sbx.isRunning(), true, 'running')
await sbx.kill()
check(await sbx.isRunning(), false, 'killed')

done()
