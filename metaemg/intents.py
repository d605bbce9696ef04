"""The intents and their order: the one definition that models, recordings, calibration cues,
metrics, the daemon's policy and its monitor all use.

A model's output ``i`` and a recording's label ``i`` both mean ``INTENTS[i]``. A model file states
its class names and the daemon refuses one whose names are not exactly these, in this order: a
swapped order would open the hand when the patient closes it.
"""

INTENTS = ("relax", "open", "close")
RELAX, OPEN, CLOSE = range(len(INTENTS))
