"""Where the summaries of a corpus go, and how an interrupted run resumes.

On disk, next to the output FILE, the folder FILE.parts/ holds one append-only JSON Lines file per process
(`part-rank00000.jsonl`, ...). A process appends each finished batch as whole lines and fsyncs them, with SIGINT,
SIGTERM and SIGHUP held back during the write, so a part ends inside a line only if its process was killed outright (SIGKILL,
power loss); such a torn last line is ignored when parts are read, and cut off before its owner appends again. Every
line carries its row number, so the order in which batches and processes finish does not matter. When all processes
are done, the main process merges the parts in input order into FILE (JSONL or Parquet) through `atomic.atomic_output_file`
(a temporary file beside FILE, fsynced, renamed over it), after which the parts are removed. At any moment FILE is either absent, the old
complete output, or the new complete output.

`--resume` reads the parts (and an existing FILE, copied into a part first) and summarizes only the rows that have no
summary yet; the merge keeps one summary per row. A lock on the parts folder keeps a second run off the same output.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
from array import array
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import TERMINATING_SIGNALS, atomic_output_file, check_output_path
from .corpus import CorpusError, CorpusIndex
from .repo_files import read_json_object
from .summarize import batches

if TYPE_CHECKING:
    import numpy as np

__all__ = ["OUTPUT_FORMATS", "RECORD_FIELDS", "ResultStore", "check_output_options"]

OUTPUT_FORMATS = (".jsonl", ".parquet")
# The fields of an output record, in order (a part's records also carry "row").
RECORD_FIELDS = ("id", "summary", "input_tokens", "truncated", "truncated_tokens", "windows", "seconds")
PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.jsonl"
PREVIOUS_PART = "part-previous.jsonl"  # an existing output, copied in by --resume
PARQUET_ROWS_PER_GROUP = 10_000
CHECK_CHUNK_RECORDS = 10_000  # records checked against the corpus at once
RUN_FILE = "run.json"  # the settings of the run that the parts belong to


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + PARTS_SUFFIX)


def check_output_options(output: Path | None, resume: bool, overwrite: bool) -> None:
    """The cheap checks of --output, --resume and --overwrite, before anything is loaded."""
    if resume and overwrite:
        raise CorpusError("--resume completes an existing output and --overwrite replaces it: choose one.")
    if output is None:
        if resume or overwrite:
            raise CorpusError(f"--{'resume' if resume else 'overwrite'} needs --output FILE (the output it applies to).")
        return
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise CorpusError(f"--output {output}: write a .jsonl or .parquet file.")
    check_output_path(output, overwrite=True, folder=False)  # its parents can be folders; it is a file if it exists
    if resume or overwrite:
        return
    if output.exists():
        raise CorpusError(f"--output {output} already exists: pass --resume to summarize only the rows it lacks, "
                          "or --overwrite to replace it.")
    if any(parts_folder(output).glob(PART_GLOB)):
        raise CorpusError(f"An interrupted run left {parts_folder(output)}: pass --resume to complete it, or "
                          "--overwrite to start again.")


class ResultStore:
    """The parts folder of one output (a temporary folder when the output goes to stdout)."""

    def __init__(self, output: Path | None):
        self.output = output
        self.parts = parts_folder(output) if output is not None else Path(tempfile.mkdtemp(prefix="bigbird-parts-"))
        self._lock_fd: int | None = None

    # -- main process: before the work -------------------------------------------------------------------------

    def prepare(self, index: CorpusIndex, settings: dict, *, resume: bool) -> None:
        """Locks the parts folder and starts it afresh; or, for --resume, checks that its parts were made with the same
        `settings` (what decides a summary: model, generation, input length, padding) and copies an existing output
        into it, unless the interrupted run was to replace that output."""
        self.parts.mkdir(parents=True, exist_ok=True)
        self._lock()
        run_file = self.parts / RUN_FILE
        if not resume:
            for path in self.parts.iterdir():
                path.unlink()
            _write_json(run_file, {"settings": settings, "replaces_output": True})
            return
        run = read_json_object(run_file, "The run file") if run_file.exists() else None
        if run is not None and run["settings"] != settings:
            before = run["settings"]
            changed = "; ".join(f"{key} was {before.get(key)!r}, now {settings.get(key)!r}"
                                for key in sorted({*settings, *before}) if settings.get(key) != before.get(key))
            raise CorpusError(f"The interrupted run of {self.output} had other settings ({changed}): resume it with the "
                              "same model and options, or pass --overwrite to start again.")
        if run is None or not run["replaces_output"]:
            if self.output is not None and self.output.exists():
                self._import_output(index)
            _write_json(run_file, {"settings": settings, "replaces_output": False})

    def _lock(self) -> None:
        self._lock_fd = os.open(self.parts, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise CorpusError(f"Another run is writing {self.output}: wait for it to end (or stop it) first.") from None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self.output is None:
            shutil.rmtree(self.parts, ignore_errors=True)

    def _import_output(self, index: CorpusIndex) -> None:
        ids = [record["id"] for record in _output_records(self.output)]  # two passes: only the ids stay in memory
        rows = index.rows_of(ids)
        if (rows < 0).any():
            raise CorpusError(f"--output {self.output} holds summaries of ids that are not in the input (e.g. "
                              f"{ids[int((rows < 0).argmax())]!r}): it belongs to another corpus; choose another "
                              "--output or pass --overwrite.")
        lines = (_line({"row": int(row), **record}) for row, record in zip(rows, _output_records(self.output)))
        with atomic_output_file(self.parts / PREVIOUS_PART, overwrite=True) as temporary, \
                open(temporary, "wb") as file:
            file.writelines(lines)

    # -- every process ---------------------------------------------------------------------------------------

    def done_rows(self, index: CorpusIndex) -> np.ndarray:
        """A mask of the rows that already have a summary in the parts."""
        import numpy as np

        done = np.zeros(index.rows, dtype=bool)
        done[self._records_index(index)[0]] = True
        return done

    @contextmanager
    def writer(self, rank: int):
        """Appends records to this process's part: `write(records)` adds whole, fsynced lines."""
        path = self.parts / f"part-rank{rank:05d}.jsonl"
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: to find a torn line
        try:
            _cut_torn_line(fd)
            yield lambda records: _append(fd, b"".join(_line(record) for record in records))
        finally:
            os.close(fd)

    # -- main process: after the work --------------------------------------------------------------------------

    def merge(self, index: CorpusIndex, expected: np.ndarray, id_type=None) -> int:
        """Writes one record per expected row, in row order, to the output (stdout when there is none), then removes
        the parts. Returns the number of records written.

        Raises:
            CorpusError: an expected row has no summary (the parts stay, for --resume).
        """
        import numpy as np

        rows, files, offsets, lengths = self._records_index(index)
        rows, first = np.unique(rows, return_index=True)  # the first summary of each row, in row order
        missing = np.flatnonzero(expected & ~np.isin(np.arange(index.rows), rows))
        if len(missing):
            raise CorpusError(f"{len(missing)} document(s) have no summary (ids {index.example_ids(missing)}): rerun "
                              "with --resume. A run on several machines needs --output on a file system they share.")
        paths = sorted(self.parts.glob(PART_GLOB))
        records = _records_at(paths, files[first], offsets[first], lengths[first])
        if self.output is None:
            for record in records:
                sys.stdout.write(_line(record).decode())
            sys.stdout.flush()
        else:
            _write_output(self.output, records, id_type)
            shutil.rmtree(self.parts, ignore_errors=True)
        return len(rows)

    def _records_index(self, index: CorpusIndex):
        """(row, part number, byte offset, byte length) arrays of every whole record in the parts, checked against
        the corpus: a record whose row holds another id there comes from another corpus."""
        import numpy as np

        all_rows, part_numbers, offsets, lengths = (array("q") for _ in range(4))  # 8 bytes a record each
        for number, path in enumerate(sorted(self.parts.glob(PART_GLOB))):
            for chunk in batches(_part_lines(path), CHECK_CHUNK_RECORDS):
                rows = [record["row"] for _, _, record in chunk]
                ids = [record["id"] for _, _, record in chunk]
                wrong = np.flatnonzero(~index.holds(rows, ids))
                if len(wrong):
                    raise CorpusError(f"{self.parts} holds summaries of another corpus (row {rows[wrong[0]]} is "
                                      f"{ids[wrong[0]]!r} there, not in this input): choose another --output, or pass "
                                      "--overwrite.")
                all_rows.extend(rows)
                part_numbers.extend([number] * len(chunk))
                offsets.extend(offset for offset, _, _ in chunk)
                lengths.extend(length for _, length, _ in chunk)
        return tuple(np.array(column, dtype=np.int64) for column in (all_rows, part_numbers, offsets, lengths))


