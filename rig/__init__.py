"""The bench rig: the whole chain without a patient.

- :mod:`.replay`    plays a recording (or a synthetic patient) as an LSL armband stream;
- :mod:`.patient`   ``metaemg-patient``: an armband whose wearer follows the calibration's cues
  (real EMG of each cued intent after a reaction time), the recording in order otherwise;
- :mod:`.processes` the simulator, the daemon and a monitor subscriber as real processes, and
  :class:`~rig.processes.Rig`, all of them up and running;
- :mod:`.models`    models to drive them with, made from real data in seconds;
- :mod:`.demo`      ``metaemg-demo``: replay -> daemon -> orthosis simulator, with a summary.

It sits above every other layer (see docs/architecture.md) and is what demos, tests and
benchmarks drive the daemon with.
"""
