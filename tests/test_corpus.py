"""`bigbird-pegasus summarize --input`: corpora through the console script, torchrun with gloo on CPU, resuming after
kills, and bad input; a tiny block-sparse model (block 16, so inputs above 144 tokens are block-sparse).

Runs that load the model start a fresh Python each (seconds of imports), so independent ones run side by side in
module fixtures; the bad-input cases fail before the model loads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_cli import Run, assert_fails_clearly, assert_succeeds, finish, run_side_by_side, start
from tiny import tiny_config
from tiny import tiny_repo as build_tiny_repo
from transformers import AutoTokenizer

from bigbird_pegasus_hub.batching import LengthBuckets, PaddingStats
from bigbird_pegasus_hub.corpus_run import model_padding_multiple
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.summarize import SINGLE_THREAD_MAX_WIDTH, cpu_threads, padded_length, set_cpu_threads
from bigbird_pegasus_hub.tokenizer import bundled_corpus_path

BLOCK = 16  # tests/tiny.py
FAST = ("--max-length", "8", "--num-beams", "2", "--threads", "1")
ENDINGS = ("one", "two", "three", "north")  # one or two tokens each: documents of a group differ in length
GROUP_WORDS = (30, 110, 240, 420)  # the groups' passages: full attention, then block-sparse of growing length
BAD_INPUT_CASES = ("missing-column", "missing-id-column", "no-text-column", "duplicate-ids", "empty-text",
                   "unreadable-parquet", "torn-jsonl", "unknown-format", "output-exists", "resume-and-overwrite",
                   "output-without-input", "files-and-input", "bad-output-format")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
            "bigbird_pegasus_hub.cli")
REPORT = re.compile(r"Summarized (\d+) document\(s\) in .* on (\d+) process\(es\).*padding ([\d.]+)% of the input "
                    r"tokens \(batches in input order: ([\d.]+)%\) in (\d+) batches")


# ----------------------------------------------------------------------------------------------------------------
# Corpora.


def corpus_words() -> list[str]:
    return bundled_corpus_path().read_text(encoding="utf-8").split()


def grouped_rows(tokenizer) -> list[dict]:
    """Four groups of four documents; a group's documents pad to the same length (checked), the groups do not. Rows
    interleave the groups, so consecutive rows have very different lengths."""
    words = corpus_words()
    groups = []
    for number, count in enumerate(GROUP_WORDS):
        start = 500 * number
        while True:
            passage = " ".join(words[start : start + count])
            texts = [f"{passage} The end {ending}." for ending in ENDINGS]
            lengths = {padded_length(len(tokenizer(text)["input_ids"]), BLOCK) for text in texts}
            if len(lengths) == 1:
                break
            count -= 1  # the endings straddle a block boundary: shorten the passage
        groups.append(texts)
    return [{"doc_id": f"g{group}-{copy}", "article": groups[group][copy], "abstract": groups[group][copy][:80]}
            for copy in range(len(ENDINGS)) for group in range(len(groups))]


def many_rows(count: int) -> list[dict]:
    words = corpus_words()
    rows = []
    for i in range(count):
        size = 20 + (i * 37) % 90
        start = (i * 211) % (len(words) - size)
        rows.append({"doc_id": f"doc-{i:03d}", "article": " ".join(words[start : start + size])})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


def summarize_args(model: Path, corpus: Path, output: Path, *extra) -> tuple:
    return ("summarize", "--model", model, "--input", corpus, "--text-column", "article", "--id-column", "doc_id",
            "--output", output, *FAST, *extra)


def report(stderr: str) -> re.Match:
    match = REPORT.search(stderr)
    assert match, stderr
    return match


# ----------------------------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def model(tmp_path_factory, tokenizer_dir) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("corpus-model") / "tiny", tokenizer_dir)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("corpus")
    rows = grouped_rows(AutoTokenizer.from_pretrained(tokenizer_dir))
    pq.write_table(pa.Table.from_pylist(rows), folder / "docs.parquet")
    with_empty = rows[:5] + [{"doc_id": "blank", "article": " \n ", "abstract": ""}]
    return {"jsonl": write_jsonl(folder / "docs.jsonl", rows), "parquet": folder / "docs.parquet",
            "with_empty": write_jsonl(folder / "with_empty.jsonl", with_empty), "folder": folder}


@pytest.fixture(scope="module")
def runs(model, corpus) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The runs that load the model, side by side: (the output each was asked to write, its result)."""
    out = corpus["folder"]
    outputs = {"one_by_one": out / "one.jsonl", "sorted": out / "sorted.jsonl", "parquet": out / "sorted.parquet",
               "torchrun": out / "two.jsonl", "skip_empty": out / "skipped.jsonl"}
    results = run_side_by_side({
        "one_by_one": Run(summarize_args(model, corpus["jsonl"], outputs["one_by_one"], "--batch-size", "1")),
        "sorted": Run(summarize_args(model, corpus["jsonl"], outputs["sorted"], "--batch-size", "4")),
        "parquet": Run(summarize_args(model, corpus["parquet"], outputs["parquet"], "--batch-size", "4")),
        "torchrun": Run(summarize_args(model, corpus["jsonl"], outputs["torchrun"], "--batch-size", "4"),
                        program=TORCHRUN),
        "skip_empty": Run(summarize_args(model, corpus["with_empty"], outputs["skip_empty"], "--skip-empty")),
    })
    return {name: (outputs[name], results[name]) for name in outputs}


