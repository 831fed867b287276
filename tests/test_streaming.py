"""Chunked reading, validation and encoding of large tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.cohort import cohort_schema, generate_cohort
from shared.errors import DataValidationError
from shared.streaming import encode_table, iter_chunks
from shared.tables import load_table
from shared.transforms import TableTransformer


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "cohort.csv"
    generate_cohort(2500, seed=3).to_csv(path, index=False)
    return path


def test_chunked_encoding_equals_whole_table_encoding(cohort_csv: Path, tmp_path: Path) -> None:
    schema = cohort_schema()
    whole = TableTransformer(schema).encode(load_table(cohort_csv, schema))

    chunked = encode_table(cohort_csv, schema, tmp_path / "rows.f32", chunk_rows=700)

    assert chunked.dtype == np.float32 and chunked.shape == whole.shape
    np.testing.assert_array_equal(np.asarray(chunked), whole)


def test_parquet_is_read_in_chunks_too(cohort_csv: Path, tmp_path: Path) -> None:
    schema = cohort_schema()
    frame = load_table(cohort_csv, schema)
    frame.to_parquet(tmp_path / "t.parquet")

    chunked = encode_table(tmp_path / "t.parquet", schema, tmp_path / "rows.f32", chunk_rows=999)

    np.testing.assert_array_equal(np.asarray(chunked), TableTransformer(schema).encode(frame))


def test_errors_in_later_chunks_name_the_files_line(cohort_csv: Path, tmp_path: Path) -> None:
    # Prepare: break one cell in the third chunk (data row 1,500 is line 1,502)
    lines = cohort_csv.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("age")
    cells = lines[1501].split(",")
    cells[col] = "old"
    lines[1501] = ",".join(cells)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")

    # Execute / Assert
    with pytest.raises(DataValidationError, match=r"column 'age'.*line 1502: 'old'") as info:
        encode_table(bad, cohort_schema(), tmp_path / "rows.f32", chunk_rows=700)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "rows.f32").exists()  # nothing half-encoded is left behind


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        encode_table(tmp_path / "nope.csv", cohort_schema(), tmp_path / "rows.f32")


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("blank.csv", b"\n\n", r"blank\.csv"),
        (
            "damaged.parquet",
            b"not parquet at all",
            r"(?s)damaged\.parquet.*cannot be parsed as parquet",
        ),
    ],
)
def test_unreadable_files_get_the_whole_table_readers_message(
    tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    # Training reads the table in chunks; a file that is non-empty yet holds no data,
    # or a damaged Parquet file, must get the same clear error as `schema check`.
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataValidationError, match=expected):
        list(iter_chunks(path))
