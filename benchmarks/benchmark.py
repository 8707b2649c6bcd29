"""Speed and memory of our BigBirdPegasus against transformers' built-in model, with the same weights.

Encoder forward (interleaved repeats, medians) for variants of one encoder:
  ours      our block_sparse attention
  builtin   transformers' built-in block_sparse encoder (eval mode)
  dense     our encoder with attention_type="original_full" (dense SDPA)
  floor     our encoder with the attention core skipped (projections, FFN and LayerNorms only)
  compiled  ours under torch.compile (Inductor, fullgraph; not in the default set)
  padded    ours with pad_to_multiple_of=1024, the original code's grid (not in the default set)
plus each variant's peak memory (a fresh subprocess per measurement) and greedy / beam-search generation speed
of ours against the built-in from the same encoder output (with --compile also ours with a static cache, eager
and compiled). See benchmarks/README.md.

    python benchmarks/benchmark.py --quick
    python benchmarks/benchmark.py --lengths 4096 8192 --batch 1 --markdown benchmarks/results_cpu.md
    python benchmarks/benchmark.py --variants ours compiled --lengths 4096 --no-memory --no-generate
    python benchmarks/benchmark.py --variants ours padded --lengths 500 1500 3000 --no-memory --no-generate
    python benchmarks/benchmark.py --no-encoder --no-memory --compile
    python benchmarks/benchmark.py --device cuda --dtype bf16
    python benchmarks/benchmark.py --lengths 4096 --no-generate --no-memory --threads 2 --busy 1   # shared cores
"""

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import torch
import transformers
from transformers.modeling_outputs import BaseModelOutput

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ENCODER_VARIANTS = ("ours", "builtin", "dense", "floor", "compiled", "padded")
DEFAULT_VARIANTS = ("ours", "builtin", "dense", "floor")
# The model of the issue: d_model 512, 8 heads, 4+4 layers, ffn 2048, block 64, 3 random blocks.
MODEL = dict(
    d_model=512, encoder_layers=4, decoder_layers=4, encoder_attention_heads=8, decoder_attention_heads=8,
    encoder_ffn_dim=2048, decoder_ffn_dim=2048, block_size=64, num_random_blocks=3, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0,
)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def model_config(args, attention_type="block_sparse", **options) -> BigBirdPegasusConfig:
    # Learned positions: lengths beyond the paper's 4096 need a bigger table.
    max_positions = 4096 if max(args.lengths + [args.generate_length]) <= 4096 else 16384
    return BigBirdPegasusConfig(**MODEL, vocab_size=args.vocab_size, max_position_embeddings=max_positions,
                                attention_type=attention_type, **options)


def builtin_config(config: BigBirdPegasusConfig):
    values = {k: v for k, v in config.to_dict().items()
              if k not in ("layer_norm_eps", "auto_map", "custom_pipelines", "architectures")}
    return transformers.BigBirdPegasusConfig(**values)


def build_models(args, names=ENCODER_VARIANTS):
    """name -> seq2seq model, for the variants in `names`; all hold the same (seeded) weights."""
    torch.manual_seed(0)
    builtin = transformers.BigBirdPegasusForConditionalGeneration(builtin_config(model_config(args)))
    models = {"builtin": builtin} if "builtin" in names else {}
    variants = {"ours": model_config(args), "dense": model_config(args, "original_full"), "floor": model_config(args),
                "compiled": model_config(args), "padded": model_config(args, pad_to_multiple_of=1024)}
    for name, config in variants.items():
        if name in names:
            models[name] = ours.BigBirdPegasusForConditionalGeneration(config)
            models[name].load_state_dict(builtin.state_dict(), strict=True)
    if "floor" in models:
        skip_attention_core(models["floor"].model.encoder)
    if "compiled" in models:  # Inductor, one graph per length (static shapes): compiled in each warm-up run
        models["compiled"].model.encoder = torch.compile(models["compiled"].model.encoder, fullgraph=True,
                                                         dynamic=False)
    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    return {name: model.to(device=device, dtype=dtype).eval() for name, model in models.items()}


