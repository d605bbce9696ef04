"""Offline side of MetaEMG: recordings, tasks and task collections, synthetic patients,
dataset import, and (in submodules that import torch lazily) meta-training and export.

Importing ``metalearn`` or its data modules never imports torch.
"""
