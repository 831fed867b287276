"""NHEFS loaded offline from ``causaldata``, against its hand-written public schema."""

from __future__ import annotations

import importlib.util

import pytest

from shared.tables import validate_frame
from simulations.nhefs import load_nhefs, nhefs_schema

needs_causaldata = pytest.mark.skipif(
    importlib.util.find_spec("causaldata") is None, reason="causaldata (dev extra) not installed"
)


def test_schema_names_treatment_and_outcome() -> None:
    schema = nhefs_schema()
    assert schema.roles == {"treatment": "qsmk", "outcome": "wt82_71"}
    assert schema.column("qsmk").categories == ("no", "yes")


@needs_causaldata
def test_loads_the_rows_with_an_observed_outcome() -> None:
    # Execute
    frame, schema = load_nhefs()
    # Assert: 1,629 smokers less the 63 without a 1982 weight (Hernán & Robins, ch. 12).
    assert len(frame) == 1566
    assert frame["wt82_71"].notna().all()
    assert (frame["qsmk"] == "yes").sum() == 403
    assert (frame["sex"] == "female").sum() == 804  # codebook: 1 = female
    assert len(validate_frame(frame, schema)) == 1566
