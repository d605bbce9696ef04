"""The bench rig: the whole chain without a patient.

- :mod:`.replay` plays a recording (or a synthetic patient) as an LSL armband stream;
- :mod:`.demo`   ``metaemg-demo``: replay -> daemon -> orthosis simulator, with a summary.

It sits above every other layer (see docs/architecture.md) and is what demos, tests and
benchmarks drive the daemon with.
"""
