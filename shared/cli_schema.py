"""Handlers of ``fedsynth schema draft|check`` and ``fedsynth sample``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from shared.errors import ConfigError
from shared.manifest import load_model
from shared.schema import Schema
from shared.schema_draft import draft_schema
from shared.tables import load_table, read_raw

log = logging.getLogger("fedsynth")


def draft(args: argparse.Namespace) -> int:
    """Write a draft schema read from a local table (warns loudly)."""
    frame = read_raw(args.table)
    schema = draft_schema(frame.replace("", None), name=args.name, source=args.table)
    schema.save(args.out)
    print(f"wrote draft schema {args.out} ({len(schema.columns)} columns).")
    print(
        "WARNING: the draft was read from private rows. Review every category list and "
        "replace min/max with documented public ranges before the consortium adopts it."
    )
    return 0


def check(args: argparse.Namespace) -> int:
    """Validate a table against a schema; exit 0 when it passes."""
    schema = Schema.load(args.schema)
    frame = load_table(args.table, schema)
    print(
        f"{args.table}: {len(frame)} rows match schema {schema.name!r} "
        f"(fingerprint {schema.fingerprint()[:12]})."
    )
    return 0


def parse_conditions(items: list[str]) -> dict[str, str]:
    """Turn ``["COL=VALUE", ...]`` into a mapping, refusing malformed or repeated columns."""
    out: dict[str, str] = {}
    for item in items:
        col, sep, value = item.partition("=")
        if not sep or not col or not value:
            raise ConfigError(
                f"--condition {item!r} must be COL=VALUE, e.g. --condition sex=female"
            )
        if col in out:
            raise ConfigError(f"--condition names {col!r} twice; give one value per column")
        out[col] = value
    return out


def sample(args: argparse.Namespace) -> int:
    """Sample rows from a released model folder (optionally conditioned or rebalanced)."""
    if args.n < 1:
        raise ConfigError(f"--n {args.n} must be at least 1: the number of rows to write")
    family, _ = load_model(args.model)
    conditions = parse_conditions(getattr(args, "condition", None) or [])
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name, e.g. --out {out}/more.csv")
    if out.exists() and not getattr(args, "force", False):
        raise ConfigError(
            f"--out {out} already exists (it may be a run's released table); give another "
            "file name, or --force to replace it"
        )
    rebalance = getattr(args, "rebalance", None)
    table = family.sample(args.n, seed=args.seed, conditions=conditions, rebalance=rebalance)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target, then renamed: an interrupted write leaves no
        # half-written table under the requested name.
        partial = out.with_name(f".{out.name}.partial")
        table.to_csv(partial, index=False)
        os.replace(partial, out)
    except OSError as exc:
        raise ConfigError(
            f"cannot write --out {out} ({exc.strerror or exc}); choose a writable path"
        ) from None
    print(f"wrote {len(table)} synthetic rows to {out}")
    return 0
