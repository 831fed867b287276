"""``fedsynth audit``: an empirical lower bound on a site's ε from one training run.

Canaries are inserted at a throwaway copy of a site, each with probability 1/2:
gradient canaries added to every DP-SGD step's clipped sum (white-box, default)
or canary records added to its rows (black-box); the site's real DP-SGD code
trains; a membership-inference test on the canaries gives an ε lower bound at 95%
confidence (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023; maths in :mod:`shared.audit_bound`). Nothing is charged to
any site's ledger: the audit never opens one.
"""