# ----------------------------------------------------------------------------------------------------------------
# Summarizing a corpus.


def test_length_buckets_give_every_document_the_summary_it_gets_alone(runs, corpus):
    one_output, one = runs["one_by_one"]
    sorted_output, batched = runs["sorted"]
    assert_succeeds(one)
    assert_succeeds(batched)
    alone, in_buckets = read_jsonl(one_output), read_jsonl(sorted_output)
    assert [record["id"] for record in in_buckets] == [row["doc_id"] for row in read_jsonl(corpus["jsonl"])]
    assert without_seconds(in_buckets) == without_seconds(alone)
    assert set(in_buckets[0]) == {"id", "summary", "input_tokens", "truncated", "truncated_tokens", "windows",
                                  "seconds"}
    documents, processes, padding, input_order_padding, batches = report(batched.stderr).groups()
    assert (documents, processes, batches) == ("16", "1", "4")  # four full buckets of four
    assert float(padding) < 10 < float(input_order_padding)  # consecutive rows mix short and long documents
    assert not Path(f"{sorted_output}.parts").exists()


def test_two_processes_under_torchrun_write_the_one_process_output(runs):
    two_output, two = runs["torchrun"]
    assert_succeeds(two)
    assert report(two.stderr).group(2) == "2"
    assert without_seconds(read_jsonl(two_output)) == without_seconds(read_jsonl(runs["sorted"][0]))
    assert sorted(path.name for path in two_output.parent.iterdir() if path.name.startswith("two")) == ["two.jsonl"]


def test_parquet_in_and_out_hold_the_same_records(runs):
    output, result = runs["parquet"]
    assert_succeeds(result)
    table = pq.read_table(output)
    assert table.schema.field("id").type == pa.string() and table.schema.field("truncated").type == pa.bool_()
    assert without_seconds(table.to_pylist()) == without_seconds(read_jsonl(runs["sorted"][0]))


def test_skip_empty_leaves_the_empty_row_out_with_a_warning(runs):
    output, result = runs["skip_empty"]
    assert_succeeds(result)
    assert "warning: skipping 1 row(s) with an empty text (ids 'blank')" in result.stderr
    assert [record["id"] for record in read_jsonl(output)] == ["g0-0", "g1-0", "g2-0", "g3-0", "g0-1"]


def test_resume_is_a_no_op_on_a_complete_output(runs, model, corpus):
    output, _ = runs["parquet"]
    before = pq.read_table(output).to_pylist()
    again = finish(start(Run(summarize_args(model, corpus["parquet"], output, "--resume"))))
    assert_succeeds(again)
    assert "Summarized 0 document(s)" in again.stderr and "The output holds 16 summaries" in again.stderr
    assert pq.read_table(output).to_pylist() == before


# ----------------------------------------------------------------------------------------------------------------
# Interrupted runs.


def wait_for_lines(part: Path, process: subprocess.Popen, lines: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended (or stalled) before writing {lines} lines:\n{finish(process).stderr}")


def saved_lines(parts: Path) -> int:
    return sum(part.read_bytes().count(b"\n") for part in parts.glob("part-rank*.jsonl"))


def worker_of_rank(launcher: subprocess.Popen, rank: int) -> psutil.Process:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank):
                return child
        except psutil.Error:  # a helper process that ended meanwhile
            continue
    raise AssertionError(f"torchrun has no worker of rank {rank}")


