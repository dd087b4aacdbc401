import assert from 'node:assert/strict';
import { test } from 'node:test';

import { modelOf, pauseOf } from './logic.js';

test('settings and control messages are read', () => {
  assert.deepEqual(modelOf('upscale/upscalerjs/default-model'), {
    capability: 'upscale',
    modelId: 'upscalerjs/default-model',
  });
  assert.equal(modelOf('upscale'), null);
  assert.equal(pauseOf('{"pause": true}'), true);
  assert.equal(pauseOf('{"pause":false}'), false);
  assert.equal(pauseOf('{"keep":"alive"}'), null);
  assert.equal(pauseOf('not json'), null);
});
