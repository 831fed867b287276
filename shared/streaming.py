"""Read, validate and encode a large table in chunks, with bounded memory.

:func:`shared.tables.load_table` holds the whole table as a pandas frame (text
cells, then float64), which is fine for tens of thousands of rows and not for
millions. :func:`encode_table` reads CSV (pandas ``chunksize``) or Parquet
(pyarrow record batches) a chunk at a time, validates each chunk with the same
validator (so errors still name the file, the column and the line), encodes
it with the schema-only transformer and appends the float32 rows to a file.
The result is a read-only ``np.memmap``: training draws Poisson batches from it
(:class:`client.sampling.PoissonBatches`) and the operating system pages rows
in and out, so memory stays bounded by the chunk size, not the table size.

Problems from every chunk are collected and raised together as one
:class:`DataValidationError`, as for a table read at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import DataValidationError
from shared.schema import Schema
from shared.tables import CSV_READ_OPTIONS, _check_headers, read_raw, validate_frame
from shared.transforms import TableTransformer

DEFAULT_CHUNK_ROWS = 100_000
_MAX_PROBLEMS = 30


def _csv_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    with warnings.catch_warnings():
        # Same strictness as read_raw: a row with too many fields is an error.
        warnings.simplefilter("error", pd.errors.ParserWarning)
        reader = pd.read_csv(path, **CSV_READ_OPTIONS, chunksize=chunk_rows)
        with reader:
            # pandas numbers the rows of every chunk from the start of the file,
            # so validation messages quote the file's own line numbers.
            yield from reader


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    start = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(start, start + len(frame))
        start += len(frame)
        yield frame


def iter_chunks(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """Raw chunks of a CSV or Parquet file (cells as text, or their Parquet type).

    Raises
    ------
    DataValidationError
        If the file is missing, empty or cannot be parsed.
    """
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        read_raw(p)  # raises the same clear error as a whole-table read
    parquet = p.suffix.lower() in (".parquet", ".pq")
    chunks = _parquet_chunks(p, chunk_rows) if parquet else _csv_chunks(p, chunk_rows)
    try:
        yield from chunks
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(
            str(p), [f"cannot be parsed ({first}); check the delimiter (comma), quoting and UTF-8"]
        ) from None
    except (pd.errors.EmptyDataError, OSError, ValueError) as exc:  # Arrow's are ValueErrors
        # A file with no data in it (blank lines only) or a damaged Parquet file: the
        # whole-table reader names the problem and its fix; say something if it does not.
        read_raw(p)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(
            str(p), [f"cannot be read ({first}); re-export it as UTF-8 CSV or Parquet"]
        ) from None


def encode_table(
    path: str | Path,
    schema: Schema,
    out_path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.memmap:
    """Validate and encode a table chunk by chunk into a float32 file.

    Parameters
    ----------
    path : str or Path
        The site's CSV or Parquet table.
    schema : Schema
        The consortium's public schema.
    out_path : str or Path
        Where to write the encoded rows (raw float32, row-major). It holds the
        site's data in encoded form: keep it inside the site's private folder
        and delete it when done.
    chunk_rows : int
        Rows per chunk; peak memory grows with it, not with the table.

    Returns
    -------
    numpy.memmap
        Read-only array of shape ``(rows, transformer width)``.

    Raises
    ------
    DataValidationError
        Listing the problems of every chunk (nothing is returned if any).
    """
    transformer = TableTransformer(schema)
    out = Path(out_path)
    problems: list[str] = []
    rows = 0
    with open(out, "wb") as fh:
        for i, chunk in enumerate(iter_chunks(path, chunk_rows=chunk_rows)):
            if i == 0:
                _check_headers(chunk, str(path))
            try:
                frame = validate_frame(chunk, schema, source=str(path))
            except DataValidationError as exc:
                problems.extend(exc.problems)
                continue
            if not problems:  # once a chunk failed, only collect the remaining problems
                fh.write(np.ascontiguousarray(transformer.encode(frame), np.float32).tobytes())
            rows += len(frame)
    if not problems and rows == 0:
        problems.append("the table has a header but no rows; nothing to train on")
    if problems:
        out.unlink(missing_ok=True)
        shown = problems[:_MAX_PROBLEMS]
        if len(problems) > _MAX_PROBLEMS:
            shown.append(f"… and {len(problems) - _MAX_PROBLEMS} more problem(s) in later chunks")
        raise DataValidationError(str(path), shown)
    return np.memmap(out, dtype=np.float32, mode="r", shape=(rows, transformer.width))
