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


_settings = None


def _load_settings():
    """(region, max price): a component version's config never changes, so it is read once per
    instance, on first use (host imports are unavailable while the module is pre-initialised)."""
    global _settings
    if _settings is None:
        _settings = ((weir_sdk.config_str("region") or "").strip(),
                     weir_sdk.config_optional_int("max_price_per_unit"))
    return _settings


class Routing(exports.Routing):
    def select(self, request: types.JobRequest, candidates: List[types.Candidate]) -> List[int]:
        if not candidates:
            raise weir_sdk.no_candidates(f"no candidates offered for {request.capability}")

        region, max_price = _load_settings()

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

        return sorted(eligible, key=cmp_to_key(compare))
