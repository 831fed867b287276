"""``fedsynth client`` (placeholder until the deployment module lands)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth client``."""
    sub.add_parser("client", help="run a site (SuperNode)")
