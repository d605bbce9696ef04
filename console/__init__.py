"""``metaemg-console``: the clinician's console, a local web page beside the daemon.

A separate process from ``myhand-controller``: it only subscribes to the daemon's monitor stream
and sends requests to its control socket, as ``metaemg-monitor`` and ``myhand-controller ctl``
do; a calibration runs ``metaemg-calibrate`` as a child process. See docs/console.md.
"""
