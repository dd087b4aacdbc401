// Unit tests of fps.js: node --test examples/pipeline-fps-js/
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { bitrate, DEFAULT_FPS, FpsError, parseControl, rendition, startFps } from './fps.js';

const integer = (n) => ({ tag: 'integer', val: BigInt(n) });
const height = { name: 'height', value: integer(360) };

test('start params: default, integers, numeric strings, whole numbers; others ignored', () => {
  assert.equal(startFps([]), DEFAULT_FPS);
  assert.equal(startFps([height], 24), 24);
  assert.equal(startFps([height, { name: 'fps', value: integer(30) }]), 30);
  assert.equal(startFps([{ name: 'fps', value: integer(1) }]), 1);
  assert.equal(startFps([{ name: 'fps', value: integer(60) }]), 60);
  assert.equal(startFps([{ name: 'fps', value: { tag: 'text', val: ' 25 ' } }]), 25);
  assert.equal(startFps([{ name: 'fps', value: { tag: 'number', val: 12 } }]), 12);
});

test('start params: bad values name the accepted range', () => {
  for (const [value, shown] of [
    [integer(0), '0'],
    [integer(61), '61'],
    [integer(-15), '-15'],
    [{ tag: 'integer', val: 1n << 62n }, String(1n << 62n)],
    [{ tag: 'text', val: 'fast' }, '"fast"'],
    [{ tag: 'text', val: '29.97' }, '"29.97"'],
    [{ tag: 'text', val: '' }, '""'],
    [{ tag: 'number', val: 29.97 }, '29.97'],
    [{ tag: 'number', val: NaN }, 'NaN'],
    [{ tag: 'flag', val: true }, 'true'],
  ]) {
    assert.throws(
      () => startFps([{ name: 'fps', value }]),
      (e) => e instanceof FpsError && e.message === `\`fps\` must be an integer in 1..=60, got ${shown}`,
      shown,
    );
  }
});

test('control: {"fps": N} sets the rate, keepalive gives null', () => {
  assert.equal(parseControl('{"fps": 30}'), 30);
  assert.equal(parseControl('{"fps":"10"}'), 10);
  assert.equal(parseControl('{"fps": 24.0}'), 24);
  assert.equal(parseControl('{"keep":"alive"}'), null);
  assert.equal(parseControl('{"keep":"alive","fps":5}'), 5);
  assert.equal(parseControl('{"fps": 20, "prompt": "x"}'), 20);
});

test('control: bad messages say what is expected', () => {
  const fails = (message, start) =>
    assert.throws(
      () => parseControl(message),
      (e) => e instanceof FpsError && e.message.startsWith(start),
      message,
    );
  fails('fps=30', 'control message is not valid JSON');
  fails('', 'control message is not valid JSON');
  fails('[30]', 'control message must be a JSON object');
  fails('null', 'control message must be a JSON object');
  fails('{"fsp": 30}', 'control message has no `fps`: expected {"fps": N} with N in 1..=60');
  fails('{"keep":"dead"}', 'control message has no `fps`');
  fails('{"fps": 120}', '`fps` must be an integer in 1..=60, got 120');
  fails('{"fps": null}', '`fps` must be an integer in 1..=60, got null');
  fails('{"fps": 7.5}', '`fps` must be an integer in 1..=60, got 7.5');
  fails('{"fps": true}', '`fps` must be an integer in 1..=60, got true');
});

test('the rendition keeps the source size at the target rate', () => {
  const info = { codec: 'h264', width: 1280, height: 720, fpsNum: 30, fpsDen: 1 };
  assert.deepEqual(rendition(info, 15), {
    name: 'source-15fps',
    width: 1280,
    height: 720,
    bitrate: bitrate(1280, 720, 15),
    fpsNum: 15,
    fpsDen: 1,
    gopMs: 0,
  });
  assert.deepEqual(
    [rendition({ ...info, width: 427, height: 241 }, 30)].map((r) => [r.width, r.height]),
    [[426, 240]],
  );
  assert.throws(() => rendition({ ...info, width: 0, height: 0 }, 15), FpsError);
  assert.throws(() => rendition({ ...info, width: 8192 }, 15), /width must be within 16..=4096/);
});

test('bitrates follow the size and frame rate', () => {
  assert.equal(bitrate(426, 240, 30), 600_000);
  assert.ok(bitrate(1280, 720, 15) < bitrate(1280, 720, 30));
  assert.ok(bitrate(1280, 720, 60) > bitrate(1280, 720, 30));
  assert.equal(bitrate(16, 16, 1), 100_000);
  assert.equal(bitrate(4096, 4096, 60), 20_000_000);
});
