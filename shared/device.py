"""Pick the torch device: a GPU when present, unless told otherwise."""

from __future__ import annotations

import re

import torch

from shared.errors import ConfigError


def check_device_name(name: str) -> None:
    """Refuse a device name that is none of ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` to a device.

    ``"auto"`` uses CUDA when available, else the CPU. Asking for CUDA on a
    machine without it is an error rather than a silent fallback.
    """
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():  # a cuda name
        raise ConfigError(
            f"device {name!r} was requested but CUDA is not available on this machine; "
            "use --device cpu or auto"
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {name!r} was requested but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}); use one of them, cuda or auto"
        )
    return device
