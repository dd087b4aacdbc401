"""{{name}}: a pricing policy (world `weir:host/pricing`, export `weir:host/quoting`).

Quotes the manifest's `price_per_unit` (base units of `currency` per `pixels_per_unit` units
of work), doubled once the node is at least `busy_pct` percent loaded.
"""

import weir_sdk
from wit_world import exports
from wit_world.imports import types

from logic import price_per_unit


class Quoting(exports.Quoting):
    def quote(self, request: types.JobRequest, context: exports.quoting.QuoteContext) -> types.Price:
        base = weir_sdk.config_int("price_per_unit", 1000)
        pixels_per_unit = weir_sdk.config_int("pixels_per_unit", 1, min=1)
        busy_pct = weir_sdk.config_int("busy_pct", 80, max=100)
        currency = weir_sdk.config_str("currency", "WEI")
        per_unit = price_per_unit(base, context.in_flight, context.capacity, busy_pct)
        return weir_sdk.price(per_unit, pixels_per_unit, currency)