def skip_attention_core(encoder):
    """The floor: every encoder layer still projects query, key and value, but returns the values as context."""

    def projections_only(self, hidden_states, *args, **kwargs):
        self.query(hidden_states)
        self.key(hidden_states)
        return self.value(hidden_states), None

    for layer in encoder.layers:
        layer.self_attn.self.forward = types.MethodType(projections_only, layer.self_attn.self)


def encoder_inputs(args, length, batch):
    generator = torch.Generator().manual_seed(length + batch)
    input_ids = torch.randint(3, args.vocab_size, (batch, length), generator=generator)
    return input_ids.to(args.device), torch.ones_like(input_ids).to(args.device)


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(function, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` other processes that each keep a core busy (a Python loop), as other jobs on a shared machine do."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def runnable_variants(args, length, batch) -> list[str]:
    """The variants to run at this size: the built-in model needs ~0.6 MiB per token and layer-batch here
    (10 GiB at 16384 tokens), so it is skipped above --builtin-max-tokens."""
    too_big = batch * length > args.builtin_max_tokens
    return [name for name in args.variants if not (name == "builtin" and too_big)]


def time_encoders(models, args, length, batch) -> dict:
    """Median seconds per encoder forward; the variants take turns so machine noise hits them alike."""
    input_ids, attention_mask = encoder_inputs(args, length, batch)
    runs = {
        name: (lambda encoder=models[name].get_encoder(): encoder(input_ids, attention_mask))
        for name in runnable_variants(args, length, batch)
    }
    with torch.inference_mode(), busy_processes(args.busy):
        for name, run in runs.items():  # warm-up: layouts, allocator, lazy init, compilation
            warm_up = timed(run, args.device)
            if name == "compiled":
                print(f"compiled encoder L={length} batch={batch}: first call (compilation) {warm_up:.1f} s",
                      flush=True)
        return interleaved_medians(runs, args.repeats, args.device)


def interleaved_medians(runs: dict, repeats: int, device="cpu") -> dict[str, float]:
    """Median seconds of each run over `repeats` rounds in which every run goes once (after the caller's warm-up),
    so that machine noise hits them alike."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run, device))
            gc.collect()
    return {name: statistics.median(values) for name, values in seconds.items()}


def peak_memory_in_subprocess(args, variant, length, batch) -> float:
    """Peak memory increase (MiB) of one encoder forward, measured in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", variant, "--lengths", str(length),
               "--batch", str(batch), "--device", args.device, "--dtype", args.dtype,
               "--vocab-size", str(args.vocab_size), "--generate-length", str(args.generate_length)]
    command += ["--threads", str(args.threads)] if args.threads else []
    return run_memory_probe(command)


def run_memory_probe(command) -> float:
    """Runs a memory probe in a fresh process; its last output line is {"peak_mib": ...}. NaN if it fails."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_probe(args):
    """Runs in the subprocess: build, then measure the peak of exactly one encoder forward."""
    variant, length, batch = args.memory_probe, args.lengths[0], args.batch[0]
    encoder = build_models(args, names=[variant])[variant].get_encoder()
    gc.collect()
    input_ids, attention_mask = encoder_inputs(args, length, batch)
    with torch.inference_mode():
        with peak_memory_tracker(args.device) as peak:
            encoder(input_ids, attention_mask)
            synchronize(args.device)
    print(json.dumps({"peak_mib": peak()}))


@contextlib.contextmanager
def peak_memory_tracker(device):
    """Yields a function returning the peak memory increase (MiB) inside the block: CUDA allocator peak, or the
    process's peak resident set (Linux: VmHWM, reset through /proc/self/clear_refs)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield lambda: (torch.cuda.max_memory_allocated() - before) / 2**20
        return
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak RSS to the current RSS
    before = resident_kib("VmRSS")
    yield lambda: (resident_kib("VmHWM") - before) / 1024


def resident_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def compiled_decoding_model(model):
    """A second copy of our model whose forward is compiled (Inductor, one graph, static shapes): with a static
    cache, every decoding step after the first runs the same compiled graph (transformers' compiled decoding)."""
    compiled = ours.BigBirdPegasusForConditionalGeneration(model.config).to(model.device, model.dtype).eval()
    compiled.load_state_dict(model.state_dict())
    compiled.forward = torch.compile(compiled.forward, fullgraph=True, dynamic=False)
    return compiled


def generation_variants(models, args) -> dict:
    """name -> (model, extra generate() arguments). With --compile, our model with a static cache is timed eagerly
    and compiled, so that the table separates the effect of the cache from that of compilation."""
    static = {"cache_implementation": "static"}
    variants = {"ours": (models["ours"], {}), "builtin": (models["builtin"], {})}
    if args.compile:
        variants["ours static"] = (models["ours"], static)
        variants["ours compiled"] = (compiled_decoding_model(models["ours"]), static)
    return variants


def time_generation(models, args) -> dict:
    """Median ms per decoding step, {"greedy" / "4-beam": {variant: ms, "same_tokens": bool}}, from the same
    encoder output for every variant (ours, the built-in, and with --compile ours with a static cache and a
    compiled forward; compilation happens in the warm-up run).

    The encoder runs once outside the timing. Without an end-of-sequence token every run decodes exactly
    `new_tokens` steps (`min_new_tokens` would add a logits processor that costs as much as a small model's
    step). Also checks that all variants generate the same tokens."""
    input_ids, attention_mask = encoder_inputs(args, args.generate_length, 1)
    with torch.inference_mode():
        encoder_states = models["ours"].get_encoder()(input_ids, attention_mask).last_hidden_state
    variants = generation_variants(models, args)
    results = {}
    for beams in (1, args.beams):
        settings = dict(attention_mask=attention_mask, max_new_tokens=args.new_tokens, eos_token_id=None,
                        num_beams=beams, do_sample=False)
        outputs, seconds = {}, {name: [] for name in variants}

        def generate(name):
            model, extra = variants[name]
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_states.clone())
            outputs[name] = model.generate(encoder_outputs=encoder_outputs, **settings, **extra)

        with torch.inference_mode():
            for name in seconds:
                warm_up = timed(lambda: generate(name), args.device)  # layouts, allocator, lazy init, compilation
                print(f"generation warm-up {beams} beam(s), {name}: {warm_up:.1f} s", flush=True)
            for _ in range(args.repeats):
                for name in seconds:
                    seconds[name].append(timed(lambda: generate(name), args.device))
        if any(out.shape[1] != args.new_tokens + 1 for out in outputs.values()):
            raise RuntimeError("generation stopped before --new-tokens: the timings would not be per step")
        mode = "greedy" if beams == 1 else f"{beams}-beam"
        results[mode] = {name: 1000 * statistics.median(values) / args.new_tokens for name, values in seconds.items()}
        results[mode]["same_tokens"] = all(torch.equal(out, outputs["ours"]) for out in outputs.values())
        print(f"generation {mode}: " + ", ".join(f"{n} {results[mode][n]:.1f} ms/step" for n in seconds), flush=True)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------


def encoder_table(timings, memory, args) -> list[str]:
    names = [n for n in ENCODER_VARIANTS if n in args.variants]
    # (column, numerator, denominator): speed-ups of ours over builtin and dense, ours' cost over the floor.
    ratios = [(f"{n}/ours", n, "ours") for n in ("builtin", "dense", "padded") if n in names]
    ratios += [("ours/floor", "ours", "floor")] if "floor" in names else []
    ratios += [("ours/compiled", "ours", "compiled")] if "compiled" in names else []
    header = ["L", "batch"] + [f"{n} s" for n in names] + [column for column, _, _ in ratios]
    if memory:
        header += [f"{n} MiB" for n in names] + ["builtin/ours mem"]
    rows = [header]
    for (length, batch), seconds in timings.items():
        row = [str(length), str(batch)] + [cell(seconds.get(n), "{:.3f}") for n in names]
        row += [cell(ratio(seconds, a, b), "{:.2f}") for _, a, b in ratios]
        if memory:
            peaks = memory.get((length, batch), {})
            row += [cell(peaks.get(n), "{:.0f}") for n in names]
            row.append(cell(ratio(peaks, "builtin", "ours"), "{:.2f}"))
        rows.append(row)
    return markdown_rows(rows)


def ratio(values: dict, numerator: str, denominator: str):
    if values.get(numerator) is None or values.get(denominator) is None:
        return None
    return values[numerator] / values[denominator]


def cell(value, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def scaling_lines(timings, args) -> list[str]:
    lines = []
    for batch in args.batch:
        for short, long in zip(args.lengths, args.lengths[1:]):
            if (short, batch) in timings and (long, batch) in timings and "ours" in args.variants:
                growth = timings[(long, batch)]["ours"] / timings[(short, batch)]["ours"]
                lines.append(f"- ours, batch {batch}: time({long}) / time({short}) = {growth:.2f}")
    return lines


# The targets (batch 1): (description, measured, best possible, goal, True if measured must be >= goal).
# "Best possible" is what an attention that costs nothing (the floor) would score: a speed-up over the built-in or
# dense encoder of more than x/floor is out of reach for any attention.
def target_rows(timings, memory, generation, beams, busy=0) -> list[list[str]]:
    at = lambda length: timings.get((length, 1), {})  # noqa: E731
    growth = ratio({8192: at(8192).get("ours"), 4096: at(4096).get("ours")}, 8192, 4096)
    if busy:  # the quiet-machine targets do not apply; ours must keep its lead over dense attention
        checks = [(f"4096 next to {busy} busy process(es): dense / ours", ratio(at(4096), "dense", "ours"),
                   ratio(at(4096), "dense", "floor"), 1.0, True)]
        return target_table(checks)
    checks = [
        ("4096: ours / floor", ratio(at(4096), "ours", "floor"), 1.0, 1.3, False),
        ("4096: built-in / ours", ratio(at(4096), "builtin", "ours"), ratio(at(4096), "builtin", "floor"), 2.5, True),
        ("4096: dense / ours", ratio(at(4096), "dense", "ours"), ratio(at(4096), "dense", "floor"), 1.5, True),
        ("8192: built-in / ours", ratio(at(8192), "builtin", "ours"), ratio(at(8192), "builtin", "floor"), 3.0, True),
        ("8192: dense / ours", ratio(at(8192), "dense", "ours"), ratio(at(8192), "dense", "floor"), 2.5, True),
        ("ours: time(8192) / time(4096)", growth, None, 2.2, False),
        ("8192: built-in / ours peak memory", ratio(memory.get((8192, 1), {}), "builtin", "ours"), None, 3.0, True),
    ]
    if generation:
        beam = f"{beams}-beam"
        beam_cost = generation[beam]["ours"] / generation["greedy"]["ours"]
        checks += [
            ("greedy: built-in / ours ms per step", ratio(generation["greedy"], "builtin", "ours"), None, 1.5, True),
            (f"{beam}: built-in / ours ms per step", ratio(generation[beam], "builtin", "ours"), None, 2.0, True),
            (f"ours: {beam} step / greedy step", beam_cost, None, 2.0, False),
        ]
    return target_table(checks)


def target_table(checks) -> list[list[str]]:
    rows = [["target", "measured", "best possible (floor)", "goal", "met"]]
    for name, value, best, goal, at_least in checks:
        met = None if value is None else (value >= goal if at_least else value <= goal)
        rows.append([name, cell(value, "{:.2f}"), cell(best, "{:.2f}"), f"{'>=' if at_least else '<='} {goal}",
                     "–" if met is None else ("yes" if met else "NO")])
    return rows


def generation_table(results, args) -> list[str]:
    compiled = "ours compiled" in results["greedy"]
    header = ["decoding", "ours ms/step", "builtin ms/step", "builtin/ours (speed-up)"]
    header += ["ours static ms/step", "ours compiled ms/step", "ours/compiled (speed-up)"] if compiled else []
    rows = [header + ["same tokens"]]
    for mode, result in results.items():
        row = [mode, f"{result['ours']:.1f}", f"{result['builtin']:.1f}", f"{result['builtin'] / result['ours']:.2f}"]
        if compiled:
            row += [f"{result['ours static']:.1f}", f"{result['ours compiled']:.1f}",
                    f"{result['ours'] / result['ours compiled']:.2f}"]
        rows.append(row + [str(result["same_tokens"])])
    lines = markdown_rows(rows) + [""]
    for name in ("ours", "ours compiled") if compiled else ("ours",):
        beam_cost = results[f"{args.beams}-beam"][name] / results["greedy"][name]
        lines.append(f"- {name}: {args.beams}-beam step / greedy step = {beam_cost:.2f}")
    return lines


def markdown_rows(rows) -> list[str]:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]


def machine_line(args) -> str:
    if torch.device(args.device).type == "cuda":
        where = torch.cuda.get_device_name()
    else:
        cpu = platform.processor() or platform.machine()
        where = f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return (f"{where}; {args.dtype}; torch {torch.__version__}; transformers {transformers.__version__}; "
            f"{datetime.date.today().isoformat()}")


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=ENCODER_VARIANTS,
                        help="encoder variants; also 'compiled' (ours under torch.compile, Inductor) and 'padded' "
                             "(ours with pad_to_multiple_of=1024)")
    parser.add_argument("--quick", action="store_true", help="lengths 1024 4096 8192, batch 1, 3 repeats")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-batch", type=int, nargs="+", default=[1],
                        help="batch sizes whose peak memory is measured (default: 1)")
    parser.add_argument("--builtin-max-tokens", type=int, default=16384,
                        help="skip the built-in encoder above batch * length tokens (its memory: 10 GiB at 16384)")
    parser.add_argument("--no-generate", action="store_true", help="skip the generation benchmark")
    parser.add_argument("--no-encoder", action="store_true", help="skip the encoder timings")
    parser.add_argument("--generate-length", type=int, default=4096, help="encoder input length for generation")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--compile", action="store_true",
                        help="also time our decoding with a static cache and a compiled forward (Inductor)")
    parser.add_argument("--vocab-size", type=int, default=96103)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--busy", type=int, default=0,
                        help="run the encoder timings next to this many busy processes (cores shared with other jobs)")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument("--memory-probe", choices=ENCODER_VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.batch, args.repeats = [1024, 4096, 8192], [1], 3
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        return memory_probe(args)
    models = build_models(args, names=set(args.variants) | ({"ours", "builtin"} if not args.no_generate else set()))
    timings, memory, generation = {}, {}, {}
    if not args.no_encoder:
        timings, memory = run_encoder_benchmarks(models, args)
    if not args.no_generate:
        generation = time_generation(models, args)
    text = "\n".join(report(args, timings, memory, generation))
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)


def run_encoder_benchmarks(models, args):
    timings, memory = {}, {}
    for batch in args.batch:
        for length in args.lengths:
            timings[(length, batch)] = time_encoders(models, args, length, batch)
            print(f"encoder L={length} batch={batch}: " + ", ".join(
                f"{n} {s:.3f}s" for n, s in timings[(length, batch)].items()), flush=True)
    if args.no_memory:
        return timings, memory
    for length, batch in timings:
        if batch in args.memory_batch:
            memory[(length, batch)] = {n: peak_memory_in_subprocess(args, n, length, batch)
                                       for n in runnable_variants(args, length, batch)}
            print(f"memory L={length} batch={batch}: " + ", ".join(
                f"{n} {m:.0f} MiB" for n, m in memory[(length, batch)].items()), flush=True)
    return timings, memory


def report(args, timings, memory, generation) -> list[str]:
    config = model_config(args)
    lines = [f"Machine: {machine_line(args)}", "",
             f"Model: d_model {config.d_model}, {config.encoder_attention_heads} heads, {config.encoder_layers}+"
             f"{config.decoder_layers} layers, ffn {config.encoder_ffn_dim}, block {config.block_size}, "
             f"{config.num_random_blocks} random blocks, vocab {config.vocab_size}; medians of {args.repeats} "
             "interleaved repeats; peak memory: increase during one forward in a fresh process."
             + (f" Encoder timings next to {args.busy} busy process(es)." if args.busy else ""), ""]
    if timings:
        lines += ["## Encoder forward (seconds; x/ours > 1: ours is faster; ours/floor: 1.00 is the floor)", ""]
        lines += encoder_table(timings, memory, args) + [""] + scaling_lines(timings, args) + [""]
    if generation:
        lines += [f"## Generation: {args.new_tokens} new tokens from a {args.generate_length}-token input, batch 1",
                  ""] + generation_table(generation, args) + [""]
    lines += ["## Targets (batch 1)", ""] + markdown_rows(target_rows(timings, memory, generation, args.beams,
                                                                          args.busy))
    return lines + [""]


if __name__ == "__main__":
    main()
