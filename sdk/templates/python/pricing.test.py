import unittest

from logic import price_per_unit


class PriceTest(unittest.TestCase):
    def test_the_price_doubles_once_the_node_is_busy(self):
        self.assertEqual(price_per_unit(1000, 0, 4, 80), 1000)
        self.assertEqual(price_per_unit(1000, 3, 4, 80), 1000)
        self.assertEqual(price_per_unit(1000, 4, 4, 80), 2000)
        self.assertEqual(price_per_unit(1000, 1, 0, 80), 2000)


if __name__ == "__main__":
    unittest.main()
