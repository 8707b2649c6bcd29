"""`bigbird-pegasus summarize --input CORPUS`: summarize every row of a dataset file, on one process or on many.

One process, or every process of `accelerate launch` / `torchrun` (accelerate's `PartialState` starts the process
group: gloo on CPUs, NCCL on GPUs, one device per process), runs the same steps:

1. scan the corpus (`corpus.scan_corpus`): bad input stops the run before any model loads;
2. the main process locks the output's parts folder and, for --resume, copies an existing output into it
   (`results.ResultStore`); then every process reads which rows have a summary already;
3. the rows still to do are split between the processes (`PartialState.split_between_processes`: contiguous shares);
4. each process loads the model on its device, with cores / processes threads on CPUs, summarizes its rows in
   length buckets (`batching.LengthBuckets`), and appends every finished batch to its own part;
5. once all are done, the main process merges the parts in input order into the output, atomically.

SIGTERM (sent by torchrun when another process fails, or by a scheduler) is handled like Ctrl-C: the process stops,
its part holds whole lines only, and --resume continues where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .atomic import exit_on_termination
from .batching import LengthBuckets, PaddingStats, input_order_batches
from .corpus import CorpusError, CorpusIndex, check_input_path, read_documents, scan_corpus
from .results import ResultStore, check_output_options
from .summarize import ModelSource, set_cpu_threads

__all__ = ["CorpusJob", "CorpusReport", "scan_job", "summarize_corpus"]

# Processes that finish their share wait for the others at a barrier; a share can take hours longer than another.
BARRIER_TIMEOUT = timedelta(days=2)


@dataclass(frozen=True)
class CorpusJob:
    """What to summarize, where the summaries go, and how."""

    input: Path
    text_column: str | None
    id_column: str | None = None
    output: Path | None = None  # None: JSON Lines on stdout (one process only)
    resume: bool = False
    overwrite: bool = False
    skip_empty: bool = False
    batch_size: int = 1
    pad_to_multiple_of: int | None = None  # None: the multiple the model pads to itself
    max_input_tokens: int | None = None
    chunk: bool = False
    chunk_overlap: int | None = None
    threads: int | None = None  # None: cores / processes when several processes share a machine
    device: str = "auto"
    dtype: str = "auto"
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    sort_by_length: bool = True  # False: batches of consecutive rows (a baseline for benchmarks)
    progress: bool = True

    def check(self) -> None:
        """The cheap checks, before anything is imported or loaded."""
        check_input_path(self.input)
        check_output_options(self.output, self.resume, self.overwrite)
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise CorpusError(f"The padding multiple must be at least 1, got {self.pad_to_multiple_of}.")


@dataclass
class CorpusReport:
    """What a run did, summed over its processes."""

    documents: int  # summarized by this run
    seconds: float  # from the first document to the last process's last one (model loading aside)
    cpu_seconds: float  # CPU time of the processes over the same span, all threads (steadier on a busy machine)
    processes: int
    padding: PaddingStats
    truncated: int
    written: int  # records in the output
    skipped: int  # rows with an empty text

    def line(self) -> str:
        rate = self.documents / self.seconds if self.seconds > 0 else 0.0
        parts = [(f"Summarized {self.documents} document(s) in {self.seconds:.1f} s on {self.processes} "
                  f"process(es): {rate:.3g} documents/s")]
        if self.padding.tokens:
            parts.append(f"padding {self.padding.overhead:.1%} of the input tokens (batches in input order: "
                         f"{self.padding.input_order_overhead:.1%}) in {self.padding.batches} batches")
        if self.truncated:
            parts.append(f"{self.truncated} were longer than the model reads and were cut (see 'truncated')")
        if self.skipped:
            parts.append(f"{self.skipped} empty row(s) skipped")
        return "; ".join(parts) + f". The output holds {self.written} summaries."


@dataclass
class _ShareResult:
    """One process's work, gathered by the main process."""

    documents: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    truncated: int = 0
    padding: PaddingStats = field(default_factory=PaddingStats)


