"""flowrepro: reproductions of generative-flow, fast-sampler and optimizer papers.

Importing the package imports nothing heavy; torch, POT and friends load inside the
functions that need them, so ``flowrepro --help`` stays fast.
"""
__version__ = "0.1.0"
