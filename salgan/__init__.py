"""SalGAN visual saliency prediction (Pan et al. 2017) as a reproducible pipeline."""

__version__ = "0.1.0"