# ----------------------------------------------------------------------------------------------------------------
# Lines and files.


def _line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def _write_json(path: Path, content: dict) -> None:
    with atomic_output_file(path, overwrite=True) as temporary:
        temporary.write_text(json.dumps(content, indent=1), encoding="utf-8")


def _append(fd: int, data: bytes) -> None:
    """Writes all of `data` and fsyncs it, holding SIGINT, SIGTERM and SIGHUP back meanwhile so that they cannot cut
    a line."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *TERMINATING_SIGNALS})
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _cut_torn_line(fd: int) -> None:
    """Cuts a part back to its last whole line (a process killed in the middle of a write leaves a torn one)."""
    size = os.lseek(fd, 0, os.SEEK_END)
    end = size
    while end > 0:
        start = max(0, end - 65536)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end != size:
        os.ftruncate(fd, end)
        os.fsync(fd)


def _part_lines(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(byte offset, byte length, record) of every whole line of a part; a torn last line is skipped."""
    offset = 0
    with open(path, "rb") as file:
        for line in file:
            if not line.endswith(b"\n"):
                return  # torn by a kill: that row is summarized again
            try:
                record = json.loads(line)
                record["row"], record["id"]  # both must be there
            except (ValueError, KeyError, TypeError):
                raise CorpusError(f"{path} is damaged at byte {offset}: delete it (its documents are summarized "
                                  "again with --resume).") from None
            yield offset, len(line), record
            offset += len(line)


