// {{name}}: a routing policy (world `weir:host/router`, export `weir:host/routing`).
//
// Ranks the orchestrators that may take a job: cheapest price per unit of work first, then
// lowest latency; drops those dearer than the manifest's `max_price_per_unit` when set.

import { configOptionalBigInt, noCandidates } from './.weir/sdk/js/weir.js';
import { rank } from './logic.js';

/** `select: func(request: job-request, candidates: list<candidate>) -> result<list<u32>, error>` */
function select(request, candidates) {
  const max = configOptionalBigInt('max_price_per_unit');
  const order = rank(candidates, max);
  if (order.length === 0) {
    throw noCandidates(`none of ${candidates.length} candidates for ${request.capability} is within the max price`);
  }
  return order;
}

/** The `weir:host/routing` interface this component exports. */
export const routing = { select };
