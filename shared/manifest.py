"""Save and load generators as ``state_dict`` files plus a JSON manifest.

Nothing is pickled as a whole object: weights are a plain tensor dict loaded
with ``weights_only=True``, and everything needed to rebuild the model (family,
hyper-parameters, the full public schema) is JSON. The manifest carries the
SHA-256 of the weights file, so a damaged or swapped file is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from shared.config import ModelSettings
from shared.errors import ConfigError, ModelError, SchemaError
from shared.models import GeneratorFamily, build_generator
from shared.schema import Schema

MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
FORMAT = "fedsynth-generator/1"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via fsync + rename (no torn files after a crash)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_state(path: Path, state: dict[str, torch.Tensor]) -> str:
    """Save a tensor dict atomically; return its SHA-256."""
    import io

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)


def load_state(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """Load a tensor dict after checking its SHA-256 against the manifest."""
    if not path.is_file():
        raise ModelError(f"weights file {path} is missing; copy the whole model folder")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelError(
            f"weights file {path} is corrupt or was replaced: SHA-256 {actual[:16]}… does not match "
            f"the manifest's {expected_sha256[:16]}…. Restore the folder from the original output."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ModelError(f"weights file {path} cannot be read ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path} is not a tensor state dict")
    return state


def save_model(
    folder: str | Path, family: GeneratorFamily, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``weights.pt`` and ``manifest.json`` into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created if needed.
    family : GeneratorFamily
        The trained generator.
    extra : dict, optional
        JSON-serialisable facts to record (privacy figures, run settings).
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    digest = save_state(out / WEIGHTS, family.state_dict())
    manifest = {
        "format": FORMAT,
        "generator": family.name,
        "model_settings": family.settings.__dict__,
        "schema": family.schema.to_dict(),
        "schema_fingerprint": family.schema.fingerprint(),
        "weights": {"file": WEIGHTS, "sha256": digest},
        **(extra or {}),
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return out


def load_model(folder: str | Path) -> tuple[GeneratorFamily, dict[str, Any]]:
    """Rebuild a generator from a folder written by :func:`save_model`.

    Returns
    -------
    (GeneratorFamily, dict)
        The generator (on CPU) and the parsed manifest.
    """
    out = Path(folder)
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{out} has no {MANIFEST}; pass the model/ folder of a fedsynth run"
        ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"{out / MANIFEST} is not valid JSON ({exc}); the model folder is damaged"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{out / MANIFEST} is not a {FORMAT} manifest")
    try:
        schema = Schema.from_dict(manifest["schema"], source=str(out / MANIFEST))
        stored = dict(manifest["model_settings"])
        if manifest.get("generator") == "staged":
            # Staged models saved before ``effect_model`` existed have MLP offsets.
            stored.setdefault("effect_model", "mlp")
        settings = _settings(stored)
        weights = manifest["weights"]
        digest = str(weights["sha256"])
        file = str(weights["file"])
    except (KeyError, TypeError, ValueError, SchemaError, ConfigError) as exc:
        raise ModelError(f"{out / MANIFEST} is incomplete or invalid ({exc})") from None
    if schema.fingerprint() != manifest.get("schema_fingerprint"):
        raise ModelError(f"{out / MANIFEST}: the embedded schema does not match its fingerprint")
    family = build_generator(schema, settings)
    try:
        family.load_state_dict(load_state(out / Path(file).name, digest))
    except ModelError as exc:
        raise ModelError(
            f"{out}: {exc} (its {MANIFEST} and weights no longer belong together)"
        ) from None
    return family, manifest


def _settings(stored: dict[str, Any]) -> ModelSettings:
    """The manifest's model settings, with the same checks as a run's config."""
    known = {f.name for f in fields(ModelSettings)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}")
    return ModelSettings.from_config({k.replace("_", "-"): v for k, v in stored.items()})
