"""The price rule of {{name}}, kept free of host imports so it is tested natively."""


def price_per_unit(base, in_flight, capacity, busy_pct):
    """The price per unit for `base` when `in_flight` of `capacity` jobs run: doubled at or
    above `busy_pct` percent load; no capacity counts as full."""
    load = in_flight * 100 // max(capacity, 1)
    return base * 2 if load >= busy_pct else base
