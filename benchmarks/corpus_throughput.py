"""Throughput of `summarize --input` on one process: length buckets against batches in input order.

Writes a corpus of `--documents` documents whose lengths are spread evenly over [--min-tokens, --max-tokens] in a
shuffled order, then summarizes it with each batching mode through the same code as the command line
(`corpus_run.summarize_corpus`), for each model, interleaved over `--repeats` rounds (the machine's noise hits every
mode alike; read the ratios). Modes:

  alone        batch 1: every document on its own (padded to the block size, as the model does anyway)
  input        batches of --batch-size consecutive documents, padded to the longest
  buckets      batches of --batch-size documents of equal padded length (the default of the command line)
  buckets-N    the same with inputs padded to a multiple of N tokens (--coarse-multiple): fuller batches

Models: `bundled` (hub_repo/, its own generation config) and `random` (4+4 layers, d_model 512, 8 heads, FFN 2048,
block 64, 3 random blocks, seeded random weights, the bundled tokenizer; it decodes exactly --max-length tokens).

Prints a Markdown table: documents per CPU-second and per second (medians over the rounds), the ratio of the former
to `input`, the padding share of the input tokens, the number of batches, and how many summaries equal those of
`alone`. With one thread (the default), CPU time measures the work and hardly depends on what else the machine runs;
wall time does.

    python benchmarks/corpus_throughput.py                       # 64 documents, batch 4, 2 rounds
    python benchmarks/corpus_throughput.py --models random --repeats 3 --threads 2 --markdown results.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration

from bigbird_pegasus_hub.corpus_run import CorpusJob, summarize_corpus
from bigbird_pegasus_hub.repo import build_repo
from bigbird_pegasus_hub.summarize import DEFAULT_MODEL_DIR, resolve_model
from bigbird_pegasus_hub.tokenizer import bundled_corpus_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import MODEL, markdown_rows  # noqa: E402

RANDOM_MODEL = dict(MODEL, max_position_embeddings=4096)  # the model of benchmark.py


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=("bundled", "random"), default=["bundled", "random"])
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--min-tokens", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--coarse-multiple", type=int, default=512, help="padding multiple of the buckets-N mode")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--max-length", type=int, default=32, help="summary tokens of the random model")
    parser.add_argument("--num-beams", type=int, default=2, help="beams of the random model")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    return parser.parse_args(argv)


def make_corpus(path: Path, tokenizer, count: int, low: int, high: int) -> list[int]:
    """`count` documents of evenly spread token lengths in shuffled order, cut from the bundled corpus text."""
    stream = tokenizer(bundled_corpus_path().read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    targets = [round(low + (high - low) * i / max(1, count - 1)) for i in range(count)]
    random.Random(0).shuffle(targets)
    lengths = []
    with open(path, "w", encoding="utf-8") as file:
        for number, target in enumerate(targets):
            start = (number * 997) % len(stream)
            ids = (stream[start:] + stream * (1 + target // len(stream)))[: target - 1]  # - 1: end-of-sequence
            text = tokenizer.decode(ids)
            lengths.append(len(tokenizer(text)["input_ids"]))
            file.write(json.dumps({"id": f"doc-{number:03d}", "text": text}) + "\n")
    return lengths


def random_model_repo(folder: Path, tokenizer_dir: Path, vocab_size: int) -> Path:
    torch.manual_seed(0)
    model = BigBirdPegasusForConditionalGeneration(BigBirdPegasusConfig(**RANDOM_MODEL, vocab_size=vocab_size))
    return build_repo(folder, model=model, tokenizer=tokenizer_dir, description="Random weights for benchmarks.")


def modes(batch_size: int, coarse: int) -> dict[str, dict]:
    return {
        "alone": dict(batch_size=1),
        "input": dict(batch_size=batch_size, sort_by_length=False),
        "buckets": dict(batch_size=batch_size),
        f"buckets-{coarse}": dict(batch_size=batch_size, pad_to_multiple_of=coarse),
    }


def run(model: Path, corpus: Path, output: Path, settings: dict, generate_kwargs: dict, threads: int):
    job = CorpusJob(input=corpus, text_column="text", id_column="id", output=output, overwrite=True, threads=threads,
                    device="cpu", generate_kwargs=generate_kwargs, progress=False, **settings)
    report = summarize_corpus(job, resolve_model(model))
    summaries = [json.loads(line)["summary"] for line in output.read_text(encoding="utf-8").splitlines()]
    return report, summaries


def main(argv=None) -> int:
    args = parse_args(argv)  # --threads: set by the corpus run itself, as `summarize --threads`
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("bigbird_pegasus_hub").setLevel(logging.ERROR)  # the short-input notice of the model
    workdir = Path(tempfile.mkdtemp(prefix="corpus-throughput-"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    corpus = workdir / "corpus.jsonl"
    lengths = make_corpus(corpus, tokenizer, args.documents, args.min_tokens, args.max_tokens)
    models = {"bundled": (DEFAULT_MODEL_DIR, {}),
              "random": (None, {"max_length": args.max_length, "num_beams": args.num_beams,
                                "min_length": args.max_length})}
    models = {name: models[name] for name in args.models}
    if "random" in models:
        models["random"] = (random_model_repo(workdir / "random", DEFAULT_MODEL_DIR, len(tokenizer)), models["random"][1])
    times = {(model, mode): [] for model in models for mode in modes(args.batch_size, args.coarse_multiple)}
    cpu_times = {key: [] for key in times}
    reports, summaries = {}, {}
    for round_ in range(args.repeats):
        for model, (path, generate_kwargs) in models.items():
            for mode, settings in modes(args.batch_size, args.coarse_multiple).items():
                report, texts = run(path, corpus, workdir / "out.jsonl", settings, generate_kwargs, args.threads)
                times[model, mode].append(report.documents / report.seconds)
                cpu_times[model, mode].append(report.documents / report.cpu_seconds)
                reports[model, mode], summaries[model, mode] = report, texts
                print(f"round {round_ + 1}: {model} {mode}: {cpu_times[model, mode][-1]:.3f} documents/CPU-s, "
                      f"{times[model, mode][-1]:.3f} documents/s", file=sys.stderr)
        table = markdown(args, lengths, models, times, cpu_times, reports, summaries, rounds=round_ + 1)
        if args.markdown:  # after every round: a long run stopped early still leaves its table
            args.markdown.write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def markdown(args, lengths, models, times, cpu_times, reports, summaries, rounds: int) -> str:
    setup = (f"{args.documents} documents of {min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}) "
             f"in shuffled order, batch size {args.batch_size}, {args.threads} thread(s), medians of {rounds} "
             f"interleaved rounds; {datetime.date.today()}, {platform.machine()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}.")
    rows = [["model", "batching", "documents / CPU-s", "× input order", "documents/s (wall)", "padding", "batches",
             "summaries equal to alone"]]
    for model in models:
        baseline = statistics.median(cpu_times[model, "input"])
        for mode in modes(args.batch_size, args.coarse_multiple):
            rate = statistics.median(cpu_times[model, mode])
            report = reports[model, mode]
            equal = sum(a == b for a, b in zip(summaries[model, mode], summaries[model, "alone"]))
            rows.append([model, mode, f"{rate:.3f}", f"{rate / baseline:.2f}×", f"{statistics.median(times[model, mode]):.3f}",
                         f"{report.padding.overhead:.1%}", str(report.padding.batches),
                         f"{equal}/{len(summaries[model, mode])}"])
    return "\n".join([setup, "", *markdown_rows(rows)])


if __name__ == "__main__":
    sys.exit(main())