def scan_job(job: CorpusJob) -> CorpusIndex:
    """The cheap checks of the job, then one pass over the corpus that checks its columns, ids and texts.

    Raises:
        CorpusError: bad input (missing column, repeated ids, empty texts without skip_empty, unreadable file).
    """
    job.check()
    index = scan_corpus(job.input, job.text_column, job.id_column)
    _rows_to_summarize(index, job.skip_empty)
    return index


def summarize_corpus(job: CorpusJob, source: ModelSource, index: CorpusIndex | None = None) -> CorpusReport | None:
    """Summarizes the rows of `job.input` that have no summary yet; returns the report on the main process (None on
    the others). `index`: what `scan_job(job)` returned, if the caller scanned already.

    Raises:
        CorpusError: bad input (see `scan_job`), an output that belongs to another corpus, or rows left without a
            summary.
    """
    if index is None:
        index = scan_job(job)
    expected = _rows_to_summarize(index, job.skip_empty)
    state = _start_processes(job)
    main = state.is_main_process
    if job.output is None and state.num_processes > 1:
        raise CorpusError("Several processes need --output FILE: each writes its part next to it.")
    if main and len(index.empty_rows) and job.skip_empty:
        print(f"warning: skipping {len(index.empty_rows)} row(s) with an empty text (ids "
              f"{index.example_ids(index.empty_rows)}): they get no summary.", file=sys.stderr)
    store = ResultStore(job.output)
    try:
        with exit_on_termination():
            if main:
                store.prepare(index, _settings(job, source), resume=job.resume)
            state.wait_for_everyone()
            todo = _todo_rows(store.done_rows(index), expected)
            state.wait_for_everyone()  # every process has read the parts before any appends to them
            share = _summarize_share(job, source, state, store, _my_rows(state, todo))
            state.wait_for_everyone()
            shares = _gather(state, share)
            if not main:
                return None
            written = store.merge(index, expected, _id_type(index))
    finally:
        if main:
            store.close()
    return CorpusReport(
        documents=sum(item.documents for item in shares), seconds=max(item.seconds for item in shares),
        cpu_seconds=sum(item.cpu_seconds for item in shares), processes=state.num_processes,
        padding=sum((item.padding for item in shares), PaddingStats()),
        truncated=sum(item.truncated for item in shares), written=written, skipped=len(index.empty_rows),
    )


def _settings(job: CorpusJob, source: ModelSource) -> dict:
    """What decides a summary, so that --resume refuses to mix summaries made otherwise (batch size, order, threads
    and processes do not change a summary)."""
    local = Path(source.location)
    model = str(local.resolve()) if not source.revision and local.exists() else source.location
    return {"model": model, "revision": source.revision, "dtype": job.dtype,
            "max_input_tokens": job.max_input_tokens, "pad_to_multiple_of": job.pad_to_multiple_of, "chunk": job.chunk,
            "chunk_overlap": job.chunk_overlap,
            "generate": {key: value for key, value in sorted(job.generate_kwargs.items()) if value is not None}}


def _rows_to_summarize(index: CorpusIndex, skip_empty: bool):
    import numpy as np

    if len(index.empty_rows) and not skip_empty:
        raise CorpusError(f"{len(index.empty_rows)} row(s) have an empty text (ids {index.example_ids(index.empty_rows)})"
                          ": remove them, or pass --skip-empty to leave them without a summary.")
    expected = np.ones(index.rows, dtype=bool)
    expected[index.empty_rows] = False
    return expected


def _todo_rows(done, expected):
    import numpy as np

    return np.flatnonzero(expected & ~done)


def _my_rows(state, todo):
    import torch

    with state.split_between_processes(torch.from_numpy(todo)) as mine:
        return mine.numpy()


def _id_type(index: CorpusIndex):
    import pyarrow as pa

    return pa.int64() if index.ids is None else index.ids.type


# ----------------------------------------------------------------------------------------------------------------
# Processes and threads.


def _start_processes(job: CorpusJob):
    """accelerate's view of the launch: one process, or one of `accelerate launch` / `torchrun`'s processes."""
    import torch
    from accelerate import PartialState

    # Without CUDA, with --device cpu or `accelerate launch --cpu`, processes talk over gloo; accelerate needs to be
    # told (PartialState reads no flag from the environment).
    cpu = job.device == "cpu" or not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1", "true", "yes")
    return PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)


