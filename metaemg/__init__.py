"""Shared, torch-free core of MetaEMG: the exception tree, atomic file writes,
CLI plumbing and the signal chain used by both training and the daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metaemg")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
