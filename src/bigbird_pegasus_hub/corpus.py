"""Reading a corpus to summarize: a JSONL, CSV or Parquet file with one document per row, through `datasets`.

The file is streamed (`load_dataset(..., streaming=True)`): rows are read in batches and never held all at once, and
nothing is copied into a cache, so a corpus of millions of rows needs little memory. Before any model is loaded, one
pass over the id and text columns (`scan_corpus`) checks the whole file -- the columns exist, the ids are unique, the
texts are not empty -- and keeps the ids in an Arrow array (a few bytes per row), which later tells which rows an
existing output already holds. A second pass (`read_documents`) yields the texts of the rows a process summarizes.

Needs the `corpus` extra (datasets, pyarrow).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .repo_files import first_line

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

__all__ = [
    "INPUT_FORMATS",
    "CorpusError",
    "CorpusIndex",
    "check_input_path",
    "read_columns",
    "read_documents",
    "scan_corpus",
]

# File name ending -> the `datasets` builder that reads it.
INPUT_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SCAN_BATCH_ROWS = 4096
READ_BATCH_ROWS = 64  # documents of up to ~100 kB each: a few MB per batch
EXAMPLES = 3  # ids quoted in an error message


class CorpusError(ValueError):
    """The corpus (or an output written for it) cannot be used; the message says what is wrong and what to do."""


def require_corpus_extra(*modules: str) -> None:
    """Fails clearly if a package of the `corpus` extra is not installed (without importing it)."""
    missing = [module for module in ("datasets", "pyarrow", *modules) if importlib.util.find_spec(module) is None]
    if missing:
        raise CorpusError(f"This needs {', '.join(missing)}, of the corpus extra: pip install "
                          "'bigbird-pegasus-hub[corpus]'.")


def check_input_path(path: str | Path) -> Path:
    """The cheap checks of an input file, before anything is imported or loaded."""
    require_corpus_extra()
    path = Path(path)
    if path.suffix.lower() not in INPUT_FORMATS:
        raise CorpusError(f"--input {path}: unknown format {path.suffix or '(no extension)'!r}: give a "
                          f"{', '.join(INPUT_FORMATS)} file.")
    if not path.is_file():
        raise CorpusError(f"--input {path}: " + ("is a folder: give a file." if path.is_dir() else "no such file."))
    return path


@dataclass(frozen=True)
class CorpusIndex:
    """What the scan of a corpus found.

    Attributes:
        ids: the id of every row, in row order; None when the corpus has no id column (the row number is the id).
        rows: the number of rows.
        empty_rows: the rows whose text is missing, empty or only whitespace.
    """

    ids: pa.ChunkedArray | None
    rows: int
    empty_rows: np.ndarray

    def id_of(self, row: int):
        return row if self.ids is None else self.ids[row].as_py()

    def rows_of(self, ids: list) -> np.ndarray:
        """The row of each id, -1 for ids that are not in the corpus."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        if self.ids is None:
            rows = np.array([i if type(i) is int and 0 <= i < self.rows else -1 for i in ids], dtype=np.int64)
            return rows
        try:
            found = pc.index_in(pa.array(ids), value_set=self.ids.combine_chunks())
        except (pa.ArrowException, ValueError, TypeError):  # ids of another type than the corpus's
            return np.full(len(ids), -1, dtype=np.int64)
        return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def holds(self, rows: list[int], ids: list) -> np.ndarray:
        """Whether each row is in the corpus with that id (one vectorized `take`, no hash table of all ids)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        rows = np.asarray(rows, dtype=np.int64)
        inside = (rows >= 0) & (rows < self.rows)
        if self.ids is None:
            return inside & np.array([type(i) is int and i == row for i, row in zip(ids, rows)], dtype=bool)
        try:
            expected = self.ids.take(pa.array(np.where(inside, rows, 0)))
            same = pc.equal(expected, pa.array(ids, type=self.ids.type)).fill_null(False)
        except (pa.ArrowException, ValueError, TypeError, OverflowError):  # ids of another type than the corpus's
            return np.zeros(len(rows), dtype=bool)
        return inside & same.to_numpy(zero_copy_only=False)

    def example_ids(self, rows) -> str:
        shown = ", ".join(repr(self.id_of(int(row))) for row in rows[:EXAMPLES])
        return shown + (", ..." if len(rows) > EXAMPLES else "")


def scan_corpus(path: Path, text_column: str | None, id_column: str | None) -> CorpusIndex:
    """Reads the id and text columns of the whole file once and checks them.

    Raises:
        CorpusError: the file cannot be read, a column is missing (the message lists those present), an id is
            missing or repeated, or ids mix types.
    """
    import numpy as np
    import pyarrow as pa

    columns = _columns(path, text_column, id_column)
    id_chunks, empty_rows, rows = [], [], 0
    for batch in _batches(path, columns, SCAN_BATCH_ROWS, arrow=True):
        empty_rows.append(_empty_texts(batch.column(text_column), text_column) + rows)
        if id_column is not None:
            id_chunks.extend(batch.column(id_column).chunks)
        rows += batch.num_rows
    if rows == 0:
        raise CorpusError(f"--input {path} has no rows: there is nothing to summarize.")
    ids = None
    if id_column is not None:
        ids = _check_ids(pa.chunked_array(id_chunks, type=id_chunks[0].type), id_column, path)
    return CorpusIndex(ids, rows, np.concatenate(empty_rows))


def read_documents(path: Path, text_column: str, id_column: str | None, rows: np.ndarray) -> Iterator[tuple]:
    """Yields (row, id, text) for the given rows (sorted row numbers) of the file, in row order."""
    import numpy as np

    if len(rows) == 0:
        return
    wanted = np.zeros(int(rows[-1]) + 1, dtype=bool)
    wanted[rows] = True
    first = 0
    columns = [text_column] + ([id_column] if id_column is not None else [])
    for batch in _batches(path, columns, READ_BATCH_ROWS):
        texts = batch[text_column]
        ids = batch[id_column] if id_column is not None else range(first, first + len(texts))
        for row, (id_, text) in enumerate(zip(ids, texts), start=first):
            if row < len(wanted) and wanted[row]:
                yield row, id_, text
        first += len(texts)
        if first >= len(wanted):
            return


def read_columns(path: Path, required: dict[str, str], optional: tuple[str, ...] = ()) -> dict[str, list]:
    """Whole columns of a small file as lists: `required` maps an option name to its column (a missing one is an
    error that lists the columns present), `optional` columns are read if present."""
    present = _require_columns(path, required)
    columns = list(dict.fromkeys([*required.values(), *(column for column in optional if column in present)]))
    values = {column: [] for column in columns}
    for batch in _batches(path, columns, SCAN_BATCH_ROWS):
        for column in columns:
            values[column].extend(batch[column])
    return values


# ----------------------------------------------------------------------------------------------------------------
# Reading through `datasets`.


def _columns(path: Path, text_column: str | None, id_column: str | None) -> list[str]:
    """The columns to read, checked against those of the file."""
    if text_column is None:
        raise CorpusError(f"--input needs --text-column, the column that holds the documents; {path.name} has "
                          f"the columns {_listing(_column_names(path))}.")
    required = {"--text-column": text_column, **({"--id-column": id_column} if id_column is not None else {})}
    _require_columns(path, required)
    return list(dict.fromkeys(required.values()))


def _require_columns(path: Path, required: dict[str, str]) -> list[str]:
    """The file's columns; an error that lists them if a required one (option -> column) is missing."""
    present = _column_names(path)
    for option, column in required.items():
        if column not in present:
            raise CorpusError(f"{path.name} has no column {column!r} ({option}); its columns are {_listing(present)}.")
    return present


