"""Region-preferring router (world `weir:host/router`, export `weir:host/routing`).

Drops candidates dearer than `max_price_per_unit` (base units per one unit of work), then
ranks the rest: preferred `region` first, then lower latency (0 = unknown counts as
slowest), then lower price per unit of work, then candidate id, so equal inputs always give
the same order.
"""

from functools import cmp_to_key
from typing import List

import weir_sdk
from wit_world import exports
from wit_world.imports import types


class Routing(exports.Routing):
    def select(self, request: types.JobRequest, candidates: List[types.Candidate]) -> List[int]:
        if not candidates:
            raise weir_sdk.no_candidates(f"no candidates offered for {request.capability}")

        region = (weir_sdk.config_str("region") or "").strip()
        max_price = weir_sdk.config_optional_int("max_price_per_unit")

        # price/pixels > max  <=>  price > max * pixels (pixels >= 1): exact, no division.
        eligible = [
            i for i, c in enumerate(candidates)
            if max_price is None or c.price.price_per_unit <= max_price * c.price.pixels_per_unit
        ]
        if not eligible:
            raise weir_sdk.no_candidates(
                f"all {len(candidates)} candidates cost more than {max_price} per unit")

        def rank(c: types.Candidate):
            # Region miss and latency; 0 = unknown latency sorts after every known one.
            return (bool(region) and c.region != region, c.latency_ms or float("inf"))

        def compare(i: int, j: int) -> int:
            a, b = candidates[i], candidates[j]
            if rank(a) != rank(b):
                return -1 if rank(a) < rank(b) else 1
            return weir_sdk.compare_price(a.price, b.price) or (a.id > b.id) - (a.id < b.id)

        ranked = sorted(eligible, key=cmp_to_key(compare))
        weir_sdk.debug(f"{request.id}: ranked {len(ranked)} of {len(candidates)} candidates"
                       f" (region {region or 'any'})")
        return ranked
