"""Session-start calibration on the device PC (``metaemg-calibrate``): small modules, one job each.

- :mod:`.calibrate`  the command: record or read a clip, adapt, gate, install, report;
- :mod:`.protocol`   the cue protocol (relax-open-relax-close-relax, N cycles) and cue labels;
- :mod:`.gate`       the safety gate: install the adapted model or refuse, and why;
- :mod:`.plausible`  checks that a clip's labels match its signal (swapped or missing intents);
- :mod:`.store`      the state directory: clips, versioned models, current/previous, rollback;
- :mod:`.daemonlink` cues on a ZeroMQ PUB socket, hot-swap requests on the daemon's control socket;
- :mod:`.live`       the LSL recording with terminal prompts and countdowns;
- :mod:`.report`     the JSON and PNG reports;
- :mod:`.config`     the YAML configuration file.

The learning it uses is the offline library's: :mod:`metalearn.clip` (a labelled clip -> checked,
conditioned windows), :mod:`metalearn.adapt` (the base model's own inner loop; torch, imported
lazily, and the export) and :mod:`metalearn.metrics`. Everything here is torch-free.
"""