def _gather(state, share: _ShareResult) -> list[_ShareResult]:
    if state.num_processes == 1:
        return [share]
    from accelerate.utils import gather_object

    return gather_object([share])


# ----------------------------------------------------------------------------------------------------------------
# Summarizing one process's share.


def _summarize_share(job: CorpusJob, source: ModelSource, state, store: ResultStore, rows) -> _ShareResult:
    result = _ShareResult()
    if len(rows) == 0:
        return result
    summarizer = _load(job, source, state)
    multiple = job.pad_to_multiple_of or model_padding_multiple(summarizer.model.config)
    documents = read_documents(job.input, job.text_column, job.id_column, rows)
    lengths_in_order = []
    started, cpu_started = time.perf_counter(), time.process_time()
    with store.writer(state.process_index) as write, _progress(len(rows), state.is_main_process and job.progress) \
            as bar:
        for batch in _summarized_batches(job, summarizer, documents, multiple, lengths_in_order, result.padding):
            write([{"row": int(row), "id": id_, **summary.fields()} for row, id_, summary in batch])
            result.documents += len(batch)
            result.truncated += sum(summary.truncated for _, _, summary in batch)
            bar.update(len(batch))
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = time.process_time() - cpu_started
    if lengths_in_order:
        result.padding.add_input_order(lengths_in_order, job.batch_size, multiple)
    return result


def model_padding_multiple(config) -> int:
    """The multiple the model pads its inputs to anyway (its block size, or the config's pad_to_multiple_of): batches
    of that padded length cost nothing extra, and leave each summary as the document gets alone."""
    return getattr(config, "pad_to_multiple_of", None) or getattr(config, "block_size", 1)


def _load(job: CorpusJob, source: ModelSource, state):
    """The model on this process's device, with threads for its share of the machine's cores."""
    from .summarize import load_summarizer

    if state.num_processes == 1:
        # "auto": accelerate's choice (GPUs if any, the model spread over them with device_map="auto"; or the CPU)
        device = "cpu" if job.device == "auto" and state.device.type == "cpu" else job.device
    else:
        device = "cpu"  # then one whole model per process on its own device (not spread over all GPUs, as "auto")
    summarizer = load_summarizer(source, device=device, dtype=job.dtype, max_input_tokens=job.max_input_tokens)
    if state.num_processes > 1:
        summarizer.model.to(state.device)
    # torchrun and accelerate launch set OMP_NUM_THREADS=1 in every process; the cores are shared out instead.
    set_cpu_threads(summarizer.model, job.threads, int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)))
    return summarizer


def _summarized_batches(job: CorpusJob, summarizer, documents, multiple: int, lengths_in_order: list[int],
                        padding: PaddingStats):
    """Yields lists of (row, id, Summary), batch by batch; records the input lengths in row order and the padding."""
    if job.chunk:  # each document on its own: its windows make the batches
        for row, id_, text in documents:
            summary = next(summarizer.summarize([text], batch_size=job.batch_size, chunk=True,
                                                chunk_overlap=job.chunk_overlap, **job.generate_kwargs))
            yield [(row, id_, summary)]
        return

    def encoded():
        for row, id_, text in documents:
            document = summarizer.encode(text)
            lengths_in_order.append(len(document.model_input))
            yield row, id_, document

    if job.sort_by_length:
        batches = LengthBuckets(job.batch_size, multiple, lambda item: len(item[2].model_input)).batches(encoded())
    else:
        batches = input_order_batches(encoded(), job.batch_size)
    for batch in batches:
        encoded_batch = [document for _, _, document in batch]
        padding.add_batch([len(document.model_input) for document in encoded_batch], multiple)
        summaries = summarizer.summarize_encoded(encoded_batch, pad_to_multiple_of=multiple, **job.generate_kwargs)
        yield [(row, id_, summary) for (row, id_, _), summary in zip(batch, summaries)]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="Summarizing", unit="doc", file=sys.stderr, disable=not enabled or total < 2)
