import assert from 'node:assert/strict';
import { test } from 'node:test';

import { rank } from './logic.js';

const candidate = (id, pricePerUnit, pixelsPerUnit, latencyMs) => ({
  id,
  price: { pricePerUnit, pixelsPerUnit, currency: 'WEI' },
  latencyMs,
});

test('cheapest per unit first, and those over the max left out', () => {
  // a: 3 per unit, b: 2, c: 9.
  const c = [candidate('a', 30n, 10n, 5), candidate('b', 2n, 1n, 50), candidate('c', 9n, 1n, 5)];
  assert.deepEqual(rank(c, null), [1, 0, 2]);
  assert.deepEqual(rank(c, 3n), [1, 0]);
});
