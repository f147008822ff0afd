"""Probabilistic saliency for density models (``model.output: density``, salgan/models/density.py).

Kümmerer, Wallis and Bethge, "Saliency Benchmarking Made Easy: Separating Models, Maps and Metrics" (ECCV
2018): a saliency model is a density over fixation locations, scored by its log-likelihood and information
gain, and each classic metric is scored on the map that maximises its expected value under the density.

- :mod:`salgan.density.metrics`: log-likelihood and information gain in bits per fixation (pysaliency's).
- :mod:`salgan.density.maps`: the metric-specific saliency maps.
- :mod:`salgan.density.inference`: log-densities of images at their original size, written as ``.npy``.
- :mod:`salgan.density.scores`: what the evaluate stage reports for a density model.
- :mod:`salgan.density.submission`: the MIT/Tuebingen benchmark's archive of log-densities, and its validator.
"""
