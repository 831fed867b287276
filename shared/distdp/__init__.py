"""Distributed DP-SGD under secure aggregation (Kairouz, Liu & Steinke, ICML 2021).

Each site adds only a 1/K share of the noise to its clipped gradient sum, on the
integers (distributed discrete Gaussian); secure aggregation reveals only the sum,
which carries the noise of one central DP-SGD step over the union of the sites'
batches. :mod:`~shared.distdp.encoding` is the integer codec and the sampler,
:mod:`~shared.distdp.accounting` the guarantee per collusion level,
:mod:`~shared.distdp.step` one step at the sites and at the server.
"""
