"""``fedsynth server`` (placeholder until the deployment module lands)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``fedsynth server``."""
    sub.add_parser("server", help="run the coordinator (SuperLink + ServerApp)")