def test_killed_runs_resume_to_exactly_one_summary_per_id(model, tmp_path):
    """SIGTERM to one process; then, under torchrun, SIGKILL to one rank (torchrun stops the other with SIGTERM);
    then a torn line as a kill in the middle of a write leaves it: --resume completes the corpus with the records of
    an uninterrupted run, and refuses other generation settings."""
    rows = many_rows(150)
    corpus = write_jsonl(tmp_path / "many.jsonl", rows)
    output = tmp_path / "out.jsonl"
    parts = tmp_path / "out.jsonl.parts"
    part = parts / "part-rank00000.jsonl"
    uninterrupted = start(Run(summarize_args(model, corpus, tmp_path / "reference.jsonl", "--batch-size", "8")))

    first = start(Run(summarize_args(model, corpus, output)))
    wait_for_lines(part, first, 5)
    first.send_signal(signal.SIGTERM)
    stopped = finish(first)
    assert stopped.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert not output.exists() and part.read_bytes().endswith(b"\n")
    done_before = saved_lines(parts)
    assert 5 <= done_before < len(rows)

    other_settings = finish(start(Run(summarize_args(model, corpus, output, "--resume", "--max-length", "9"))))
    assert_fails_clearly(other_settings, "had other settings (generate was {'max_length': 8", "--overwrite")
    assert saved_lines(parts) == done_before

    second = start(Run(summarize_args(model, corpus, output, "--resume"), program=TORCHRUN))
    rank_1_part = parts / "part-rank00001.jsonl"
    wait_for_lines(rank_1_part, second, 3)
    worker_of_rank(second, 1).kill()
    assert finish(second).returncode != 0 and not output.exists()
    assert part.read_bytes().endswith(b"\n")  # rank 0, stopped by torchrun's SIGTERM, left whole lines
    with open(rank_1_part, "ab") as file:
        file.write(b'{"row": 149, "id": "doc-149", "summ')  # the start of a line that a kill cut short
    done_before_last = saved_lines(parts)
    assert done_before_last >= done_before + 3

    resumed = finish(start(Run(summarize_args(model, corpus, output, "--resume"))))
    assert_succeeds(resumed)
    records = read_jsonl(output)
    assert [record["id"] for record in records] == [row["doc_id"] for row in rows]  # one each, in input order
    reference = finish(uninterrupted)
    assert_succeeds(reference)
    assert without_seconds(records) == without_seconds(read_jsonl(tmp_path / "reference.jsonl"))
    assert not parts.exists()
    assert int(report(resumed.stderr).group(1)) == len(rows) - done_before_last  # only what no run had saved


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written.


def bad_input_cases(corpus: dict, folder: Path) -> dict[str, tuple[tuple, list[str]]]:
    rows = read_jsonl(corpus["jsonl"])
    duplicates = write_jsonl(folder / "duplicates.jsonl", rows[:3] + [dict(rows[1], article="Another text.")])
    torn = folder / "torn.jsonl"
    torn.write_text(json.dumps(rows[0]) + '\n{"doc_id": "x", "arti', encoding="utf-8")
    not_parquet = folder / "broken.parquet"
    not_parquet.write_bytes(corpus["parquet"].read_bytes()[:200])  # a truncated download
    existing = write_jsonl(folder / "existing.jsonl", [])
    base = ("summarize", "--input", corpus["jsonl"], "--id-column", "doc_id")
    return {
        "missing-column": ((*base, "--text-column", "body"),
                           ["has no column 'body' (--text-column)", "'doc_id', 'article', 'abstract'"]),
        "missing-id-column": (("summarize", "--input", corpus["jsonl"], "--text-column", "article", "--id-column",
                               "key"), ["has no column 'key' (--id-column)", "'article'"]),
        "no-text-column": (base, ["--input needs --text-column", "'doc_id', 'article', 'abstract'"]),
        "duplicate-ids": (("summarize", "--input", duplicates, "--text-column", "article", "--id-column", "doc_id"),
                          ["repeats 1 id(s): 'g1-0' (2 times)", "unique"]),
        "empty-text": (("summarize", "--input", corpus["with_empty"], "--text-column", "article", "--id-column",
                        "doc_id"), ["1 row(s) have an empty text (ids 'blank')", "--skip-empty"]),
        "unreadable-parquet": (("summarize", "--input", not_parquet, "--text-column", "article"),
                               ["broken.parquet cannot be read as PARQUET"]),
        "torn-jsonl": (("summarize", "--input", torn, "--text-column", "article"), ["torn.jsonl cannot be read as JSON"]),
        "unknown-format": (("summarize", "--input", folder / "docs.txt", "--text-column", "article"),
                           ["unknown format '.txt'"]),
        "output-exists": ((*base, "--text-column", "article", "--output", existing), ["already exists", "--resume"]),
        "resume-and-overwrite": ((*base, "--text-column", "article", "--output", folder / "new.jsonl", "--resume",
                                  "--overwrite"), ["choose one"]),
        "output-without-input": (("summarize", "--output", folder / "x.jsonl"), ["--output applies to a corpus"]),
        "files-and-input": ((*base, "--text-column", "article", corpus["jsonl"]), ["either FILEs or --input"]),
        "bad-output-format": ((*base, "--text-column", "article", "--output", folder / "out.csv"),
                              ["write a .jsonl or .parquet file"]),
    }


