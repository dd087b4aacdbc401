import assert from 'node:assert/strict';
import { test } from 'node:test';

import { pricePerUnit } from './logic.js';

test('the price doubles once the node is busy', () => {
  assert.equal(pricePerUnit(1000n, 0, 4, 80n), 1000n);
  assert.equal(pricePerUnit(1000n, 3, 4, 80n), 1000n);
  assert.equal(pricePerUnit(1000n, 4, 4, 80n), 2000n);
  assert.equal(pricePerUnit(1000n, 1, 0, 80n), 2000n);
});
