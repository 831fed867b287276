"""Conditional sampling and rebalancing (``conditions=``, ``rebalance=``, ``--condition``).

Tolerances (also in the README): with a small VAE trained without DP for a few
seconds on the built-in cohort, conditioning on ``diabetes=yes`` (11% of rows)
gives other categorical columns whose conditional marginals are within total
variation (TV) distance 0.08 of the real conditional ones, and within 0.02 of
the model's own conditional (a large unconditional sample filtered to
``diabetes=yes``), which checks that the sampler is exact for the model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsynth.cli import main
from shared.cohort import cohort_schema, generate_cohort
from shared.config import ModelSettings
from shared.constrained import RowDistribution
from shared.errors import ConfigError
from shared.manifest import save_model
from shared.models import GeneratorFamily, build_generator
from shared.models.vae import DPVAE
from shared.schema import Schema
from shared.tables import validate_frame

OTHER = ["sex", "smoker", "hypertension", "ckd", "prior_mi", "statin", "mace"]
TOL_REAL = 0.08
TOL_MODEL = 0.02
CONSTRAINED = Path(__file__).parent / "data" / "constrained_schema.json"


def _tv(a: pd.Series, b: pd.Series) -> float:
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return float(0.5 * pa.sub(pb, fill_value=0.0).abs().sum())


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return validate_frame(generate_cohort(9000, seed=7), cohort_schema())


@pytest.fixture(scope="module")
def trained(real: pd.DataFrame) -> GeneratorFamily:
    """A small VAE trained without DP (plain Adam, 250 steps of 512 rows: seconds)."""
    torch.manual_seed(0)
    family = build_generator(cohort_schema(), ModelSettings())
    x = torch.tensor(family.encode(real))
    loss_fn = family.criterion()
    opt = torch.optim.Adam(family.module.parameters(), lr=2e-2)
    gen = torch.Generator().manual_seed(0)
    family.module.train()
    for _ in range(250):
        batch = x[torch.randint(0, len(x), (512,), generator=gen)]
        loss = loss_fn(family.module(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return family


def test_conditioned_rows_all_hold_the_value_and_match_the_real_conditional(
    trained: GeneratorFamily, real: pd.DataFrame
) -> None:
    rows = trained.sample(10_000, seed=1, conditions={"diabetes": "yes"})
    assert len(rows) == 10_000 and (rows["diabetes"] == "yes").all()
    truth = real[real["diabetes"] == "yes"]
    tvs = {c: _tv(rows[c], truth[c]) for c in OTHER}
    assert max(tvs.values()) <= TOL_REAL, tvs
    # Conditioning matters for these columns: the real marginals are further away.
    shifted = [c for c in OTHER if _tv(real[c], truth[c]) > TOL_REAL]
    assert {"hypertension", "statin"} <= set(shifted)


def test_conditional_sampling_is_exact_for_the_model(trained: GeneratorFamily) -> None:
    rows = trained.sample(10_000, seed=2, conditions={"diabetes": "yes"})
    free = trained.sample(150_000, seed=3)
    model = free[free["diabetes"] == "yes"]
    tvs = {c: _tv(rows[c], model[c]) for c in OTHER}
    assert max(tvs.values()) <= TOL_MODEL, tvs
    for col in ("age", "ldl_baseline"):  # numeric columns too: means within 2%
        assert abs(rows[col].mean() / model[col].mean() - 1) < 0.02


def test_several_conditions_and_seed_reproducibility(trained: GeneratorFamily) -> None:
    conds = {"diabetes": "yes", "statin": "no", "sex": "female"}
    rows = trained.sample(3000, seed=4, conditions=conds)
    for col, value in conds.items():
        assert (rows[col] == value).all()
    validate_frame(rows, trained.schema)
    pd.testing.assert_frame_equal(rows, trained.sample(3000, seed=4, conditions=conds))


def test_rebalance_gives_equal_counts(trained: GeneratorFamily) -> None:
    rows = trained.sample(3001, seed=5, rebalance="smoker", conditions={"mace": "yes"})
    counts = rows["smoker"].value_counts()
    assert sorted(counts.tolist()) == [1000, 1000, 1001]
    assert (rows["mace"] == "yes").all()


@pytest.mark.parametrize(
    ("conditions", "rebalance", "message"),
    [
        ({"nope": "x"}, None, r"'nope': not a column .* categorical columns are 'sex', "),
        ({"sex": "other"}, None, r"cannot condition on sex='other': not a category"),
        ({"age": "50"}, None, "'age': it is integer; only categorical"),
        ({}, "ldl_12m", "'ldl_12m': it is continuous"),
        ({"sex": "male"}, "sex", "both conditioned on and rebalanced"),
    ],
)
def test_bad_conditions_are_refused(
    trained: GeneratorFamily, conditions: dict[str, str], rebalance: str | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        trained.sample(10, conditions=conditions, rebalance=rebalance)


def test_conditions_against_the_constraints_are_refused() -> None:
    family = build_generator(Schema.load(CONSTRAINED), ModelSettings())
    with pytest.raises(ConfigError, match="can never hold under the schema's constraints"):
        family.sample(10, conditions={"sex": "male", "pregnant": "yes"})
    rows = family.sample(2000, seed=1, conditions={"pregnant": "yes"}, rebalance="city")
    assert (rows["sex"] == "female").all() and rows["city"].value_counts().tolist() == [500] * 4
    assert set(zip(rows["country"], rows["city"], strict=True)) <= {
        ("fr", "paris"),
        ("fr", "lyon"),
        ("uk", "london"),
        ("de", "berlin"),
    }


class _NeverDiabetic(DPVAE):
    """A family exposing only finished rows, none of them diabetic."""

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        rows = self.sample_encoded(n, generator)
        span = next(s for s in self.transformer.spans if s.column == "diabetes")
        rows[:, span.start : span.stop] = torch.tensor([1.0, 0.0])
        return RowDistribution.point(rows.numpy())


class _FinishedRows(DPVAE):
    """A family exposing only finished rows (as dp-copula and dp-marginal do)."""

    def sample_distribution(self, n: int, generator: torch.Generator) -> RowDistribution:
        return RowDistribution.point(self.sample_encoded(n, generator).detach().numpy())


def test_finished_rows_that_break_an_inequality_are_resampled_not_an_internal_error() -> None:
    # An untrained model draws numbers at random: many rows break systolic > diastolic or
    # admission <= discharge, which no categorical choice repairs.
    schema = Schema.load(CONSTRAINED)
    torch.manual_seed(0)
    family = _FinishedRows(schema, ModelSettings())

    rows = family.sample(600, seed=1, conditions={"pregnant": "yes"})
    balanced = family.sample(400, seed=2, rebalance="city")

    assert len(rows) == 600 and (rows["pregnant"] == "yes").all()
    assert (rows["sex"] == "female").all()
    assert balanced["city"].value_counts().tolist() == [100] * 4
    for table in (rows, balanced):
        for rule in schema.constraints:
            assert int(rule.violations(table).sum()) == 0, rule.describe()
    # The draws did break the inequalities: the resampling above was needed.
    draws = family.sample_distribution(400, torch.Generator().manual_seed(3))
    _, unmet = family.decoder.decode(draws, np.random.default_rng(3))
    assert unmet.any()


def test_a_value_of_probability_zero_is_a_clear_error() -> None:
    family = _NeverDiabetic(cohort_schema(), ModelSettings())
    with pytest.raises(ConfigError, match=re.escape("probability 0 to {'diabetes': 'yes'}")):
        family.sample(10, conditions={"diabetes": "yes"})
    assert (family.sample(50, conditions={"diabetes": "no"})["diabetes"] == "no").all()


def test_cli_sample_with_conditions(
    trained: GeneratorFamily, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(tmp_path / "model", trained)
    out = tmp_path / "rare.csv"
    code = main(
        [
            "sample",
            "--model",
            str(tmp_path / "model"),
            "--n",
            "300",
            "--condition",
            "diabetes=yes",
            "--condition",
            "sex=female",
            "--rebalance",
            "statin",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = pd.read_csv(out)
    assert (rows["diabetes"] == "yes").all() and (rows["sex"] == "female").all()
    assert rows["statin"].value_counts().tolist() == [150, 150]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--condition", "diabetes"], "must be COL=VALUE"),
        (["--condition", "sex=a", "--condition", "sex=b"], "names 'sex' twice"),
        (["--condition", "diabetes=maybe"], "not a category of 'diabetes'"),
    ],
)
def test_cli_bad_condition_is_one_clear_message(
    trained: GeneratorFamily,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    save_model(tmp_path / "model", trained)
    code = main(["sample", "--model", str(tmp_path / "model"), "--n", "5", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_sample_never_replaces_a_table_unless_told(
    trained: GeneratorFamily, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_model(tmp_path / "model", trained)
    out = tmp_path / "synthetic.csv"
    out.write_text("the released table\n", encoding="utf-8")
    base = ["sample", "--model", str(tmp_path / "model"), "--n", "5", "--out"]

    assert main([*base, str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force to replace it" in err
    assert out.read_text(encoding="utf-8") == "the released table\n"

    assert main([*base, str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err

    assert main([*base, str(out), "--force"]) == 0
    assert len(pd.read_csv(out)) == 5
    assert not list(tmp_path.glob(".*.partial"))


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", "x"])
def test_cli_sample_refuses_a_seed_the_generators_cannot_take(
    trained: GeneratorFamily, tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: str
) -> None:
    save_model(tmp_path / "model", trained)
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--model", str(tmp_path / "model"), "--n", "5", "--seed", seed])
    assert exit_.value.code == 2
    assert "argument --seed" in capsys.readouterr().err


def test_long_choice_lists_say_how_many_were_left_out() -> None:
    from shared.models.sampling import _listed

    assert _listed(["a", "b"]) == "'a', 'b'"
    assert _listed([str(i) for i in range(25)], limit=3) == "'0', '1', '2' and 22 more"
