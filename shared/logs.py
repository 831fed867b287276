"""Logging for fedsynth's own messages (the ``fedsynth.*`` logger tree).

Flower and Ray configure their own loggers, and may install root handlers
before ours: configuring only the ``fedsynth`` tree (no propagation to root)
keeps our lines visible exactly once, in every process (CLI, ServerApp, ClientApp).
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Send ``fedsynth.*`` records to stderr once; idempotent."""
    logger = logging.getLogger("fedsynth")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_fedsynth", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._fedsynth = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    return logger