def _records_at(paths: list[Path], files, offsets, lengths) -> Iterator[dict]:
    """The output records at these places of the parts, without their row numbers."""
    with ExitStack() as stack:
        handles = [stack.enter_context(open(path, "rb")) for path in paths]
        for number, offset, length in zip(files, offsets, lengths):
            handle = handles[number]
            handle.seek(int(offset))
            record = json.loads(handle.read(int(length)))
            yield {name: record.get(name) for name in RECORD_FIELDS}


def _output_records(output: Path) -> Iterator[dict]:
    """The records of an existing output file (JSONL or Parquet)."""
    if output.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(output).iter_batches(batch_size=PARQUET_ROWS_PER_GROUP)
            for batch in batches:
                yield from _checked_records(batch.to_pylist(), output)
        except (pa.ArrowException, OSError) as error:
            raise CorpusError(f"--output {output} cannot be read as Parquet ({error}): pass --overwrite to "
                              "replace it.") from error
        return
    with open(output, "rb") as file:
        try:
            yield from _checked_records((json.loads(line) for line in file if line.strip()), output)
        except ValueError as error:
            raise CorpusError(f"--output {output} is not JSON Lines ({error}): pass --overwrite to replace it.") \
                from error


def _checked_records(records, output: Path) -> Iterator[dict]:
    for record in records:
        if not isinstance(record, dict) or "id" not in record or "summary" not in record:
            raise CorpusError(f"--output {output} is not an output of summarize (a record without 'id' and "
                              "'summary'): pass --overwrite to replace it, or choose another --output.")
        yield {name: record.get(name) for name in RECORD_FIELDS}


def _write_output(output: Path, records: Iterator[dict], id_type) -> None:
    with atomic_output_file(output, overwrite=True) as temporary, open(temporary, "wb") as file:
        if output.suffix.lower() == ".parquet":
            _write_parquet(file, records, id_type)
        else:
            file.writelines(_line(record) for record in records)
        file.flush()
        os.fsync(file.fileno())


def _write_parquet(file, records: Iterator[dict], id_type) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", id_type or pa.int64()), ("summary", pa.string()), ("input_tokens", pa.int64()),
                        ("truncated", pa.bool_()), ("truncated_tokens", pa.int64()), ("windows", pa.int64()),
                        ("seconds", pa.float64())])
    with pq.ParquetWriter(file, schema) as writer:
        chunk = []
        for record in records:
            chunk.append(record)
            if len(chunk) == PARQUET_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        if chunk:
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
