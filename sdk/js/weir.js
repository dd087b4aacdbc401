// Helpers for Weir policies written in JavaScript (componentize-js).
//
// Import with a relative path from the guest module, e.g.
//   import { configBigInt, price, WeirError } from '../../sdk/js/weir.js';
// and build with sdk/js/build.mjs, which lets relative imports reach this file.
//
// Only `weir:host/log` and `weir:host/config` are used here, so the helpers work in every
// Weir world (router, pricing, pipeline).

import { get as configGet } from 'weir:host/config@0.1.0';
import { log as hostLog } from 'weir:host/log@0.1.0';

/** Largest value of a WIT `u64`. */
export const U64_MAX = (1n << 64n) - 1n;

/**
 * An error a policy returns to the host as the `err` case of its `result<_, error>`.
 *
 * componentize-js turns a thrown value into `err(...)` when it has a `payload` property
 * (or is a plain `{ tag, val }` object); a thrown `Error` without `payload` traps instead.
 * `tag` is the case name of `weir:host/types.error`, e.g. `'invalid-request'`.
 */
export class WeirError extends Error {
  constructor(tag, message) {
    super(`${tag}: ${message}`);
    this.name = 'WeirError';
    this.payload = { tag, val: String(message) };
  }
}

/** Shorthands for each case of `weir:host/types.error`. */
export const invalidRequest = (msg) => new WeirError('invalid-request', msg);
export const noCandidates = (msg) => new WeirError('no-candidates', msg);
export const unsupported = (msg) => new WeirError('unsupported', msg);
export const configError = (msg) => new WeirError('config', msg);
export const denied = (msg) => new WeirError('denied', msg);
export const internal = (msg) => new WeirError('internal', msg);

/** Log through `weir:host/log` (the host tags records with the component's name). */
export const log = {
  trace: (msg) => hostLog('trace', String(msg)),
  debug: (msg) => hostLog('debug', String(msg)),
  info: (msg) => hostLog('info', String(msg)),
  warn: (msg) => hostLog('warn', String(msg)),
  error: (msg) => hostLog('error', String(msg)),
};

/** A config value as a string, or `fallback` when the key is not set. */
export function configString(key, fallback = undefined) {
  const value = configGet(key); // option<string>: a string, or undefined for none
  return value === undefined || value === null ? fallback : value;
}

/**
 * A config value as a non-negative integer `BigInt` (decimal digits only), or `fallback`
 * (a string, number or BigInt) when the key is not set or empty. A malformed value, or one
 * outside `min..=max` (default 0..=u64::MAX), throws a `config` error.
 */
export function configBigInt(key, fallback = undefined, { min = 0n, max = U64_MAX } = {}) {
  const raw = configString(key);
  const text = raw === undefined || raw.trim() === '' ? fallback : raw.trim();
  if (text === undefined) throw configError(`missing config key \`${key}\``);
  const value = toBigInt(text, key);
  if (value < min || value > max) {
    throw configError(`config key \`${key}\` must be in ${min}..=${max}, got ${value}`);
  }
  return value;
}

/** Like `configBigInt`, but `undefined` when the key is not set (for optional limits). */
export function configOptionalBigInt(key, opts) {
  const raw = configString(key);
  return raw === undefined || raw.trim() === '' ? undefined : configBigInt(key, undefined, opts);
}

function toBigInt(value, key) {
  if (typeof value === 'bigint') return value;
  const text = String(value);
  if (!/^[0-9]+$/.test(text)) {
    throw configError(`config key \`${key}\` must be a non-negative integer, got \`${text}\``);
  }
  return BigInt(text);
}

/**
 * Build a `weir:host/types.price`. WIT `u64` fields are BigInt on the JS side; numbers are
 * accepted here and converted. Values outside u64 throw (they would otherwise wrap silently).
 */
export function price(pricePerUnit, pixelsPerUnit = 1n, currency = 'WEI') {
  const ppu = BigInt(pricePerUnit);
  const pixels = BigInt(pixelsPerUnit);
  if (ppu < 0n || ppu > U64_MAX) throw internal(`price ${ppu} does not fit in u64`);
  if (pixels < 1n || pixels > U64_MAX) throw internal(`pixels-per-unit ${pixels} must be 1..u64`);
  return { pricePerUnit: ppu, pixelsPerUnit: pixels, currency: String(currency) };
}

/**
 * Compare two prices per unit of work by cross-multiplying (exact, BigInt):
 * negative when `a` is cheaper, 0 when equal, positive when dearer. Currencies are not checked.
 */
export function comparePrice(a, b) {
  const lhs = BigInt(a.pricePerUnit) * BigInt(b.pixelsPerUnit);
  const rhs = BigInt(b.pricePerUnit) * BigInt(a.pixelsPerUnit);
  return lhs < rhs ? -1 : lhs > rhs ? 1 : 0;
}

/** The value of request parameter `name` (`{ tag, val }` of `param-value`), or undefined. */
export function param(request, name) {
  return request.params.find((p) => p.name === name)?.value;
}
