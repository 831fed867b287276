"""Generator families behind one plugin interface (see :mod:`shared.models.base`)."""

from shared.models import copula as _copula  # noqa: F401  (registers "dp-copula")
from shared.models import diffusion as _diffusion  # noqa: F401  (registers "dp-diffusion")
from shared.models import gan as _gan  # noqa: F401  (registers "dp-ctgan")
from shared.models import marginal as _marginal  # noqa: F401  (registers "dp-marginal")
from shared.models import staged as _staged  # noqa: F401  (registers "staged")
from shared.models import vae as _vae  # noqa: F401  (registers "dp-vae")
from shared.models.base import (
    GeneratorFamily,
    LocalLoop,
    available_families,
    build_generator,
    register_family,
)

__all__ = [
    "GeneratorFamily",
    "LocalLoop",
    "available_families",
    "build_generator",
    "register_family",
]
