"""The site's own configuration, read once from the SuperNode's node config.

Deployment (``flower-supernode --node-config``) keys::

    data-path        CSV or Parquet table (never leaves the site)
    schema-path      the consortium's schema JSON (must match the server's)
    state-dir        folder holding the privacy ledger (back it up)
    site-name        name shown in reports
    budget-epsilon   total ε this site will ever spend for the consortium
    budget-delta     δ of that guarantee (default 1e-5)
    device           auto | cpu | cuda | cuda:N
    secure-mode      true to use Opacus's cryptographically secure noise
    share-row-count  true to send the row count (private; off by default)

In simulation, Flower gives each virtual node ``partition-id``; the site's
folder ``<sites-dir>/site-<id>/`` (prepared by ``fedsynth simulate``) holds its
table and ledger, and the budget comes from the run config. The resulting
:class:`SiteSettings` is the same in both cases, so the ClientApp has one path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import SiteConfigError
from shared.config import read_value
from shared.errors import ConfigError

LEDGER_FILE = "privacy_ledger.json"


@dataclass(frozen=True)
class SiteSettings:
    """Typed site configuration. ``budget_epsilon`` / ``budget_delta`` are the site's total (ε, δ)."""

    site_name: str
    data_path: Path
    schema_path: Path
    state_dir: Path
    budget_epsilon: float
    budget_delta: float = 1e-5
    device: str = "auto"
    secure_mode: bool = False
    share_row_count: bool = False
    # Opt-in: send the round's training seconds (hints at the row count; see shared.keys).
    share_timing: bool = False
    # Simulation only: derive each site's noise seed from the run seed so a research
    # run reproduces. Real sites leave it None and draw it from local OS randomness,
    # which the coordinator never sees (a seed it knows would let it remove the noise).
    simulation_seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("data_path", "schema_path", "state_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if not (self.budget_epsilon > 0 and 0 < self.budget_delta < 1):
            raise SiteConfigError(
                f"site {self.site_name!r}: budget ε must be > 0 and δ in (0, 1), got "
                f"ε={self.budget_epsilon}, δ={self.budget_delta}"
            )

    @property
    def ledger_path(self) -> Path:
        """Where the privacy ledger lives."""
        return self.state_dir / LEDGER_FILE

    @classmethod
    def from_context(
        cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> SiteSettings:
        """Build settings from a Flower context (deployment or simulation)."""
        try:
            if "data-path" in node_config:
                return cls._from_node_config(node_config)
            if "partition-id" in node_config:
                return cls._from_simulation(node_config, run_config)
        except ConfigError as exc:
            raise SiteConfigError(f"site configuration: {exc}") from None
        raise SiteConfigError(
            "this SuperNode has no 'data-path' in its node config; start it with "
            "fedsynth client --data TABLE --schema SCHEMA.json --budget-epsilon E ..."
        )

    @classmethod
    def _from_node_config(cls, cfg: Mapping[str, Any]) -> SiteSettings:
        data = Path(read_value(cfg, "data-path", str))
        return cls(
            site_name=read_value(cfg, "site-name", str, data.stem),
            data_path=data,
            schema_path=Path(read_value(cfg, "schema-path", str)),
            state_dir=Path(read_value(cfg, "state-dir", str, str(data.parent / "fedsynth-state"))),
            budget_epsilon=read_value(cfg, "budget-epsilon", float, None, lambda v: v > 0, "> 0"),
            budget_delta=read_value(
                cfg, "budget-delta", float, 1e-5, lambda v: 0 < v < 1, "in (0, 1)"
            ),
            device=read_value(cfg, "device", str, "auto"),
            secure_mode=read_value(cfg, "secure-mode", bool, False),
            share_row_count=read_value(cfg, "share-row-count", bool, False),
            share_timing=read_value(cfg, "share-timing", bool, False),
        )

    @classmethod
    def _from_simulation(
        cls, node_cfg: Mapping[str, Any], run_cfg: Mapping[str, Any]
    ) -> SiteSettings:
        pid = read_value(node_cfg, "partition-id", int)
        sites_dir = read_value(run_cfg, "sites-dir", str, "")
        if not sites_dir:
            raise SiteConfigError(
                "simulated site has no data: run config 'sites-dir' is empty; use fedsynth simulate"
            )
        site_dir = Path(sites_dir) / f"site-{pid}"
        run_eps = read_value(run_cfg, "epsilon", float)
        # 0 (the default) means "this run's epsilon is the site's whole budget".
        budget = read_value(run_cfg, "site-budget-epsilon", float, 0.0)
        return cls(
            site_name=f"site-{pid}",
            data_path=site_dir / "data.csv",
            schema_path=Path(read_value(run_cfg, "schema-path", str)),
            state_dir=site_dir / "state",
            budget_epsilon=budget if budget > 0 else run_eps,
            budget_delta=read_value(run_cfg, "delta", float, 1e-5),
            device=read_value(run_cfg, "device", str, "auto"),
            simulation_seed=read_value(run_cfg, "seed", int, 0),
            # Simulated sites share one machine and one operator: timing is not private
            # there, and it gives the federation-overhead figure.
            share_timing=True,
        )