@pytest.fixture(scope="module")
def bad_input_runs(corpus, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("bad-input")
    cases = bad_input_cases(corpus, folder)
    assert set(cases) == set(BAD_INPUT_CASES)
    results = run_side_by_side({name: Run(args) for name, (args, _) in cases.items()})
    return {name: (results[name], fragments, folder) for name, (_, fragments) in cases.items()}


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_is_one_clear_line_and_writes_nothing(case, bad_input_runs):
    result, fragments, folder = bad_input_runs[case]
    assert_fails_clearly(result, "bigbird-pegasus summarize: error:", *fragments)
    assert not list(folder.glob("*.parts")) and not (folder / "new.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------------
# Pieces.


def test_length_buckets_fill_by_padded_length_and_return_the_rest_longest_first():
    buckets = LengthBuckets(2, 16, length=len)
    assert buckets.add("a" * 20) is None
    assert buckets.add("b" * 40) is None
    assert buckets.add("c" * 32) == ["a" * 20, "c" * 32]  # both pad to 32
    assert buckets.add("d" * 5) is None
    assert buckets.rest() == [["b" * 40], ["d" * 5]]
    assert list(LengthBuckets(3, 1, length=len).batches(["xx", "y", "zz", "xx"])) == [["xx", "zz", "xx"], ["y"]]


def test_padding_stats_compare_with_input_order_batches():
    stats = PaddingStats()
    stats.add_batch([16, 16], 16)
    stats.add_batch([100, 90], 16)
    stats.add_input_order([16, 100, 16, 90], 2, 16)
    assert (stats.documents, stats.tokens, stats.batches) == (4, 222, 2)
    assert stats.padding == 0 + (2 * 112 - 190)
    assert stats.input_order_padding == (2 * 112 - 116) + (2 * 96 - 106)


def test_threads_are_shared_out_between_the_processes_of_a_machine(model, monkeypatch):
    monkeypatch.setattr("bigbird_pegasus_hub.summarize.available_cores", lambda: 16)
    wide = BigBirdPegasusForConditionalGeneration(tiny_config(d_model=SINGLE_THREAD_MAX_WIDTH * 2, vocab_size=128))
    assert cpu_threads(wide) is None  # one process: torch's default, one thread per core
    assert cpu_threads(wide, processes=4) == 4
    assert cpu_threads(wide, processes=32) == 1
    narrow = BigBirdPegasusForConditionalGeneration.from_pretrained(model)
    assert cpu_threads(narrow, processes=4) == 1  # narrow models generate on one thread in any case
    previous = torch.get_num_threads()
    try:
        assert set_cpu_threads(wide, processes=4) == 4
        assert set_cpu_threads(wide, 3, processes=4) == 3  # --threads wins
    finally:
        torch.set_num_threads(previous)


def test_summarize_help_shows_the_corpus_options():
    result = subprocess.run([sys.executable, "-m", "bigbird_pegasus_hub.cli", "summarize", "--help"],
                            capture_output=True, text=True, env={**os.environ}, check=True)
    for option in ("--input", "--text-column", "--id-column", "--output", "--resume", "--skip-empty", "--threads",
                   "--pad-to-multiple-of", "accelerate launch"):
        assert option in result.stdout


def test_default_buckets_follow_the_models_own_padding():
    """Without --pad-to-multiple-of, documents share a batch when the model would pad them to the same length anyway:
    its block size, or the config's pad_to_multiple_of (the ONNX-aligned option)."""
    assert model_padding_multiple(tiny_config()) == tiny_config().block_size
    assert model_padding_multiple(tiny_config(pad_to_multiple_of=4 * tiny_config().block_size)) == \
        4 * tiny_config().block_size
