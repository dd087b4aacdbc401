"""The settings and control messages of {{name}}, kept free of host imports so they are
tested natively."""

import json


def model_of(setting):
    """`capability/model-id` as a `(capability, model_id)` pair, None unless both are there."""
    capability, _, model_id = setting.partition("/")
    return (capability, model_id) if capability and model_id else None


def pause_of(message):
    """Whether a control message (JSON text) asks to pause (True), resume (False) or neither
    (None)."""
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    pause = parsed.get("pause") if isinstance(parsed, dict) else None
    return pause if isinstance(pause, bool) else None
