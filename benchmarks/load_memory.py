"""Load time and peak memory of `from_pretrained`: our BigBirdPegasus against transformers' built-in class.

A model of the released checkpoints' shape (google/bigbird-pegasus-large-*: d_model 1024, 16+16 layers, 16 heads,
ffn 4096, vocab 96103, 4096 positions; about 570M parameters) gets random weights, saved once as safetensors.
Each measurement loads that folder in a fresh subprocess; the two classes alternate, and every number is the
median over the repeats.

    python benchmarks/load_memory.py                     # ~2.3 GB in a new folder under /tmp, removed afterwards
    python benchmarks/load_memory.py --folder /tmp/bbp --repeats 5 --dtype bf16   # saves once, then reuses
"""

import argparse
import gc
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = ("ours", "builtin")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # --dtype -> torch name


# ----------------------------------------------------------------------------------------------------------------
# The checkpoint
# ----------------------------------------------------------------------------------------------------------------


def save_random_checkpoint(folder: Path) -> int:
    """Saves a released-size model with random weights to `folder`; returns its number of parameters."""
    import torch

    from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
    from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration

    torch.manual_seed(0)
    model = BigBirdPegasusForConditionalGeneration(BigBirdPegasusConfig())  # the defaults are the released shape
    model.save_pretrained(folder, safe_serialization=True)
    return model.num_parameters()


def warm_page_cache(folder: Path):
    """Reads the weights once, so that no measurement pays for the first read from disk."""
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as file:
            while file.read(1 << 26):
                pass


# ----------------------------------------------------------------------------------------------------------------
# One measurement (runs in its own process)
# ----------------------------------------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux VmHWM). Not ru_maxrss: Linux carries it over from the parent
    through fork and exec, so a child would report the parent's size if that was larger."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def cpu_seconds() -> float:
    """User + system time of this process, all threads: less sensitive than wall time to a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_class(name: str):
    if name == "ours":
        from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
    else:
        from transformers import BigBirdPegasusForConditionalGeneration
    return BigBirdPegasusForConditionalGeneration


def measure(name: str, folder: str, dtype: str) -> dict:
    """Imports first (not measured), times one from_pretrained, then reads every weight once.

    Peak RSS right after loading misses weights that are still memory-mapped and untouched (safetensors in the
    checkpoint's dtype); reading them all gives the footprint of a model in use.
    """
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    cls = model_class(name)
    torch_dtype = getattr(torch, DTYPES[dtype])
    # A full collection of the ~330k objects that the imports leave costs ~0.3 s here: start both classes from
    # a clean collector, or the timing says which imports happened to leave one pending.
    gc.collect()
    imports = peak_rss_bytes()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    model = cls.from_pretrained(folder, dtype=torch_dtype)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    loaded = peak_rss_bytes()
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()  # loaded and tied
    assert {param.dtype for param in model.parameters()} == {torch_dtype}
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.sum()  # brings memory-mapped pages in
    return {"seconds": seconds, "cpu": cpu, "imports": imports, "loaded": loaded, "in_use": peak_rss_bytes()}


def measure_in_subprocess(name: str, folder: Path, dtype: str) -> dict:
    command = [sys.executable, __file__, "--child", name, "--folder", str(folder), "--dtype", dtype]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def run_interleaved(folder: Path, repeats: int, dtype: str) -> dict:
    """class name -> list of measurements; the order of the classes flips every round."""
    results = {name: [] for name in CLASSES}
    for round_index in range(repeats):
        order = CLASSES if round_index % 2 == 0 else CLASSES[::-1]
        for name in order:
            results[name].append(measure_in_subprocess(name, folder, dtype))
            print(f"  round {round_index + 1} {name}: {results[name][-1]['seconds']:.2f} s", file=sys.stderr)
    return results


def median(measurements, key) -> float:
    return statistics.median(m[key] for m in measurements)


def markdown_table(results: dict) -> str:
    gib = 1024**3
    rows = [
        ("load time (s)", "seconds", 1),
        ("load CPU time (s)", "cpu", 1),
        ("peak RSS after imports (GiB)", "imports", gib),
        ("peak RSS after from_pretrained (GiB)", "loaded", gib),
        ("peak RSS after reading every weight (GiB)", "in_use", gib),
    ]
    lines = ["| median of each | ours | built-in | ours / built-in |", "|---|---:|---:|---:|"]
    for label, key, unit in rows:
        ours, builtin = (median(results[name], key) / unit for name in CLASSES)
        ratio = f"{ours / builtin:.2f}" if builtin else "n/a"
        lines.append(f"| {label} | {ours:.2f} | {builtin:.2f} | {ratio} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path,
                        help="the checkpoint's folder: reused if it holds one, never removed "
                             "(default: a new folder in /tmp, removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="do not remove the default folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype passed to from_pretrained")
    parser.add_argument("--child", choices=CLASSES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, str(args.folder), args.dtype)))
        return

    folder = args.folder or Path(tempfile.mkdtemp(prefix="bigbird_pegasus_load_", dir="/tmp"))
    remove = args.folder is None and not args.keep  # a folder the user named is never removed
    try:
        if not (folder / "model.safetensors").exists():
            num_parameters = save_random_checkpoint(folder)
            print(f"saved {num_parameters / 1e6:.0f}M parameters to {folder}", file=sys.stderr)
        warm_page_cache(folder)
        results = run_interleaved(folder, args.repeats, args.dtype)
    finally:
        if remove:
            shutil.rmtree(folder, ignore_errors=True)

    import transformers

    print(f"from_pretrained, {args.dtype}, transformers {transformers.__version__}, "
          f"median of {args.repeats} fresh processes:\n")
    print(markdown_table(results))


if __name__ == "__main__":
    main()
