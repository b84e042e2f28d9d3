// releaseOnSignals, in a real child process: SIGTERM frees its lock for another process at once.
import assert from 'node:assert/strict'
import { it } from 'node:test'
import { releaseOnSignals } from '../../src/index.js'
import type { Harness } from '../harness.mjs'
import { startWorker } from '../worker-process.mjs'

export function shutdownSuite(h: Harness): void {
  it('frees the lock of a process stopped with SIGTERM at once, and the process dies of the signal', async () => {
    const name = h.lockName('sigterm')
    const { child, exited } = await startWorker(h, name)
    const other = h.store({ lockTimeoutMs: 600_000 })
    assert.equal(await other.tryAcquireLock(name), null, 'the worker holds it')
    child.kill('SIGTERM')
    const exit = await exited
    assert.equal(exit.signal, 'SIGTERM', 'exits as it would have without the handler')
    assert.ok(await other.tryAcquireLock(name), 'free long before the 10-minute timeout')
  })

  it('waits for every registered store before the process goes on', async () => {
    const name = h.lockName('twostores')
    const { child, exited } = await startWorker(h, name, { WL_SLOW_STORE: '1' })
    child.kill('SIGTERM')
    const exit = await exited
    assert.equal(exit.signal, 'SIGTERM')
    assert.match(exit.stdout, /slow store closed/)
    assert.ok(await h.store({ lockTimeoutMs: 600_000 }).tryAcquireLock(name))
  })

  it("leaves the exit to the application's own handler when it has one", async () => {
    const name = h.lockName('apphandler')
    const { child, exited } = await startWorker(h, name, { WL_APP_HANDLER: '1' })
    child.kill('SIGTERM')
    const exit = await exited
    assert.equal(exit.code, 3)
    assert.match(exit.stdout, /app handler/)
    assert.ok(await h.store({ lockTimeoutMs: 600_000 }).tryAcquireLock(name))
  })

  it('changes no signal handling until asked, and removes its handlers on request', () => {
    const before = process.listenerCount('SIGTERM')
    const remove = releaseOnSignals(h.store(), { signals: ['SIGTERM'] })
    const removeOther = releaseOnSignals(h.store(), { signals: ['SIGTERM'] })
    assert.equal(process.listenerCount('SIGTERM'), before + 1, 'one handler for all stores')
    remove()
    assert.equal(process.listenerCount('SIGTERM'), before + 1)
    removeOther()
    assert.equal(process.listenerCount('SIGTERM'), before)
    assert.throws(() => releaseOnSignals(h.store(), { signals: [] }), TypeError)
    assert.throws(() => releaseOnSignals(h.store(), { timeoutMs: -1 }), RangeError)
  })
}
