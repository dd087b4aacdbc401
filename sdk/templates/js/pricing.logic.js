// The price rule of {{name}}, kept free of host imports so `node --test` runs it as is.

/**
 * The price per unit (BigInt) for `base` when `inFlight` of `capacity` jobs run (numbers):
 * doubled at or above `busyPct` (BigInt) percent load; no capacity counts as full.
 */
export function pricePerUnit(base, inFlight, capacity, busyPct) {
  const load = (BigInt(inFlight) * 100n) / BigInt(Math.max(capacity, 1));
  return load >= busyPct ? base * 2n : base;
}
