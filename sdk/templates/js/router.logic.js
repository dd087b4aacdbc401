// The ranking of {{name}}, kept free of host imports so `node --test` runs it as is.

/**
 * The candidates' indices, best first: within `max` (BigInt base units per unit of work, or
 * null) when given, cheapest per unit first (compared exactly: prices are BigInt), then lowest
 * latency (0 = unknown, last), then id.
 */
export function rank(candidates, max) {
  const pixels = (c) => (c.price.pixelsPerUnit > 0n ? c.price.pixelsPerUnit : 1n);
  const latency = (c) => (c.latencyMs === 0 ? Infinity : c.latencyMs);
  return candidates
    .map((c, i) => i)
    .filter((i) => max == null || candidates[i].price.pricePerUnit <= max * pixels(candidates[i]))
    .sort((a, b) => {
      const ca = candidates[a];
      const cb = candidates[b];
      const left = ca.price.pricePerUnit * pixels(cb);
      const right = cb.price.pricePerUnit * pixels(ca);
      if (left !== right) return left < right ? -1 : 1;
      if (latency(ca) !== latency(cb)) return latency(ca) - latency(cb);
      return ca.id < cb.id ? -1 : ca.id > cb.id ? 1 : 0;
    });
}