def _column_names(path: Path) -> list[str]:
    dataset = _streamed(path)
    names = dataset.column_names  # known up front for Parquet and JSON; CSV tells with its first rows
    if names is None:
        with _reading(path):
            first = next(iter(dataset.iter(batch_size=1)), None)
        names = list(first or ())
    return names


def _batches(path: Path, columns: list[str], batch_size: int, arrow: bool = False) -> Iterator:
    dataset = _streamed(path, columns).select_columns(columns)
    if arrow:
        dataset = dataset.with_format("arrow")
    with _reading(path):
        yield from dataset.iter(batch_size=batch_size)


def _streamed(path: Path, columns: list[str] | None = None):
    """The file as an IterableDataset. Parquet: only `columns` are read, and without pyarrow's pre-buffering, whose
    cache otherwise grows by every row group read (1.6 GB for a 1.2 GB file, against a flat 0.4 GB without)."""
    import datasets

    datasets.disable_progress_bars()
    # datasets logs a reading failure before raising it: the exception alone makes our one line.
    datasets.logging.set_verbosity(logging.CRITICAL)
    builder = INPUT_FORMATS[path.suffix.lower()]
    options = {}
    if builder == "parquet":
        import pyarrow.dataset

        options = {"fragment_scan_options": pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False),
                   "columns": columns}
    with _reading(path):
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=True, **options)
        except StopIteration:  # datasets' answer to a file without any row
            raise CorpusError(f"--input {path} has no rows: there is nothing to summarize.") from None


@contextmanager
def _reading(path: Path):
    """Turns the readers' errors about the file into one CorpusError line."""
    import pyarrow as pa

    try:
        yield
    except CorpusError:
        raise
    except (pa.ArrowException, ValueError, OSError) as error:
        kind = INPUT_FORMATS[path.suffix.lower()]
        raise CorpusError(f"--input {path} cannot be read as {kind.upper()} ({first_line(error)}): is the file "
                          "complete, and in the format its name says?") from error


def _empty_texts(texts: pa.ChunkedArray, column: str) -> np.ndarray:
    """Rows (within the batch) whose text is missing, empty or only whitespace."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(texts.type):
        return np.arange(len(texts))
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise CorpusError(f"The text column {column!r} holds {texts.type} values, not text: choose the column with "
                          "the documents.")
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0).fill_null(True)
    return np.flatnonzero(blank.to_numpy(zero_copy_only=False))


def _check_ids(ids: pa.ChunkedArray, column: str, path: Path) -> pa.ChunkedArray:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_integer(ids.type) or pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise CorpusError(f"The id column {column!r} of {path.name} holds {ids.type} values: ids must be all text or "
                          "all whole numbers.")
    if ids.null_count:
        missing = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))
        raise CorpusError(f"{ids.null_count} row(s) of {path.name} have no id in column {column!r} (row "
                          f"{', '.join(map(str, missing[:EXAMPLES]))}): every document needs one.")
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = ", ".join(f"{item['values'].as_py()!r} ({item['counts'].as_py()} times)"
                             for item in repeated[:EXAMPLES])
        raise CorpusError(f"The id column {column!r} of {path.name} repeats {len(repeated)} id(s): {examples}. Ids "
                          "must be unique so that every summary names its document: deduplicate the rows, or "
                          "choose another --id-column.")
    return ids


def _listing(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names) if names else "(none)"
