import unittest

from logic import model_of, pause_of


class SettingsTest(unittest.TestCase):
    def test_settings_and_control_messages_are_read(self):
        self.assertEqual(model_of("upscale/upscalerjs/default-model"),
                         ("upscale", "upscalerjs/default-model"))
        self.assertIsNone(model_of("upscale"))
        self.assertIs(pause_of('{"pause": true}'), True)
        self.assertIs(pause_of('{"pause":false}'), False)
        self.assertIsNone(pause_of('{"keep":"alive"}'))
        self.assertIsNone(pause_of("not json"))


if __name__ == "__main__":
    unittest.main()
