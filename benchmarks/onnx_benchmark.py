"""ONNX Runtime against PyTorch eager for the same BigBirdPegasus weights: encoder forward and decoding steps.

The model of benchmark.py (d_model 512, 8 heads, 4+4 layers, FFN 2048, block 64, 3 random blocks) is exported with
this package's exporter (the graphs of `bigbird-pegasus export-onnx`), then timed in one process, in interleaved
rounds (every round runs each engine once, so machine noise hits both alike), with the same number of threads:

  encoder   one forward of batch 1 at each --lengths (the exported encoder's padded length equals the input's)
  decoding  ms per step of greedy and beam search from the same encoder output (--generate-length tokens),
            our ONNX Runtime runner (onnx_model.py) against PyTorch's generate; also whether the ids agree

    python benchmarks/onnx_benchmark.py
    python benchmarks/onnx_benchmark.py --lengths 1024 4096 --repeats 7 --threads 2 --markdown results.md
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import onnxruntime
import torch
from transformers.modeling_outputs import BaseModelOutput

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import MODEL, interleaved_medians, machine_line, markdown_rows  # noqa: E402

from bigbird_pegasus_hub.onnx_export import ENCODER_FILE, MAX_LENGTH_KEY, PADDED_LENGTH_KEY, quiet_exporter  # noqa: E402
from bigbird_pegasus_hub.onnx_graphs import export_graph, graph_specs  # noqa: E402
from bigbird_pegasus_hub.onnx_model import (  # noqa: E402
    OnnxBigBirdPegasusForConditionalGeneration, OnnxSession, default_session_options)
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig  # noqa: E402
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration  # noqa: E402

OPSET = 20


def build_model(args) -> BigBirdPegasusForConditionalGeneration:
    torch.manual_seed(0)
    config = BigBirdPegasusConfig(**MODEL, vocab_size=args.vocab_size, max_position_embeddings=max(args.lengths))
    return BigBirdPegasusForConditionalGeneration(config).eval()


def export(model, folder: Path, padded_length: int, encoder_only: bool) -> Path:
    """The exporter's graphs for `padded_length` into `folder`, with the config the runner reads."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(model, padded_length, torch.float32)
    with quiet_exporter():
        for spec in specs[:1] if encoder_only else specs:
            export_graph(spec, folder, OPSET, {MAX_LENGTH_KEY: str(padded_length), PADDED_LENGTH_KEY: str(padded_length)})
    model.config.save_pretrained(folder)
    return folder


def interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds per run; one warm-up each, then `repeats` rounds in which every run goes once."""
    for run in runs.values():
        run()
    return interleaved_medians(runs, repeats)


def time_encoder(model, folder: Path, length: int, args) -> dict:
    session = OnnxSession(folder / ENCODER_FILE, session_options=default_session_options(ENCODER_FILE, args.threads))
    generator = torch.Generator().manual_seed(length)
    input_ids = torch.randint(3, model.config.vocab_size, (1, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    encoder = model.get_encoder()

    def eager():
        with torch.inference_mode():
            return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def onnx_runtime():
        return session(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"]

    difference = (eager() - onnx_runtime()).abs().max().item()
    return {**interleaved({"eager": eager, "onnxruntime": onnx_runtime}, args.repeats), "max_abs_diff": difference}


def time_decoding(model, folder: Path, args) -> dict:
    runner = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(folder, threads=args.threads)  # its defaults
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, model.config.vocab_size, (1, args.generate_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        states = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    results = {}
    for beams in (1, args.beams):
        settings = dict(attention_mask=attention_mask, max_new_tokens=args.new_tokens, eos_token_id=None,
                        num_beams=beams, do_sample=False, no_repeat_ngram_size=0, length_penalty=1.0)
        outputs = {}

        def generate(name, engine):
            with torch.inference_mode():
                outputs[name] = engine.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states.clone()),
                                                **settings)

        seconds = interleaved({"eager": lambda: generate("eager", model),
                               "onnxruntime": lambda: generate("onnxruntime", runner)}, args.repeats)
        mode = "greedy" if beams == 1 else f"{beams}-beam"
        results[mode] = {name: 1000 * value / args.new_tokens for name, value in seconds.items()}
        results[mode]["same_ids"] = torch.equal(outputs["eager"], outputs["onnxruntime"])
    return results


def report(args, encoder, decoding, conditions) -> list[str]:
    lines = [f"Machine: {machine_line(args)}; onnxruntime {onnxruntime.__version__}, {args.threads} threads for both",
             f"Load average (1 min) before / after: {conditions['load_before']:.1f} / {conditions['load_after']:.1f}",
             "", f"Model: {json.dumps(MODEL)}, vocab {args.vocab_size}; medians of {args.repeats} interleaved rounds.",
             "", "## Encoder forward, batch 1 (seconds; eager / ONNX Runtime > 1: ONNX Runtime is faster)", ""]
    rows = [["tokens", "eager s", "ONNX Runtime s", "eager / ONNX Runtime", "max abs diff"]]
    for length, result in encoder.items():
        rows.append([str(length), f"{result['eager']:.3f}", f"{result['onnxruntime']:.3f}",
                     f"{result['eager'] / result['onnxruntime']:.2f}", f"{result['max_abs_diff']:.1e}"])
    lines += markdown_rows(rows)
    if decoding:
        lines += ["", f"## Decoding: {args.new_tokens} new tokens from a {args.generate_length}-token input, batch 1",
                  "", *markdown_rows([["decoding", "eager ms/step", "ONNX Runtime ms/step", "eager / ONNX Runtime",
                                       "same ids"]] + [
                      [mode, f"{r['eager']:.1f}", f"{r['onnxruntime']:.1f}", f"{r['eager'] / r['onnxruntime']:.2f}",
                       str(r["same_ids"])] for mode, r in decoding.items()])]
    return lines + [""]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--generate-length", type=int, default=4096, help="encoder input length for decoding")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=96103)
    parser.add_argument("--no-decoding", action="store_true")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    args.device, args.dtype = "cpu", "fp32"  # for benchmark.machine_line
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    conditions = {"load_before": os.getloadavg()[0]}
    model = build_model(args)
    encoder, decoding = {}, {}
    with tempfile.TemporaryDirectory(prefix="onnx-benchmark-") as tmp:
        for length in args.lengths:
            with_decoders = length == args.generate_length and not args.no_decoding
            folder = export(model, Path(tmp) / str(length), length, encoder_only=not with_decoders)
            encoder[length] = time_encoder(model, folder, length, args)
            print(f"encoder {length}: " + ", ".join(f"{k} {v:.3g}" for k, v in encoder[length].items()), flush=True)
            if with_decoders:
                decoding = time_decoding(model, folder, args)
                print(f"decoding: {decoding}", flush=True)
    conditions["load_after"] = os.getloadavg()[0]
    text = "\n".join(report(args, encoder, decoding, conditions))
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
