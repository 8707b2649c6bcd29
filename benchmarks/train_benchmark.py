"""Training-step speed and memory of our BigBirdPegasus against transformers' built-in model, same weights.

One training step = forward with labels, backward, gradients freed (no optimizer step). Variants:
  ours      our block_sparse attention
  builtin   transformers' built-in block_sparse model (train mode: it draws the original random blocks)
  floor     ours with the encoder's attention core skipped (projections, FFN, LayerNorms, decoder and loss still
            run): no attention can train faster than this.
Times: medians of interleaved rounds in one process, and a bound from this machine's matrix-product rate (the
fastest step the attention's products allow). Peak memory: the increase of the peak resident set during one step,
each (variant, length) in a fresh process (its first step, or one after a --warm-up-length step). See
benchmarks/README.md.

    python benchmarks/train_benchmark.py                              # 1024 4096 8192 tokens, ~10 min on 2 cores
    python benchmarks/train_benchmark.py --lengths 4096 --gradient-checkpointing
    python benchmarks/train_benchmark.py --lengths 4096 8192 --no-time --warm-up-length 1024
"""

import argparse
import gc
import json
import os
import statistics
import sys

import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmark import builtin_config, cell, interleaved_medians, machine_line, markdown_rows, peak_memory_tracker, \
    ratio, run_memory_probe, runnable_variants, skip_attention_core, target_table, timed

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig

VARIANTS = ("ours", "builtin", "floor")
# The model of the training issue: encoder d_model 256, 4 heads, 2+2 layers, FFN 1024, block 64, 3 random blocks.
MODEL = dict(
    d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
    encoder_ffn_dim=1024, decoder_ffn_dim=1024, block_size=64, num_random_blocks=3, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0,
)


def model_config(args) -> BigBirdPegasusConfig:
    return BigBirdPegasusConfig(**MODEL, vocab_size=args.vocab_size,
                                max_position_embeddings=max(4096, *args.lengths))


def build_models(args, names=VARIANTS) -> dict:
    """name -> seq2seq model in train mode; all hold the same (seeded) weights."""
    torch.manual_seed(0)
    builtin = transformers.BigBirdPegasusForConditionalGeneration(builtin_config(model_config(args)))
    models = {"builtin": builtin} if "builtin" in names else {}
    for name in ("ours", "floor"):
        if name in names:
            models[name] = ours.BigBirdPegasusForConditionalGeneration(model_config(args))
            models[name].load_state_dict(builtin.state_dict(), strict=True)
    if "floor" in models:
        skip_attention_core(models["floor"].model.encoder)
    for model in models.values():
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.train()
    return models


def training_inputs(args, length):
    generator = torch.Generator().manual_seed(length)
    input_ids = torch.randint(3, args.vocab_size, (args.batch, length), generator=generator)
    labels = torch.randint(3, args.vocab_size, (args.batch, args.target_length), generator=generator)
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels)


def training_step(model, inputs):
    model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)


def time_steps(models, args, length) -> dict:
    """Median seconds per training step; the variants take turns so machine noise hits them alike."""
    inputs = training_inputs(args, length)
    runs = {name: (lambda model=models[name]: training_step(model, inputs))
            for name in runnable_variants(args, length, args.batch)}
    for run in runs.values():  # warm-up: layouts, allocator, lazy init
        run()
    return interleaved_medians(runs, args.repeats)


def median_peak_memory(args, variant, length) -> float:
    """Median over --memory-repeats fresh processes: the peak resident set moves by tens of MiB from run to run
    (when glibc returns freed blocks to the kernel)."""
    return statistics.median(peak_memory_in_subprocess(args, variant, length) for _ in range(args.memory_repeats))


