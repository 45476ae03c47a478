"""Cost-aware differentiable architecture search (FNA, as EfficientPose used it): ``effpose search``.

``space`` the searchable layers, ``supernet`` the super-network with one architecture vector per layer, ``cost``
MAC and latency tables, ``searcher`` the alternating weight / architecture optimisation, ``outputs`` the
genotype, alpha and picture files. Modules import torch; this package file does not, so that the CLI stays light.
"""
