// What the suite's JavaScript SDK scripts share: checks that count.

let count = 0

/** `actual` must equal `expected` (compared as JSON). */
export function check(actual, expected, what) {
  if (JSON.stringify(actual) !== JSON.stringify(expected)) {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`)
  }
  count++
}

/** The line the test runner looks for. */
export function done() {
  console.log(`OK ${count} checks`)
}
