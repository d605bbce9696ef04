"""Session-start calibration (``metaemg-calibrate``): small modules with one job each.

- :mod:`.protocol`   the cue protocol (relax-open-relax-close-relax, N cycles) and cue labels;
- :mod:`.clip`       a labelled clip -> checked, conditioned windows split into adapt / held-out;
- :mod:`.metrics`    accuracy, per-intent recall, confusion matrix, label-change delays;
- :mod:`.adapt`      the base model's own inner loop on the clip (torch, imported lazily) + export;
- :mod:`.gate`       the safety gate: install the adapted model or refuse, and why;
- :mod:`.store`      the state directory: clips, versioned models, current/previous, rollback;
- :mod:`.daemonlink` cues on a ZeroMQ PUB socket, hot-swap requests on the daemon's control socket;
- :mod:`.live`       the LSL recording with terminal prompts and countdowns;
- :mod:`.report`     the JSON and PNG reports;
- :mod:`.config`     the YAML configuration file.

Everything here except :mod:`.adapt` is torch-free.
"""
