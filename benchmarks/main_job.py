"""The README's main job (`bigbird-pegasus summarize` of the example document with the demo model), timed.

Runs the command line as a user does, in interleaved rounds: with its default CPU threads (one, for a model as
narrow as the demo model: see `summarize.cpu_threads`) and with one thread per core (torch's default, what it used
before). For each run it reports the seconds of the summary after start-up (the JSONL `seconds`: tokenizing and
generating, model loaded) and of the whole process, and it checks that both settings write the same summary.

    python benchmarks/main_job.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "bigbird_pegasus_hub" / "data" / "example_document.txt"


def run_main_job(threads: int | None) -> tuple[float, float, str]:
    """(seconds after start-up, seconds of the whole process, summary) of one run."""
    command = [sys.executable, "-m", "bigbird_pegasus_hub.cli", "summarize", "--format", "jsonl", str(EXAMPLE)]
    if threads is not None:
        command += ["--threads", str(threads)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    total = time.perf_counter() - start
    record = json.loads(result.stdout)
    return record["seconds"], total, record["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = {"default (1 thread)": None, f"{os.cpu_count()} threads": os.cpu_count()}
    runs = {name: [] for name in settings}
    for _ in range(args.rounds):
        for name, threads in settings.items():
            runs[name].append(run_main_job(threads))
    summaries = {summary for results in runs.values() for _, _, summary in results}
    print(f"same summary in every run: {len(summaries) == 1}\n")
    print("| threads | after start-up (s), median | whole command (s), median | runs |")
    print("|---|---|---|---|")
    for name, results in runs.items():
        after, whole = statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)
        print(f"| {name} | {after:.2f} | {whole:.2f} | {len(results)} |")


if __name__ == "__main__":
    main()
