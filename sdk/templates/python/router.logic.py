"""The ranking of {{name}}, kept free of host imports so it is tested natively."""

from fractions import Fraction


def rank(candidates, max_price):
    """The candidates' indices, best first: within `max_price` (base units per unit of work,
    or None) when given, cheapest per unit first (exact fractions), then lowest latency (0 =
    unknown, last), then id."""
    def per_unit(c):
        return Fraction(c.price.price_per_unit, max(c.price.pixels_per_unit, 1))

    eligible = [i for i, c in enumerate(candidates) if max_price is None or per_unit(c) <= max_price]
    return sorted(eligible, key=lambda i: (per_unit(candidates[i]),
                                           candidates[i].latency_ms or float("inf"),
                                           candidates[i].id))
