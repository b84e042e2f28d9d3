// The behaviour of the public API, run once per (database × strategy) pair.
import { Harness } from './harness.mjs'
import { forEachTarget } from './matrix.mjs'
import { acquireSuite } from './suite/acquire.mjs'
import { badInputSuite } from './suite/bad-input.mjs'
import { deadlinesSuite } from './suite/deadlines.mjs'
import { eventLoopSuite } from './suite/event-loop.mjs'
import { failedAttemptsSuite } from './suite/failed-attempts.mjs'
import { fenceSuite } from './suite/fence.mjs'
import { inspectionSuite } from './suite/inspection.mjs'
import { keepingSuite } from './suite/keeping.mjs'
import { propertiesSuite } from './suite/properties.mjs'
import { readWriteSuite } from './suite/read-write.mjs'
import { releaseWatchSuite } from './suite/release-watch.mjs'
import { renewalSuite } from './suite/renewal.mjs'
import { schemaSuite } from './suite/schema.mjs'
import { shutdownSuite } from './suite/shutdown.mjs'
import { signalSuite } from './suite/signal.mjs'
import { waitingSuite } from './suite/waiting.mjs'

forEachTarget('behaviour', (target) => {
  const h = new Harness(target)
  acquireSuite(h)
  renewalSuite(h)
  signalSuite(h)
  fenceSuite(h)
  shutdownSuite(h)
  waitingSuite(h)
  releaseWatchSuite(h)
  inspectionSuite(h)
  keepingSuite(h)
  readWriteSuite(h)
  propertiesSuite(h)
  badInputSuite(h)
  eventLoopSuite(h)
  deadlinesSuite(h)
  schemaSuite(h)
  failedAttemptsSuite(h)
})
