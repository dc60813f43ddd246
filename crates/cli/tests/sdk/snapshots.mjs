// The official E2B JavaScript SDK, unmodified, against a Hutch server:
// snapshots (create, start a sandbox from one, list, delete), forks,
// live network rules and template tags.
//
// Usage: node snapshots.mjs TEMPLATE   (E2B_SDK_DIR: where the SDK is installed)
// Environment: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
// The template is the Debian test image of docs/environment.md.

import { createRequire } from 'node:module'
import path from 'node:path'

import { check, done } from './checks.mjs'

const require = createRequire(path.join(process.env.E2B_SDK_DIR, 'node_modules', 'index.js'))
const { Sandbox, Template } = require('e2b')

const template = process.argv[2]
const sh = async (sbx, cmd) => (await sbx.commands.run(cmd)).stdout.trim()
async function snapshotIds(opts) {
  const pages = Sandbox.listSnapshots(opts)
  const ids = []
  while (pages.hasNext) {
    ids.push(...(await pages.nextItems()).map((s) => s.snapshotId))
  }
  return ids
}

const source = await Sandbox.create(template, {
  envs: { FROM_CREATE: 'create-value' },
  metadata: { team: 'js' },
  timeoutMs: 300_000,
})
await source.files.write('/tmp/kept.txt', 'kept in the snapshot')

const info = await source.createSnapshot()
check(info.names, [], 'an unnamed snapshot has no names')
const child = await Sandbox.create(info.snapshotId, { timeoutMs: 120_000 })
check(await child.files.read('/tmp/kept.txt'), 'kept in the snapshot', 'a file in the snapshot')
check(await sh(child, 'echo $FROM_CREATE $MY_APP_CONFIG'), 'create-value /etc/myapp/config.json', 'variables')

const named = await source.createSnapshot({ name: 'js-snap' })
check([named.snapshotId, named.names], ['js-snap', ['js-snap']], 'a named snapshot')
const listed = await snapshotIds()
check(listed.includes(info.snapshotId) && listed.includes('js-snap'), true, `listed: ${listed}`)
check((await snapshotIds({ sandboxId: source.sandboxId })).sort(), [info.snapshotId, 'js-snap'].sort(), 'by sandbox')

const forks = await source.fork({ count: 2 })
check(forks.length, 2, 'two forks')
for (const fork of forks) {
  check(fork instanceof Sandbox, true, `a fork: ${fork}`)
  check(await fork.files.read('/tmp/kept.txt'), 'kept in the snapshot', "a fork's file")
  check((await Sandbox.getInfo(fork.sandboxId)).metadata, { team: 'js' }, "a fork's metadata")
}
await forks[0].files.write('/tmp/kept.txt', 'changed in a fork')
check(await source.files.read('/tmp/kept.txt'), 'kept in the snapshot', "a fork's change stays there")

// Live network rules: the call is accepted and the sandbox runs on.
await source.updateNetwork({ allowInternetAccess: false, allowOut: ['10.0.0.1'] })
await source.updateNetwork({})
check(await sh(source, 'echo alive'), 'alive', 'after network changes')

await child.kill()
check(await Sandbox.deleteSnapshot(info.snapshotId), true, 'deleting a snapshot')
check(await Sandbox.deleteSnapshot(info.snapshotId), false, 'deleting it again')
check(await Sandbox.deleteSnapshot('js-snap'), true, 'deleting a named snapshot')
for (const fork of forks) await fork.kill()
await source.kill()

// Template tags: name the template's default build, start a sandbox by the
// tag, list and remove it.
const tagged = await Template.assignTags(template, 'js-stable')
check(tagged.tags, ['js-stable'], 'assignTags')
const fromTag = await Sandbox.create(`${template}:js-stable`, { timeoutMs: 60_000 })
check(await sh(fromTag, 'echo from-tag'), 'from-tag', 'a sandbox of a tag')
await fromTag.kill()
const tagNames = async () => (await Template.getTags(template)).map((t) => t.tag).sort()
check(await tagNames(), ['default', 'js-stable'], 'getTags')
const byTag = Object.fromEntries((await Template.getTags(template)).map((t) => [t.tag, t.buildId]))
check(/^[0-9a-f-]{36}$/.test(tagged.buildId), true, 'a build id is a UUID')
check(byTag['js-stable'], tagged.buildId, 'a tag names the build assignTags reported')
await Template.removeTags(template, 'js-stable')
check(await tagNames(), ['default'], 'removeTags')
done()
