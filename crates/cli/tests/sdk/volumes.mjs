// The official E2B JavaScript SDK's volumes, unmodified, against a Hutch
// server: create one, mount it into a sandbox by the Volume and into another
// by its name, share files through it, use its file methods (a string and a
// stream written, read back as text and as a stream, listed, removed), and
// delete it.
//
// Usage: node volumes.mjs TEMPLATE   (E2B_SDK_DIR: where the SDK is installed)
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_VOLUME_API_URL, E2B_API_KEY.

import { createRequire } from 'node:module'
import path from 'node:path'

import { check, done } from './checks.mjs'

const require = createRequire(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'index.js'))
const { Sandbox, Volume } = require('e2b')

const template = process.argv[2]

const name = `js-vol-${Date.now()}`
const vol = await Volume.create(name)
check(/^[0-9a-f-]{36}$/.test(vol.volumeId), true, 'a volume id is a UUID')
check((await Volume.getInfo(vol.volumeId)).name, name, 'getInfo')

const a = await Sandbox.create(template, { volumeMounts: { '/mnt/v': vol }, timeoutMs: 120_000 })
const b = await Sandbox.create(template, { volumeMounts: { '/data': name }, timeoutMs: 120_000 })
await a.commands.run('echo from-js-a > /mnt/v/a.txt')
check((await b.commands.run('cat /data/a.txt')).stdout, 'from-js-a\n', 'shared between sandboxes')
check((await a.getInfo()).volumeMounts, [{ name, path: '/mnt/v' }], 'getInfo().volumeMounts')

// Its file methods, with its token.
await vol.writeFile('/notes/one.txt', 'written by the API', { force: true })
check((await a.commands.run('cat /mnt/v/notes/one.txt')).stdout, 'written by the API', 'a sandbox sees it')
const chunks = ['str', 'eamed']
const stream = new ReadableStream({
  pull(controller) {
    const next = chunks.shift()
    if (next === undefined) controller.close()
    else controller.enqueue(new TextEncoder().encode(next))
  },
})
await vol.writeFile('/notes/two.txt', stream, { force: true })
check(await vol.readFile('/notes/two.txt'), 'streamed', 'a streamed write read back as text')
const reader = (await vol.readFile('/notes/one.txt', { format: 'stream' })).getReader()
let streamed = ''
for (;;) {
  const { done, value } = await reader.read()
  if (done) break
  streamed += new TextDecoder().decode(value)
}
check(streamed, 'written by the API', 'a streamed read')
check((await vol.list('/notes')).map((e) => e.path).sort(), ['/notes/one.txt', '/notes/two.txt'], 'list')
check(await vol.exists('/a.txt'), true, 'exists')
await vol.remove('/notes')
check(await vol.exists('/notes'), false, 'remove')

await a.kill()
await b.kill()
check(await Volume.destroy(vol.volumeId), true, 'destroy')
check(await Volume.destroy(vol.volumeId), false, 'destroy again')
done()
