"""Empirical privacy checks of a released synthetic table (needs the training rows).

These measure one released table; they are not a privacy guarantee (the DP
ledger is). A clean result means no memorisation was *detected* by these
attacks, nothing more: Stadler, Oprisanu & Troncoso ("Synthetic Data –
Anonymisation Groundhog Day", USENIX Security 2022) show outlier records can
stay exposed to (shadow-model) membership inference when average-case figures
look reassuring, and Ganev & De Cristofaro ("On the Inadequacy of
Similarity-based Privacy Metrics", 2023) show tables that pass DCR-style checks
while leaking records. A bad result is strong evidence of leakage.

* Exact matches: share of synthetic rows identical (every column) to a
  training row, next to the same share for holdout rows, the chance baseline.
  On a table with many repeated rows (point masses, few categories) the two
  shares differ by chance: which rare pattern lands in the training rows and
  not in the holdout decides it, not the generator. So the difference is
  compared with random re-splits of the training and holdout rows (the null
  hypothesis that training rows are no likelier to be copied than holdout
  rows): its excess over their mean, their spread, and a one-sided p-value.
  Such a test has little power on those tables: a few copied unique rows hide
  in that chance spread (README, "Exact matches and chance").
* Distance to closest record (DCR) share: for each synthetic row, is it
  closer to a training row than to a row of an equal-size holdout sample? 0.5
  means no memorisation signal (Platzer & Reutterer, "Holdout-Based Empirical
  Assessment of Mixed-Type Synthetic Data", Frontiers in Big Data, 2021).
  Ties count one half. The nearest-neighbour distance ratio (NNDR, closest /
  second closest) shows whether synthetic rows sit unusually tight on single
  records; 0 for an exact copy.
* Membership inference: the full black-box attack of Chen, Yu, Zhang & Fritz
  ("GAN-Leaks: A Taxonomy of Membership Inference Attacks against Generative
  Models", ACM CCS 2020). A candidate record's score is minus its distance to
  the closest synthetic record; members (training rows) against non-members
  (holdout rows) gives a ROC AUC (0.5 = no better than guessing) and the true
  positive rate at 1% false positives.

Distances are Euclidean in the schema encoding (one-hot categoricals, numerics
scaled by the public range to [-1, 1], missing indicators) and rounded to 1e-6,
so floating-point noise on an exact copy counts as a distance of 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neighbors import NearestNeighbors

from shared.evaluation.inputs import Limits, encode, sample_rows
from shared.schema import Schema

DCR_BINS = 30
#: Random re-splits of the exact-match reference samples (the chance spread).
RESPLITS = 400
MIA_METHOD = (
    "distance to closest synthetic record (full black-box attack of Chen, Yu, Zhang & Fritz, "
    "'GAN-Leaks: A Taxonomy of Membership Inference Attacks against Generative Models', "
    "ACM CCS 2020): score = -distance from a candidate to its nearest synthetic row"
)
DCR_METHOD = (
    "share of synthetic rows closer to a training row than to a row of an equal-size holdout "
    "sample, ties counted 1/2 (Platzer & Reutterer, 'Holdout-Based Empirical Assessment of "
    "Mixed-Type Synthetic Data', Frontiers in Big Data 2021); 0.5 = no memorisation signal"
)


def _hashes(frame: pd.DataFrame, schema: Schema) -> np.ndarray:
    """One 64-bit hash per row over all schema columns (missing values hash alike)."""
    return pd.util.hash_pandas_object(frame[schema.names], index=False).to_numpy()


def _distances(query: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k).fit(reference)
    dist, _ = nn.kneighbors(query)
    return np.round(np.asarray(dist, dtype=np.float64), 6)


def _nndr(dist: np.ndarray) -> np.ndarray:
    # Closest / second closest; two identical references at distance 0 give 0
    # (an exact copy), following the usual 1e-8 guard on the denominator.
    return np.asarray(dist[:, 0] / (dist[:, 1] + 1e-8))


def resplit_excess(
    synthetic: np.ndarray,
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    *,
    draws: int,
    rng: np.random.Generator,
) -> tuple[float, np.ndarray]:
    """Exact-match rate to ``ref_a`` minus the rate to ``ref_b``, and that difference
    under ``draws`` random re-splits of the pooled references into parts of the same
    two sizes (row hashes throughout).

    A synthetic row counts for a reference set when its pattern occurs there at
    least once, as in :func:`exact_matches`. With unequal sizes the null's mean is
    not 0 (the larger part holds more patterns); compare the observed value with it.
    """
    pooled = np.concatenate([ref_a, ref_b])
    patterns, inverse = np.unique(pooled, return_inverse=True)
    where = np.minimum(np.searchsorted(patterns, synthetic), len(patterns) - 1)
    hit = patterns[where] == synthetic
    share = np.bincount(where[hit], minlength=len(patterns)) / max(len(synthetic), 1)

    def excess(in_a: np.ndarray) -> float:
        present_a = np.bincount(inverse[in_a], minlength=len(patterns)) > 0
        present_b = np.bincount(inverse[~in_a], minlength=len(patterns)) > 0
        return float(share @ present_a - share @ present_b)

    first = np.arange(len(pooled)) < len(ref_a)
    null = np.array([excess(rng.permutation(first)) for _ in range(draws)])
    return excess(first), null


def exact_matches(
    synthetic: pd.DataFrame,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    train_ref: pd.DataFrame,
    holdout_ref: pd.DataFrame,
    schema: Schema,
    *,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Shares of synthetic rows that equal a training row and a holdout row, and the
    training share's excess over what chance gives.

    The ``*_size_matched`` pair uses the equal-size reference samples, so the two
    shares can be read side by side. The test uses every row: ``excess_over_chance``
    is the training share minus the holdout share, less the mean of that difference
    over :data:`RESPLITS` random re-splits of all training and holdout rows into parts
    of the same sizes (the null hypothesis: training rows are no likelier to be matched
    than holdout rows); ``resplit_sd`` is the re-splits' standard deviation and
    ``resplit_p_value`` the share of them reaching the observed difference.
    """
    syn = _hashes(synthetic, schema)
    train_h, holdout_h = _hashes(train, schema), _hashes(holdout, schema)

    def rate(ref: np.ndarray) -> float:
        return float(np.isin(syn, ref).mean())

    # Each re-split costs O(train + holdout); bound the work on very large tables.
    draws = min(RESPLITS, max(50, 20_000_000 // max(len(train_h) + len(holdout_h), 1)))
    observed, null = resplit_excess(
        syn, train_h, holdout_h, draws=draws, rng=rng or np.random.default_rng(0)
    )
    return {
        "train_rate": rate(train_h),
        "holdout_rate": rate(holdout_h),
        "train_rate_size_matched": rate(_hashes(train_ref, schema)),
        "holdout_rate_size_matched": rate(_hashes(holdout_ref, schema)),
        "excess_over_chance": observed - float(null.mean()),
        "resplit_sd": float(null.std()),
        "resplit_p_value": float((1 + np.sum(null >= observed - 1e-12)) / (1 + len(null))),
        "rows": {"synthetic": len(synthetic), "train": len(train), "holdout": len(holdout)},
    }


def _histogram(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    top = float(np.quantile(np.concatenate([a, b]), 0.99)) or 1.0
    edges = np.linspace(0.0, top, DCR_BINS + 1)
    # Distances beyond the 99th percentile go into the last bar.
    return {
        "edges": edges,
        "to_train": np.histogram(np.minimum(a, top), edges)[0],
        "to_holdout": np.histogram(np.minimum(b, top), edges)[0],
    }


def privacy(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    schema: Schema,
    limits: Limits,
    seed: int,
) -> dict[str, Any]:
    """Exact matches, DCR share, NNDR and a membership-inference attack.

    Parameters
    ----------
    train : DataFrame
        The real rows the generator was trained on (members).
    holdout : DataFrame
        Real rows from the same population never used in training (non-members).
    synthetic : DataFrame
        The released table.
    schema : Schema
        Public schema defining the distance space.
    limits : Limits
        Sample sizes (nearest-neighbour search is quadratic in rows).
    seed : int
        Seed of the samples.

    Returns
    -------
    dict
        ``exact_match``, ``dcr``, ``nndr``, ``membership_inference`` and the
        ``sizes`` actually used.
    """
    rng = np.random.default_rng([seed, 31])
    m = min(len(train), len(holdout), limits.privacy_reference_rows)
    train_ref, holdout_ref = sample_rows(train, m, rng), sample_rows(holdout, m, rng)
    syn_dcr = sample_rows(synthetic, limits.privacy_synthetic_rows, rng)
    syn_mia = sample_rows(synthetic, limits.mia_synthetic_rows, rng)
    enc_train, enc_hold = encode(train_ref, schema), encode(holdout_ref, schema)

    q = encode(syn_dcr, schema)
    d_train, d_hold = _distances(q, enc_train, 2), _distances(q, enc_hold, 2)
    dcr_t, dcr_h = d_train[:, 0], d_hold[:, 0]
    share = float(np.mean(dcr_t < dcr_h) + 0.5 * np.mean(dcr_t == dcr_h))

    enc_mia = encode(syn_mia, schema)
    d_members = _distances(enc_train, enc_mia, 1)[:, 0]
    d_non = _distances(enc_hold, enc_mia, 1)[:, 0]
    labels = np.repeat([1, 0], m)
    scores = -np.concatenate([d_members, d_non])
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "exact_match": exact_matches(
            synthetic, train, holdout, train_ref, holdout_ref, schema, rng=rng
        ),
        "dcr": {
            "share_closer_to_train": share,
            "median_to_train": float(np.median(dcr_t)),
            "median_to_holdout": float(np.median(dcr_h)),
            "p05_to_train": float(np.quantile(dcr_t, 0.05)),
            "p05_to_holdout": float(np.quantile(dcr_h, 0.05)),
            "histogram": _histogram(dcr_t, dcr_h),
            "method": DCR_METHOD,
        },
        "nndr": {
            "median_to_train": float(np.median(_nndr(d_train))),
            "median_to_holdout": float(np.median(_nndr(d_hold))),
            "method": "closest / second-closest distance of each synthetic row; 0 = exact copy",
        },
        "membership_inference": {
            "auc": float(roc_auc_score(labels, scores)),
            "tpr_at_fpr_0.01": float(np.interp(0.01, fpr, tpr)),
            "advantage": float(np.max(tpr - fpr)),
            "method": MIA_METHOD,
        },
        "sizes": {
            "reference_rows_each": m,
            "dcr_synthetic_rows": len(syn_dcr),
            "mia_synthetic_rows": len(syn_mia),
            "mia_candidates": {"members": m, "non_members": m},
        },
        "distance": (
            "Euclidean on the schema encoding (shared.transforms.TableTransformer: one-hot "
            "categoricals, numerics scaled by the schema range to [-1, 1]), rounded to 1e-6"
        ),
    }
