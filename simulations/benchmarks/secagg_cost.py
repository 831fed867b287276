"""Cost of secure aggregation per round: protocol compute and bytes per site, no Flower.

Runs the four stages of :mod:`shared.secagg` in one process for ``--sites``
sites and a vector of ``--params`` coordinates (default: the dp-vae generator of
the built-in cohort, 5747 parameters), and prints, per stage, the seconds spent
by one site and by the server, and the bytes one site uploads. Transport and
training are not included (``fedsynth simulate --secure-aggregation`` measures
those end to end). The plain upload for comparison is 4 bytes per parameter.

Run: ``python -m simulations.benchmarks.secagg_cost [--sites 3] [--params 5747] [--bits 24]``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from shared.secagg import (
    FixedPointCodec,
    ServerRound,
    site_mask,
    site_setup,
    site_share_keys,
    site_unmask,
)

T = TypeVar("T")
CTX = b"benchmark"


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(sites: int, params: int, bits: int, clip: float = 10.0) -> dict[str, Any]:
    """Seconds and bytes per stage (site figures are the mean over sites)."""
    codec = FixedPointCodec(clip=clip, bits=bits, max_sites=sites)
    t = max(2, sites // 2 + 1)
    rng = np.random.default_rng(0)
    vectors = {i: rng.uniform(-0.01, 0.01, params) for i in range(1, sites + 1)}
    server = ServerRound(threshold=t, codec=codec, context=CTX)
    me, s1 = {}, 0.0
    for i in vectors:
        me[i], dt = _timed(lambda i=i: site_setup(i))  # type: ignore[misc]
        s1 += dt
    roster = server.register_keys({i: m.public for i, m in me.items()})
    sent, s2 = {}, 0.0
    for i, m in me.items():
        sent[i], dt = _timed(lambda m=m: site_share_keys(m, roster, threshold=t, context=CTX))  # type: ignore[misc]
        s2 += dt
    inboxes, srv2 = _timed(lambda: server.route_shares(sent))
    masked, s3 = {}, 0.0
    for i, m in me.items():
        masked[i], dt = _timed(
            lambda i=i, m=m: site_mask(  # type: ignore[misc]
                m, codec.encode(vectors[i], rng), server.share_senders, codec=codec, context=CTX
            )
        )
        s3 += dt
    survivors = server.collect_masked(masked)
    answers, s4 = {}, 0.0
    for i, m in me.items():
        answers[i], dt = _timed(
            lambda i=i, m=m: site_unmask(  # type: ignore[misc]
                m,
                roster,
                inboxes[i],
                survivors=survivors,
                dropped=set(),
                threshold=t,
                context=CTX,
            )
        )
        s4 += dt
    total, srv4 = _timed(lambda: server.unmask(answers))
    err = np.abs(codec.decode_sum(total, sites) - sum(vectors.values())).max()
    wire = codec.to_wire(next(iter(masked.values())))
    return {
        "sites": sites,
        "params": params,
        "bits": bits,
        "threshold": t,
        "site_seconds": {
            "setup": s1 / sites,
            "share_keys": s2 / sites,
            "mask": s3 / sites,
            "unmask": s4 / sites,
        },
        "server_seconds": {"route_shares": srv2, "unmask": srv4},
        "site_upload_bytes": {
            "public_keys": 64,
            "ciphertexts": sum(len(c) for c in sent[1].values()),
            "masked_update": int(wire.nbytes),
            "plain_update_float32": 4 * params,
        },
        "max_abs_error_of_sum": float(err),
        "error_bound_of_sum": sites * codec.step,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the measurement as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--params", type=int, default=5747)
    p.add_argument("--bits", type=int, default=24)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.sites, args.params, args.bits), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
