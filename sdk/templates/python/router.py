"""{{name}}: a routing policy (world `weir:host/router`, export `weir:host/routing`).

Ranks the orchestrators that may take a job: cheapest price per unit of work first, then
lowest latency; drops those dearer than the manifest's `max_price_per_unit` when set.
"""

from typing import List

import weir_sdk
from wit_world import exports
from wit_world.imports import types

from logic import rank


class Routing(exports.Routing):
    def select(self, request: types.JobRequest, candidates: List[types.Candidate]) -> List[int]:
        order = rank(candidates, weir_sdk.config_optional_int("max_price_per_unit"))
        if not order:
            raise weir_sdk.no_candidates(
                f"none of {len(candidates)} candidates for {request.capability} is within the max price")
        return order
