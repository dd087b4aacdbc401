// The decisions of pipeline-fps-js that need no host: the target frame rate from start params
// and control messages, and the rendition for a probed source. No `weir:host` imports, so
// `node --test examples/pipeline-fps-js/` runs its tests with plain Node.

/** Accepted target frame rates, in frames per second. */
export const MIN_FPS = 1;
export const MAX_FPS = 60;
/** Target frame rate when neither the start params nor the manifest's config give one. */
export const DEFAULT_FPS = 15;
/** Name of the start param and of the control message key. */
export const FPS_KEY = 'fps';

// Narrowest and widest output the host's transcoder accepts.
const MIN_SIZE = 16;
const MAX_SIZE = 4096;

/** A value the client sent that cannot be used; pipeline.js turns it into `invalid-request`. */
export class FpsError extends Error {
  constructor(message) {
    super(message);
    this.name = 'FpsError';
  }
}

function outOfRange(shown) {
  return new FpsError(`\`${FPS_KEY}\` must be an integer in ${MIN_FPS}..=${MAX_FPS}, got ${shown}`);
}

/** `value` (a Number or BigInt) checked to be a whole number in MIN_FPS..=MAX_FPS. */
export function checkFps(value, shown = String(value)) {
  const ok =
    typeof value === 'bigint'
      ? value >= BigInt(MIN_FPS) && value <= BigInt(MAX_FPS)
      : Number.isInteger(value) && value >= MIN_FPS && value <= MAX_FPS;
  if (!ok) throw outOfRange(shown);
  return Number(value);
}

/** A frame rate given as text: decimal digits, surrounding spaces allowed. */
function fpsFromText(text) {
  const t = text.trim();
  if (!/^[+-]?[0-9]+$/.test(t)) throw outOfRange(JSON.stringify(text));
  return checkFps(BigInt(t), JSON.stringify(text));
}

/**
 * The frame rate a start param asks for (`param-value` as `{ tag, val }`): an integer
 * (BigInt), a numeric string, or a whole number.
 */
export function fpsFromParam(value) {
  switch (value?.tag) {
    case 'integer':
      return checkFps(BigInt(value.val));
    case 'number':
      return checkFps(value.val);
    case 'text':
      return fpsFromText(value.val);
    default:
      throw outOfRange(JSON.stringify(value?.val ?? null));
  }
}

/** The frame rate a stream starts with: the `fps` param when present, else `fallback`. */
export function startFps(params, fallback = DEFAULT_FPS) {
  const p = params.find((p) => p.name === FPS_KEY);
  return p === undefined ? fallback : fpsFromParam(p.value);
}

/**
 * Parse a control message: `{"fps": N}` (a number or a numeric string), giving the new rate,
 * or Livepeer's keepalive `{"keep":"alive"}`, giving `null`. Other keys beside `fps` are ignored.
 */
export function parseControl(message) {
  const expected = `expected {"${FPS_KEY}": N} with N in ${MIN_FPS}..=${MAX_FPS}, or {"keep": "alive"}`;
  let value;
  try {
    value = JSON.parse(message);
  } catch (e) {
    throw new FpsError(`control message is not valid JSON (${e.message}); ${expected}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new FpsError(`control message must be a JSON object like {"${FPS_KEY}": 15}, got ${message}`);
  }
  if (Object.hasOwn(value, FPS_KEY)) {
    const v = value[FPS_KEY];
    if (typeof v === 'number') return checkFps(v);
    if (typeof v === 'string') return fpsFromText(v);
    throw outOfRange(JSON.stringify(v));
  }
  if (value.keep === 'alive') return null;
  throw new FpsError(`control message has no \`${FPS_KEY}\`: ${expected}`);
}

/**
 * A bitrate for `width` x `height` at `fps`, in bits per second: close to Livepeer's presets at
 * 30 fps (240p 600 kbit/s, 720p 3.1 Mbit/s), growing with the square root of the frame rate,
 * rounded to kbit/s and kept within 100 kbit/s..=20 Mbit/s. The same formula as live-scale.
 */
export function bitrate(width, height, fps) {
  const bps = 105 * Math.pow(width * height, 0.75) * Math.sqrt(fps / 30);
  const kbps = Math.min(Math.max(Math.round(bps / 1000), 100), 20000);
  return kbps * 1000;
}

/**
 * The one rendition a segment probed as `info` (`video-info`: `{ width, height, ... }`) is
 * re-encoded to: the source size (rounded down to even) at `fps`, one keyframe per segment.
 */
export function rendition(info, fps) {
  const width = info.width & ~1;
  const height = info.height & ~1;
  for (const [what, v] of [['width', width], ['height', height]]) {
    if (v < MIN_SIZE || v > MAX_SIZE) {
      throw new FpsError(
        `the source is ${info.width}x${info.height}; its ${what} must be within ${MIN_SIZE}..=${MAX_SIZE}`,
      );
    }
  }
  return {
    name: `source-${fps}fps`,
    width,
    height,
    bitrate: bitrate(width, height, fps),
    fpsNum: fps,
    fpsDen: 1,
    gopMs: 0,
  };
}
