"""fedsynth: federated, differentially private synthetic data. See README.md."""

__version__ = "0.1.0"
