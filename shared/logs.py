"""Logging for fedsynth's own messages (the ``fedsynth.*`` logger tree).

Flower and Ray configure their own loggers, and may install root handlers
before ours: configuring only the ``fedsynth`` tree (no propagation to root)
keeps our lines visible exactly once, in every process (CLI, ServerApp, ClientApp).

Opacus calls ``logging.basicConfig`` when it is imported (``opacus.utils.module_utils``),
which gives the root logger a stderr handler in every process that trains or
builds a model. Flower's ``flwr`` logger has its own console handler and
propagates to root, so each Flower line would be printed a second time (and its
DEBUG records, which the root handler does not filter, would leak into the run's
log). :func:`setup_logging` therefore stops ``flwr`` propagating: its console
handler alone prints it, as Flower intends.
"""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> logging.Logger:
    """Send ``fedsynth.*`` records to stderr once, and Flower's records once; idempotent."""
    logger = logging.getLogger("fedsynth")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(h, "_fedsynth", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._fedsynth = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    # Flower's console handler already prints every `flwr` record; a root handler
    # (Opacus's basicConfig) would print it again. Set here, not in Flower's files.
    logging.getLogger("flwr").propagate = False
    return logger
