"""The intents and their order: the one definition that models, recordings, calibration cues,
metrics, the daemon's policy and its monitor all use.

A model's output ``i`` and a recording's label ``i`` both mean ``INTENTS[i]``. A model file states
its class names and the daemon refuses one whose names are not exactly these, in this order: a
swapped order would open the hand when the patient closes it.
"""

INTENTS = ("relax", "open", "close")
RELAX, OPEN, CLOSE = range(len(INTENTS))

# A recording's label for movements the wearer makes that are none of the intents (the
# calibration's "move freely, hand relaxed" segment): the right decision is relax, and the
# calibration learns them as the wearer's own non-intent classes. Never a model output.
MOVE = len(INTENTS)
LABELS = (*INTENTS, "move")


def expected(labels):
    """The decision that is right for each label (numpy array): the intent itself, relax for MOVE."""
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    return np.where(labels == MOVE, RELAX, labels)
