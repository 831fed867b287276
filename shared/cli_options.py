"""Command-line options for a run's DP and training settings.

``fedsynth server`` and ``fedsynth simulate`` accept the same options, with
defaults taken from :class:`shared.config.RunSettings` (the single source), and
turn them into the same run-config overrides.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.config import (
    AGGREGATIONS,
    DEFAULT_SERVER_LR,
    NOISE_PLACEMENTS,
    NUMERIC_ENCODERS,
    RunSettings,
)
from shared.config_model import RELEASE_GENERATORS

_D = RunSettings()
_A = _D.aggregation


def seed_arg(text: str) -> int:
    """An argparse ``type`` for ``--seed``: an integer the random generators take."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"{seed} is not an integer from 0 to 2**63 - 1")
    return seed


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Add the DP and training options shared by ``server`` and ``simulate``."""
    g = p.add_argument_group("privacy and training (public settings, sent to every site)")
    g.add_argument(
        "--epsilon",
        type=float,
        default=_D.epsilon,
        help=f"ε each site spends in this run; σ is calibrated to it (default {_D.epsilon})",
    )
    g.add_argument("--delta", type=float, default=_D.delta, help=f"δ (default {_D.delta:g})")
    g.add_argument("--rounds", type=int, default=_D.rounds, help=f"default {_D.rounds}")
    g.add_argument(
        "--local-steps",
        type=int,
        default=_D.local_steps,
        help=f"DP-SGD steps per site per round (default {_D.local_steps})",
    )
    g.add_argument(
        "--sample-rate",
        type=float,
        default=_D.sample_rate,
        help=f"Poisson sampling rate q (default {_D.sample_rate})",
    )
    g.add_argument(
        "--max-grad-norm",
        type=float,
        default=_D.max_grad_norm,
        help=f"per-record clip norm C (default {_D.max_grad_norm})",
    )
    g.add_argument("--accountant", choices=["rdp", "prv"], default=_D.accountant)
    g.add_argument(
        "--noise-placement",
        choices=list(NOISE_PLACEMENTS),
        default=_D.noise_placement,
        help="local: each site runs DP-SGD with its own noise (FedAvg); distributed: each "
        "round runs --local-steps central DP-SGD steps, each site adding a 1/K share of the "
        "noise, summed under secure aggregation (needs --secure-aggregation; K = min sites)",
    )
    g.add_argument(
        "--announced-rows",
        type=int,
        default=_D.announced_rows,
        help="the consortium's announced total row count (public; simulate: default the "
        "training rows). Local DP-SGD divides each site's noisy gradient sum by q × this / "
        "min sites (none announced: q × 1000); distributed divides the summed gradient by "
        "q × this (required there)",
    )
    g.add_argument(
        "--generator",
        default=_D.model.generator,
        help=f"generator family (default {_D.model.generator}, trained by DP-SGD like staged, "
        "dp-ctgan and dp-diffusion); release families fitted from noisy statistics, with no "
        f"DP-SGD rounds: {', '.join(RELEASE_GENERATORS)}. dp-copula with --secure-aggregation "
        "--noise-placement distributed gives the most useful table at ε ≈ 1 (README, "
        "'Which generator')",
    )
    g.add_argument("--seed", type=seed_arg, default=_D.seed)
    g.add_argument(
        "--numeric-encoder",
        choices=list(NUMERIC_ENCODERS),
        default=_D.model.numeric_encoder,
        help="numeric columns: min-max on public bounds, or a quantile map fitted from noisy "
        f"site histograms before round 1 (default {_D.model.numeric_encoder})",
    )
    g.add_argument(
        "--encoder-budget-fraction",
        type=float,
        default=_D.encoder_budget_fraction,
        help="share of ε given up by DP-SGD for the dp-quantile histograms "
        f"(default {_D.encoder_budget_fraction})",
    )
    g.add_argument(
        "--effect-budget-fraction",
        type=float,
        default=_D.effect_budget_fraction,
        help="staged generator: share of ε for the DP effect calibration after the last "
        f"round; 0 turns it off (default {_D.effect_budget_fraction})",
    )


def add_aggregation_options(p: argparse.ArgumentParser) -> None:
    """Add the server aggregation options (``server`` and ``simulate``)."""
    a = p.add_argument_group("aggregation (public server settings; see README 'Aggregation')")
    a.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default=_A.aggregation,
        help=f"how the server combines the sites' updates (default {_A.aggregation})",
    )
    a.add_argument(
        "--server-learning-rate",
        type=float,
        default=_A.server_learning_rate,
        help=f"server step η on the mean update (default 0: {DEFAULT_SERVER_LR})",
    )
    a.add_argument(
        "--server-momentum",
        type=float,
        default=_A.server_momentum,
        help=f"β of fedavgm, β1 of fedadam (default {_A.server_momentum})",
    )
    a.add_argument(
        "--server-beta2",
        type=float,
        default=_A.server_beta2,
        help=f"β2 of fedadam (default {_A.server_beta2})",
    )
    a.add_argument(
        "--server-tau",
        type=float,
        default=_A.server_tau,
        help=f"τ of fedadam (default {_A.server_tau:g})",
    )
    a.add_argument(
        "--proximal-mu",
        type=float,
        default=_A.proximal_mu,
        help=f"μ of fedprox's proximal term at the sites (default {_A.proximal_mu})",
    )


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides (Flower's kebab-case keys) from :func:`add_run_options`."""
    return {
        "epsilon": args.epsilon,
        "delta": args.delta,
        "rounds": args.rounds,
        "local-steps": args.local_steps,
        "sample-rate": args.sample_rate,
        "max-grad-norm": args.max_grad_norm,
        "accountant": args.accountant,
        "noise-placement": args.noise_placement,
        "announced-rows": args.announced_rows,
        "generator": args.generator,
        "seed": args.seed,
        "numeric-encoder": args.numeric_encoder,
        "encoder-budget-fraction": args.encoder_budget_fraction,
        "effect-budget-fraction": args.effect_budget_fraction,
    }


def aggregation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides from :func:`add_aggregation_options`."""
    return {
        "aggregation": args.aggregation,
        "server-learning-rate": args.server_learning_rate,
        "server-momentum": args.server_momentum,
        "server-beta2": args.server_beta2,
        "server-tau": args.server_tau,
        "proximal-mu": args.proximal_mu,
    }


def add_secagg_options(p: argparse.ArgumentParser, *, default: bool) -> None:
    """Add the secure aggregation options; ``default`` differs by command."""
    g = p.add_argument_group("secure aggregation (the server learns only the sum of updates)")
    g.add_argument(
        "--secure-aggregation",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"mask each site's update so the server sees only their sum (default {default})",
    )
    g.add_argument(
        "--secagg-threshold",
        type=int,
        default=_D.secagg_threshold,
        help="sites needed at every stage; fewer abort the round (default 0: a strict majority)",
    )
    g.add_argument(
        "--secagg-bits",
        type=int,
        default=_D.secagg_bits,
        help=f"quantisation bits per update coordinate (default {_D.secagg_bits})",
    )


def secagg_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Run-config overrides from :func:`add_secagg_options`."""
    return {
        "secure-aggregation": bool(args.secure_aggregation),
        "secagg-threshold": args.secagg_threshold,
        "secagg-bits": args.secagg_bits,
    }
