import unittest
from types import SimpleNamespace

from logic import rank


def candidate(id, price_per_unit, pixels_per_unit, latency_ms):
    price = SimpleNamespace(price_per_unit=price_per_unit, pixels_per_unit=pixels_per_unit)
    return SimpleNamespace(id=id, price=price, latency_ms=latency_ms)


class RankTest(unittest.TestCase):
    def test_cheapest_per_unit_first_and_over_the_max_left_out(self):
        # a: 3 per unit, b: 2, c: 9.
        c = [candidate("a", 30, 10, 5), candidate("b", 2, 1, 50), candidate("c", 9, 1, 5)]
        self.assertEqual(rank(c, None), [1, 0, 2])
        self.assertEqual(rank(c, 3), [1, 0])


if __name__ == "__main__":
    unittest.main()
