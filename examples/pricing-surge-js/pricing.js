// Surge pricing by current load (world `weir:host/pricing`, export `weir:host/quoting`).
//
// Below `surge_threshold_pct` load the price is `base_price_per_unit`; above it the price
// rises linearly to base * (100 + surge_max_pct) / 100 at full load. All arithmetic is
// integer (BigInt): WIT u64 values are BigInt in JavaScript.

import { configBigInt, configString, invalidRequest, log, price } from '../../sdk/js/weir.js';

/**
 * The price for `load` percent (BigInt, 0..=100) given the base price, surge threshold and
 * maximum surge (both in percent). Exported for tests; the host only calls `quote`.
 */
export function surgePrice(base, load, threshold, surgeMax) {
  if (load <= threshold) return base;
  return base + (base * surgeMax * (load - threshold)) / ((100n - threshold) * 100n);
}

// A component version's config never changes, so it is read once per instance, on first use
// (host imports are not available while the module is pre-initialised at build time).
let settings = null;

function loadSettings() {
  if (settings === null) {
    settings = {
      base: configBigInt('base_price_per_unit', '1000'),
      pixelsPerUnit: configBigInt('pixels_per_unit', '1', { min: 1n }),
      currency: configString('currency', 'WEI'),
      threshold: configBigInt('surge_threshold_pct', '50'),
      surgeMax: configBigInt('surge_max_pct', '200'),
    };
  }
  return settings;
}

/** `quote: func(request: job-request, context: quote-context) -> result<price, error>` */
function quote(request, context) {
  const { base, pixelsPerUnit, currency, threshold, surgeMax } = loadSettings();

  if (context.capacity === 0) {
    throw invalidRequest(`no capacity for ${request.capability} (capacity is 0)`);
  }
  // u32 fields are plain numbers. Load above capacity counts as 100%, so surge_max_pct is a cap.
  let load = (BigInt(context.inFlight) * 100n) / BigInt(context.capacity);
  if (load > 100n) load = 100n;

  const perUnit = surgePrice(base, load, threshold, surgeMax);
  if (perUnit !== base) {
    log.debug(`surge: load ${load}% > ${threshold}%, price ${base} -> ${perUnit} ${currency}`);
  }
  return price(perUnit, pixelsPerUnit, currency);
}

/** The `weir:host/quoting` interface this component exports. */
export const quoting = { quote };
