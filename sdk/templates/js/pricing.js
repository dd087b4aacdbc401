// {{name}}: a pricing policy (world `weir:host/pricing`, export `weir:host/quoting`).
//
// Quotes the manifest's `price_per_unit` (base units of `currency` per `pixels_per_unit`
// units of work), doubled once the node is at least `busy_pct` percent loaded.

import { configBigInt, configString, price } from './.weir/sdk/js/weir.js';
import { pricePerUnit } from './logic.js';

/** `quote: func(request: job-request, context: quote-context) -> result<price, error>` */
function quote(_request, context) {
  const base = configBigInt('price_per_unit', '1000');
  const pixelsPerUnit = configBigInt('pixels_per_unit', '1', { min: 1n });
  const busyPct = configBigInt('busy_pct', '80', { max: 100n });
  const currency = configString('currency', 'WEI');
  return price(pricePerUnit(base, context.inFlight, context.capacity, busyPct), pixelsPerUnit, currency);
}

/** The `weir:host/quoting` interface this component exports. */
export const quoting = { quote };
