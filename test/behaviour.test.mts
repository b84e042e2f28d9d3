// The behaviour of the public API, run once per (database × strategy) pair.
import { Harness } from './harness.mjs'
import { forEachTarget } from './matrix.mjs'
import { acquireSuite } from './suite/acquire.mjs'
import { badInputSuite } from './suite/bad-input.mjs'
import { renewalSuite } from './suite/renewal.mjs'
import { schemaSuite } from './suite/schema.mjs'

forEachTarget('behaviour', (target) => {
  const h = new Harness(target)
  acquireSuite(h)
  renewalSuite(h)
  badInputSuite(h)
  schemaSuite(h)
})