def peak_memory_in_subprocess(args, variant, length) -> float:
    """Peak memory increase (MiB) of one training step, measured in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--memory-probe", variant, "--lengths", str(length),
               "--batch", str(args.batch), "--target-length", str(args.target_length),
               "--vocab-size", str(args.vocab_size)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    command += ["--warm-up-length", str(args.warm_up_length)] if args.warm_up_length else []
    return run_memory_probe(command)


def memory_probe(args):
    """Runs in the subprocess: build, then measure the peak of exactly one training step (gradients included).
    By default the process's first step, as the training issue measures: it includes what a process sets up on
    first use (thread pools, allocator arenas, the matrix products' buffers), 65-110 MiB here. With
    --warm-up-length, one step at that length runs first: the peak of a later step of a run."""
    model = build_models(args, names=[args.memory_probe])[args.memory_probe]
    if args.warm_up_length:
        training_step(model, training_inputs(args, args.warm_up_length))
    inputs = training_inputs(args, args.lengths[0])
    gc.collect()
    with peak_memory_tracker("cpu") as peak:
        training_step(model, inputs)
    print(json.dumps({"peak_mib": peak()}))


def gradient_parity(args) -> list[list[str]]:
    """Largest relative gradient difference (max |ours - built-in| / max |built-in| of a parameter) of one step,
    same weights and inputs, padded (the last 123 tokens) or not: over the encoder and embeddings with the default
    SDPA kernel, and over every parameter with the exact one (torch's fused CPU kernel rounds the decoder's
    cross-attention gradients to ~1e-5 in both models alike). The models have 4096 positions: the built-in draws
    its random blocks on a grid of max_position_embeddings, the original (and ours) on a 4096-token one."""
    models = build_models(argparse.Namespace(**{**vars(args), "lengths": [1024, 4096]}), names=["builtin", "ours"])
    rows = [["L", "padding", "encoder + embeddings", "all parameters (exact SDPA kernel)"]]
    for length in (1024, 4096):
        for padded in (False, True):
            inputs = training_inputs(args, length)
            if padded:
                inputs["attention_mask"][:, -123:] = 0
            expected = parameter_gradients(models["builtin"], inputs)
            actual = parameter_gradients(models["ours"], inputs)
            with sdpa_kernel(SDPBackend.MATH):
                exact = parameter_gradients(models["ours"], inputs)
            encoder_side = [name for name in expected if name.startswith(("model.encoder.", "model.shared."))]
            rows.append([str(length), "123 tokens" if padded else "none",
                         f"{relative_difference(actual, expected, encoder_side):.1e}",
                         f"{relative_difference(exact, expected, list(expected)):.1e}"])
            print(" | ".join(rows[-1]), flush=True)
    return rows


def parameter_gradients(model, inputs) -> dict:
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def relative_difference(actual, expected, names) -> float:
    return max(float((actual[name] - expected[name]).abs().max() / expected[name].abs().max()) for name in names)


def report(args, timings, memory, rates) -> list[str]:
    names = [name for name in VARIANTS if name in args.variants]
    header = ["L"] + [f"{name} s" for name in names]
    header += [column for column, a, b in RATIOS if a in names and b in names]
    header += [f"{name} MiB" for name in names] + ["builtin/ours mem"] if memory else []
    rows = [header]
    for length, seconds in timings.items():
        row = [str(length)] + [cell(seconds.get(name), "{:.3f}") for name in names]
        row += [cell(ratio(seconds, a, b), "{:.2f}") for _, a, b in RATIOS if a in names and b in names]
        if memory:
            peaks = memory.get(length, {})
            row += [cell(peaks.get(name), "{:.0f}") for name in names] + [cell(ratio(peaks, "builtin", "ours"),
                                                                               "{:.2f}")]
        rows.append(row)
    config = model_config(args)
    checkpointing = "on" if args.gradient_checkpointing else "off"
    warm_up = f"after a step of {args.warm_up_length} tokens" if args.warm_up_length else "its first step"
    return [
        f"Machine: {machine_line(args)}", "",
        f"Model: d_model {config.d_model}, {config.encoder_attention_heads} heads, {config.encoder_layers}+"
        f"{config.decoder_layers} layers, ffn {config.encoder_ffn_dim}, block {config.block_size}, "
        f"{config.num_random_blocks} random blocks, vocab {config.vocab_size}; batch {args.batch}, "
        f"{args.target_length} target tokens; gradient checkpointing {checkpointing}. One training step = forward "
        f"+ backward; medians of {args.repeats} interleaved rounds; peak memory: increase during one step in a "
        f"fresh process ({warm_up}), median of {args.memory_repeats}.", "",
        "## Training step (seconds; builtin/ours > 1: ours is faster; ours/floor: 1.00 is the floor)", "",
    ] + markdown_rows(rows) + ["", "## Targets (the training issue's)", ""] + markdown_rows(
        target_rows(timings, memory)) + [""] + (
        ["## Bounds from the matrix products", ""] + bound_lines(args, timings, rates) + [""] if rates else [])


def attention_product_flops(config, length: int, batch: int) -> float:
    """FLOPs of the encoder attention's matrix products in one training step with nothing recomputed: 2 in the
    forward (scores, context), 4 in the backward (gradients of values, probabilities, queries, keys). A middle
    query block meets its 3 window, 2 global and r random key blocks (the second and second-to-last only 4 + r: their
    window holds a global block), the two global query blocks every key."""
    block, heads, random = config.block_size, config.encoder_attention_heads, config.num_random_blocks
    middle_blocks = (length // block - 4) * (5 + random) + 2 * (4 + random)
    pairs = middle_blocks * block * block + 2 * block * length
    return 6 * 2 * batch * heads * pairs * (config.d_model // heads) * config.encoder_layers


def product_rates(config, repeats: int = 7) -> dict[str, float]:
    """FLOP/s of this machine's fp32 matrix products, measured here: "tile", the six products of attention on
    tiles of 8 query blocks of one head (block queries x (5 + r) key blocks x head_dim: the shapes that any
    block-sparse attention multiplies), in cache; "square", a 2048^3 product (the best case)."""
    block, head_dim = config.block_size, config.d_model // config.encoder_attention_heads
    keys, tiles = (5 + config.num_random_blocks) * block, 8
    query, grad = torch.randn(tiles, block, head_dim), torch.randn(tiles, block, head_dim)
    key, value, probs = torch.randn(tiles, keys, head_dim), torch.randn(tiles, keys, head_dim), torch.randn(
        tiles, block, keys)
    scores, context, grad_keys = (torch.empty(tiles, block, keys), torch.empty(tiles, block, head_dim),
                                  torch.empty(tiles, keys, head_dim))

    def tile_products():
        for _ in range(20):
            torch.bmm(query, key.transpose(1, 2), out=scores)
            torch.bmm(probs, value, out=context)
            torch.bmm(probs.transpose(1, 2), grad, out=grad_keys)
            torch.bmm(grad, value.transpose(1, 2), out=scores)
            torch.bmm(probs, key, out=context)
            torch.bmm(probs.transpose(1, 2), query, out=grad_keys)

    square = torch.randn(2048, 2048)
    runs = {"tile": (tile_products, 20 * 6 * 2 * tiles * block * keys * head_dim),
            "square": (lambda: torch.matmul(square, square), 2 * 2048 ** 3)}
    rates = {}
    for name, (run, flops) in runs.items():
        run()
        rates[name] = flops / statistics.median(timed(run, "cpu") for _ in range(repeats))
    return rates


def bound_lines(args, timings, rates) -> list[str]:
    """The fastest step any attention could give: the floor plus the attention's products at these rates."""
    lines = []
    for length, seconds in timings.items():
        if "builtin" not in seconds or "floor" not in seconds:
            continue
        flops = attention_product_flops(model_config(args), length, args.batch)
        best = {name: seconds["builtin"] / (seconds["floor"] + flops / rate) for name, rate in rates.items()}
        lines.append(
            f"- {length} tokens: the attention's products take {flops / 1e9:.1f} GFLOP per step; at the rate of "
            f"these products on tiles ({rates['tile'] / 1e9:.0f} GFLOP/s) at least {flops / rates['tile']:.3f} s, "
            f"at the machine's best rate (2048^3 product, {rates['square'] / 1e9:.0f} GFLOP/s) at least "
            f"{flops / rates['square']:.3f} s. So built-in/ours is at most {best['tile']:.2f} "
            f"({best['square']:.2f} at the best rate), with softmax, gathers and masks free.")
    return lines


# (column, numerator, denominator)
RATIOS = [("builtin/ours", "builtin", "ours"), ("ours/floor", "ours", "floor")]


def target_rows(timings, memory) -> list[list[str]]:
    """The issue's targets; "best possible" is what a free attention (the floor) would score."""
    time_at, memory_at = (lambda length: timings.get(length, {})), (lambda length: memory.get(length, {}))
    return target_table([
        ("4096: built-in / ours step time", ratio(time_at(4096), "builtin", "ours"),
         ratio(time_at(4096), "builtin", "floor"), 2.5, True),
        ("4096: ours / built-in peak memory", ratio(memory_at(4096), "ours", "builtin"),
         ratio(memory_at(4096), "floor", "builtin"), 0.2, False),
        ("8192: ours / built-in peak memory", ratio(memory_at(8192), "ours", "builtin"),
         ratio(memory_at(8192), "floor", "builtin"), 0.1, False),
    ])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--target-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per length (median reported)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--vocab-size", type=int, default=1103,
                        help="1103: the bundled tokenizer's, as in the issue; Pegasus' own is 96103")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as `finetune` runs by default")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per memory figure (median)")
    parser.add_argument("--warm-up-length", type=int, default=0,
                        help="measure memory after one step of this many tokens (default: the process's first step)")
    parser.add_argument("--no-time", action="store_true", help="skip the timings")
    parser.add_argument("--gradient-parity", action="store_true",
                        help="also compare one step's gradients with the built-in's (1024 and 4096 tokens)")
    parser.add_argument("--builtin-max-tokens", type=int, default=8192,
                        help="skip the built-in model above batch * length tokens")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    parser.add_argument("--memory-probe", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warm_up_length and not 0 < args.warm_up_length <= min(args.lengths):
        # A longer warm-up leaves freed memory with the allocator, counted as "before" the measured step.
        parser.error("--warm-up-length must be between 1 and the shortest of --lengths")
    args.dtype, args.device = "fp32", "cpu"  # for machine_line
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.memory_probe:
        return memory_probe(args)
    timings, memory, rates = {length: {} for length in args.lengths}, {}, {}
    if not args.no_time:
        rates = product_rates(model_config(args)) if {"builtin", "floor"} <= set(args.variants) else {}
        models = build_models(args, names=args.variants)
        for length in args.lengths:
            timings[length] = time_steps(models, args, length)
            print(f"step L={length}: " + ", ".join(f"{n} {s:.3f}s" for n, s in timings[length].items()), flush=True)
        del models
    if not args.no_memory:
        for length in args.lengths:
            memory[length] = {name: median_peak_memory(args, name, length)
                              for name in runnable_variants(args, length, args.batch)}
            print(f"memory L={length}: " + ", ".join(f"{n} {m:.0f} MiB" for n, m in memory[length].items()),
                  flush=True)
    text = "\n".join(report(args, timings, memory, rates))
    if args.gradient_parity:
        text += "\n## Gradients against the built-in (train mode, dropout 0; relative difference)\n\n"
        text += "\n".join(markdown_rows(gradient_parity(args))) + "\n"
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
