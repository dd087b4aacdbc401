"""Region-preferring router (world `weir:host/router`, export `weir:host/routing`).

Drops candidates dearer than `max_price_per_unit` (base units per one unit of work), then
ranks the rest: preferred `region` first, then lower latency (0 = unknown counts as
slowest), then lower price per unit of work, then candidate id, so equal inputs always give
the same order.
"""

from fractions import Fraction
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

        def key(i: int):
            c = candidates[i]
            # Region miss, latency (0 = unknown sorts after every known one), exact price per
            # unit of work, then id: equal inputs always give the same order.
            return (bool(region) and c.region != region,
                    c.latency_ms or float("inf"),
                    Fraction(c.price.price_per_unit, max(c.price.pixels_per_unit, 1)),
                    c.id)

        return sorted(eligible, key=key)
