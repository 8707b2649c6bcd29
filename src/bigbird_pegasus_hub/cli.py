"""The `bigbird-pegasus` command line: summarize documents; convert, upgrade, build and push model repos.

Every subcommand has `--help` with examples. A problem the user can fix (a missing file, a bad option, an
unreachable Hub) ends the command with one line on stderr and exit status 2, without a traceback; `--debug` adds it.
torch and transformers are imported only by the subcommands that use them, after the cheap checks of their
arguments, so that mistakes are reported at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .summarize import DEFAULT_MODEL_DIR, DEVICES, DTYPES

PROG = "bigbird-pegasus"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
STDIN = "-"
# Short names of the released checkpoints' hyperparameter presets (conversion/presets.py).
PRESETS = {name: f"bigbird-pegasus-large-{name}" for name in ("arxiv", "pubmed", "bigpatent")}
# Python packages whose exceptions are network failures (no route, refused connection, timeout).
NETWORK_PACKAGES = {"httpx", "httpx2", "httpcore", "requests", "urllib3"}


class CommandError(Exception):
    """A problem the user can fix; the message says what went wrong and what to do."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise  # a bug: the traceback is the useful report
        if args.debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def user_error_message(error: Exception) -> str | None:
    """One line for an error the user can fix (bad input, missing file, network), None for anything else."""
    if isinstance(error, (CommandError, ValueError, OSError)):
        return one_line(str(error)) or type(error).__name__
    if type(error).__module__.partition(".")[0] in NETWORK_PACKAGES:
        return f"network error ({one_line(str(error)) or type(error).__name__}): check the connection and HF_ENDPOINT."
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.cuda.OutOfMemoryError):
        return "the GPU ran out of memory: try a smaller --batch-size, --dtype bfloat16 or float16, or --device auto."
    return None


def one_line(message: str) -> str:
    """A message on one line: library messages may list their points on several."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


# ----------------------------------------------------------------------------------------------------------------
# Parser.


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage mistakes reported like every other error: one line, status 2."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and of the example epilogs; a wider column for option names."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        formatter_class=HelpFormatter,
        description="Summarize long documents with BigBirdPegasus, and make, convert and publish its Hub repos.",
        epilog=examples(
            "summarize article.txt",
            "summarize --chunk --format jsonl papers/*.txt > summaries.jsonl",
            "build my-repo --config config.json --weights model.safetensors --tokenizer spiece.model",
            "push my-repo my-user/bigbird-pegasus-arxiv",
        ) + f"\n\nRun `{PROG} COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.set_defaults(debug=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    common = ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, also print its traceback; show the libraries' warnings")
    for add_command in (add_summarize, add_evaluate, add_convert_tf, add_upgrade, add_build, add_push):
        add_command(commands, common)
    return parser


def add_command(commands, name: str, common, run: Callable, *, help: str, description: str, epilog: str):
    parser = commands.add_parser(name, parents=[common], help=help, description=description, epilog=epilog,
                                 formatter_class=HelpFormatter)
    parser.set_defaults(run=run)
    return parser


def examples(*command_lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {PROG} {line}" for line in command_lines)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bigbird-pegasus-hub")
    except PackageNotFoundError:
        return "(not installed)"


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# summarize


SUMMARIZE_DESCRIPTION = f"""\
Summarize each FILE (standard input when no FILE is given, or for '-'). Summaries go to stdout; warnings and,
for several files, a progress bar go to stderr.

Which code runs: a local model folder is loaded with this package's own model code, never with Python files
of the folder. A Hub repo id whose config.json has an auto_map ships its own Python code, which transformers
imports and runs on this machine: it needs --trust-remote-code, and --revision COMMIT pins the code you
reviewed. A Hub repo without code is loaded with this package's code.

Long documents: the model reads at most its max_position_embeddings tokens (4096 for the released models).
Longer documents are cut, with a warning that says how many tokens were dropped. --chunk instead splits such
a document into overlapping windows of that length, summarizes each window, then summarizes the joined
window summaries: a document of k windows costs k + 1 generate calls instead of one.

A corpus: --input FILE.jsonl|.csv|.parquet --text-column COL summarizes every row of a dataset file (streamed,
so it may have millions of rows) into --output FILE.jsonl|.parquet: id, summary, input_tokens, truncated,
truncated_tokens, windows and seconds per row, in input order. Documents are batched with others of the same
padded length (so a summary does not depend on its batch), finished batches are saved as they come, and --resume
completes an interrupted run. Under `accelerate launch` or `torchrun`, every process summarizes its share on its own
device (threads: cores / processes) and the main process merges the shares. Needs the corpus extra.

Default model: the bundled demo model, {DEFAULT_MODEL_DIR} (a source checkout only: a package
installed from a wheel needs --model)."""


def add_summarize(commands, common):
    parser = add_command(
        commands, "summarize", common, run_summarize,
        help="summarize text files or standard input",
        description=SUMMARIZE_DESCRIPTION,
        epilog=examples(
            "summarize article.txt",
            "summarize --chunk --num-beams 4 --max-length 128 thesis.txt",
            "summarize --model ./my-repo < article.txt",
            "summarize --format jsonl --batch-size 4 papers/*.txt > summaries.jsonl",
            "summarize --model my-user/my-model --trust-remote-code --revision 3f2c1a7 --device cuda paper.txt",
            "summarize --input papers.parquet --text-column article --id-column id --output summaries.jsonl "
            "--batch-size 8",
            "summarize --input papers.parquet --text-column article --output summaries.jsonl --resume",
        ) + "\n  accelerate launch --num_processes 4 -m bigbird_pegasus_hub.cli summarize --input papers.parquet "
            "--text-column article --output summaries.parquet",
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="UTF-8 text files (default: standard input)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="FOLDER_OR_REPO_ID",
                       help="local model folder or Hub repo id (default: the bundled demo model)")
    model.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub repo; a commit pins its code")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a Hub repo's own Python code to run (needed when it ships code)")
    model.add_argument("--device", choices=DEVICES, default="auto",
                       help="where the model runs; auto: GPUs if any (device_map=auto), else the CPU (default: auto)")
    model.add_argument("--dtype", choices=DTYPES, default="auto",
                       help="weight precision; auto: as saved (default: auto)")
    model.add_argument("--threads", type=positive_int, metavar="N",
                       help="CPU threads per process (default: all cores; cores / processes under accelerate launch "
                            "or torchrun)")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--num-beams", type=positive_int, metavar="N",
                            help="beam search width (default: the model's generation config)")
    generation.add_argument("--max-length", type=positive_int, metavar="TOKENS",
                            help="longest summary in tokens (default: the model's generation config)")
    generation.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                            help="documents (with --chunk: windows) per generate call (default: 1)")
    generation.add_argument("--chunk", action="store_true",
                            help="summarize long documents window by window, then the window summaries "
                                 "(k windows: k + 1 generate calls)")
    generation.add_argument("--chunk-overlap", type=non_negative_int, metavar="TOKENS",
                            help="tokens shared by consecutive windows (default: an eighth of a window)")
    generation.add_argument("--max-input-tokens", type=positive_int, metavar="TOKENS",
                            help="read at most this many tokens of a document (default: all the model reads; the "
                                 "paper used 3072 for arXiv and PubMed)")
    corpus = parser.add_argument_group("corpus (instead of FILEs)")
    corpus.add_argument("--input", metavar="DATASET", help="a .jsonl, .csv or .parquet file, one document per row")
    corpus.add_argument("--text-column", metavar="COLUMN", help="the column with the documents (needed with --input)")
    corpus.add_argument("--id-column", metavar="COLUMN",
                        help="a column of unique document ids (default: the row number, from 0)")
    corpus.add_argument("--output", metavar="FILE",
                        help="a .jsonl or .parquet file, written atomically at the end (default: JSON Lines on stdout)")
    corpus.add_argument("--resume", action="store_true",
                        help="summarize only the rows that --output (or the parts of an interrupted run) lacks")
    corpus.add_argument("--overwrite", action="store_true", help="replace --output and an interrupted run's parts")
    corpus.add_argument("--skip-empty", action="store_true",
                        help="leave rows with an empty text without a summary, with a warning (default: stop "
                             "before summarizing, naming them)")
    corpus.add_argument("--pad-to-multiple-of", type=positive_int, metavar="TOKENS",
                        help="pad inputs to a multiple of TOKENS and batch documents of equal padded length "
                             "(default: the model's block size, which leaves each summary as the document gets "
                             "alone; the original evaluation padded every input to 3072)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text",
                        help="text: the summaries; jsonl: one JSON object per file with its summary, input tokens, "
                             "truncation and seconds (default: text)")


@dataclass(frozen=True)
class Document:
    name: str  # as given on the command line; "-" for standard input
    text: str

    @property
    def label(self) -> str:
        return "standard input" if self.name == STDIN else self.name


def run_summarize(args) -> int:
    if check_corpus_options(args):
        return run_summarize_corpus(args)
    documents = read_documents(args.files)
    quiet_library_warnings(args.debug)
    from .summarize import load_summarizer, resolve_model

    # First the cheap checks of the model (folder, Hub repo, remote code), then the imports and the loading.
    source = resolve_model(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    hide_weight_loading_bar()
    summarizer = load_summarizer(source, device=args.device, dtype=args.dtype, max_input_tokens=args.max_input_tokens)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summaries = summarizer.summarize(
        (document.text for document in documents), batch_size=args.batch_size, chunk=args.chunk,
        chunk_overlap=args.chunk_overlap, num_beams=args.num_beams, max_length=args.max_length,
    )
    several = len(documents) > 1
    with progress_bar(len(documents)) as bar:
        for document, summary in zip(documents, summaries):
            if summary.truncated:
                write_line(truncation_warning(document, summary, summarizer.max_input_tokens), sys.stderr)
            write_line(format_summary(document, summary, args.format, several), sys.stdout)
            bar.update()
    return 0


CORPUS_OPTIONS = ("text_column", "id_column", "output", "resume", "overwrite", "skip_empty", "pad_to_multiple_of")


def check_corpus_options(args) -> bool:
    """True for a corpus (--input); the corpus options without --input, or with FILEs, are mistakes."""
    if args.input is None:
        given = [name for name in CORPUS_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} applies to a corpus: give it with --input DATASET.")
        return False
    if args.files:
        raise CommandError("Give either FILEs or --input DATASET, not both.")
    return True


def run_summarize_corpus(args) -> int:
    from .corpus_run import CorpusJob, summarize_corpus

    job = CorpusJob(
        input=Path(args.input), text_column=args.text_column, id_column=args.id_column,
        output=Path(args.output) if args.output else None, resume=args.resume, overwrite=args.overwrite,
        skip_empty=args.skip_empty, batch_size=args.batch_size, pad_to_multiple_of=args.pad_to_multiple_of,
        max_input_tokens=args.max_input_tokens, chunk=args.chunk, chunk_overlap=args.chunk_overlap,
        threads=args.threads, device=args.device, dtype=args.dtype,
        generate_kwargs={"num_beams": args.num_beams, "max_length": args.max_length},
    )
    job.check()
    quiet_library_warnings(args.debug)
    from .summarize import resolve_model

    source = resolve_model(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    hide_weight_loading_bar()
    report = summarize_corpus(job, source)
    if report is not None:
        print(report.line(), file=sys.stderr)
    return 0


def read_documents(paths: list[str]) -> list[Document]:
    """Every input, read and checked before the model loads: a bad file fails the command at once."""
    return [read_document(path) for path in paths or [STDIN]]


def read_document(path: str) -> Document:
    if path == STDIN:
        if sys.stdin.isatty():
            print("Reading the document from standard input (end it with Ctrl-D)...", file=sys.stderr)
        return Document(STDIN, decode_text(sys.stdin.buffer.read(), "standard input"))
    file = Path(path)
    if not file.exists():
        raise CommandError(f"{path}: no such file. Check the path (give no FILE to read standard input).")
    if file.is_dir():
        raise CommandError(f"{path} is a folder: give the text files in it, e.g. {path.rstrip('/')}/*.txt.")
    return Document(path, decode_text(file.read_bytes(), path))


def decode_text(data: bytes, label: str) -> str:
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte order mark is no part of the document
    except UnicodeDecodeError as error:
        source = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "latin1"  # UTF-16 starts with its BOM
        raise CommandError(
            f"{label} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}): convert it "
            f"first, e.g. with `iconv -f {source} -t utf-8`."
        ) from None
    if not text.strip():
        raise CommandError(f"{label} is empty or only whitespace: there is nothing to summarize.")
    return text


def quiet_library_warnings(debug: bool) -> None:
    """Hides the libraries' notices (e.g. the block-sparse attention fallback for short inputs) unless --debug."""
    if debug:
        return
    # Read when transformers is first imported, which has not happened yet in this process.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in ("bigbird_pegasus_hub", "transformers_modules"):  # our model code, installed or as remote code
        logging.getLogger(name).setLevel(logging.ERROR)


def hide_weight_loading_bar() -> None:
    """transformers 5 draws a bar while it reads weights from disk: noise next to ours. Hub downloads keep theirs."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    downloads_had_bars = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # also turns off the Hub's bars
    if downloads_had_bars:
        enable_progress_bars()


def progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="Summarizing", unit="file", file=sys.stderr, disable=total < 2)


def write_line(text: str, stream) -> None:
    """Prints a line without tearing the progress bar (it is cleared and redrawn around the line)."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=stream):
        print(text, file=stream, flush=True)


def truncation_warning(document: Document, summary, max_input_tokens: int) -> str:
    if summary.windows > 1:
        return (f"warning: {document.label}: the joined summaries of its {summary.windows} windows were "
                f"{summary.truncated_tokens} tokens longer than the {max_input_tokens} the model reads; their end "
                "was cut for the final summary.")
    return (f"warning: {document.label} is {summary.input_tokens} tokens long but the model reads at most "
            f"{max_input_tokens}: its last {summary.truncated_tokens} tokens were cut (--chunk summarizes all of it).")


def format_summary(document: Document, summary, output_format: str, several: bool) -> str:
    if output_format == "jsonl":
        return json.dumps({"file": document.name, **summary.fields()}, ensure_ascii=False)
    return f"==> {document.label} <==\n{summary.text}\n" if several else summary.text


# ----------------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate(commands, common):
    parser = add_command(
        commands, "evaluate", common, run_evaluate,
        help="ROUGE of summaries against references, with bootstrap confidence intervals",
        description="Score predicted summaries against references as Google's Pegasus and BigBird evaluations do: "
                    "ROUGE-1, ROUGE-2\nand ROUGE-Lsum F1 (rouge_score, Porter stemming; ROUGE-Lsum splits sentences "
                    "at line breaks, and Pegasus'\n<n> is one), with percentile bootstrap confidence intervals over "
                    "the documents from a seeded generator.\n\nPREDICTIONS and REFERENCES are .jsonl, .csv or "
                    ".parquet files (the output of summarize --input is one), paired\nby --id-column; a file "
                    "without it is paired by row number. Without --references, PREDICTIONS holds both\ncolumns. "
                    "A short table goes to stdout; --output writes everything as JSON.",
        epilog=examples(
            "evaluate --predictions summaries.jsonl --references test.jsonl --reference-column abstract",
            "evaluate --predictions scored.parquet --prediction-column summary --reference-column abstract",
            "evaluate --predictions summaries.jsonl --references test.jsonl --reference-column abstract "
            "--output rouge.json --per-document --seed 1",
        ),
    )
    parser.add_argument("--predictions", required=True, metavar="FILE", help="the predicted summaries")
    parser.add_argument("--references", metavar="FILE", help="the reference summaries (default: --predictions)")
    parser.add_argument("--prediction-column", default="summary", metavar="COLUMN",
                        help="column of the predictions (default: summary)")
    parser.add_argument("--reference-column", default="reference", metavar="COLUMN",
                        help="column of the references (default: reference)")
    parser.add_argument("--id-column", default="id", metavar="COLUMN",
                        help="column that pairs predictions with references (default: id; else the row number)")
    parser.add_argument("--output", metavar="FILE.json", help="write the scores and settings as JSON")
    parser.add_argument("--per-document", action="store_true", help="add every document's scores to --output")
    parser.add_argument("--samples", type=positive_int, default=1000, metavar="N",
                        help="bootstrap resamples (default: 1000, as rouge_score)")
    parser.add_argument("--confidence", type=probability, default=0.95, metavar="P",
                        help="confidence of the intervals (default: 0.95)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="seed of the bootstrap's resampling (default: 0)")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.95), got {text}")
    return value


def run_evaluate(args) -> int:
    if args.per_document and not args.output:
        raise CommandError("--per-document adds the scores to the JSON file: give --output FILE.json.")
    from .evaluate import evaluate_files, write_json

    evaluation = evaluate_files(
        Path(args.predictions), Path(args.references) if args.references else None,
        prediction_column=args.prediction_column, reference_column=args.reference_column, id_column=args.id_column,
        samples=args.samples, confidence=args.confidence, seed=args.seed, per_document=args.per_document,
    )
    if args.output:
        write_json(evaluation, Path(args.output))
    print(evaluation.table())
    return 0


# ----------------------------------------------------------------------------------------------------------------
# convert-tf, upgrade, build, push


def add_convert_tf(commands, common):
    parser = add_command(
        commands, "convert-tf", common, run_convert_tf,
        help="convert an original TensorFlow checkpoint into a Hub repo",
        description="Convert one of Google's original TensorFlow BigBird-Pegasus checkpoints (no TensorFlow "
                    "needed) into a complete Hub repo folder:\nweights, config, generation config, tokenizer, "
                    "model code and card. Nothing is written if anything fails.\n\nHyperparameters use the original "
                    "code's names: a --preset, then the run's --params JSON, then --set overrides.",
        epilog=examples(
            "convert-tf arxiv/model.ckpt-300000 bigbird-pegasus-arxiv --preset arxiv --spm-model pegasus.model",
            "convert-tf run/model.ckpt-1000 my-repo --params params.json --spm-model pegasus.model "
            "--set beam_size=4",
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT_PREFIX",
                        help="checkpoint prefix such as dir/model.ckpt-300000 (or its folder)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    parser.add_argument("--params", metavar="PARAMS.json",
                        help="hyperparameters of the original run (needed unless --preset gives them)")
    parser.add_argument("--preset", choices=tuple(PRESETS), help="hyperparameters of a released checkpoint")
    parser.add_argument("--spm-model", metavar="FILE",
                        help="the checkpoint's sentencepiece .model (or a Pegasus tokenizer folder)")
    parser.add_argument("--scope", metavar="NAME", help="top variable scope (default: the params' scope, else pegasus)")
    parser.add_argument("--set", dest="overrides", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="override one hyperparameter; VALUE is JSON or a bare string "
                                                  "(repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def key_value(text: str) -> tuple[str, object]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string such as gelu


def run_convert_tf(args) -> int:
    require_new_folder(args.out_dir, args.overwrite)
    require_exists(args.params, "--params file")
    require_exists(args.spm_model, "--spm-model")
    from .conversion.tf_to_plugin import convert_tf_checkpoint

    out_dir = convert_tf_checkpoint(
        args.checkpoint, args.out_dir, params=args.params, preset=PRESETS.get(args.preset),
        overrides=dict(args.overrides), spm_model=args.spm_model, scope=args.scope, overwrite=args.overwrite,
    )
    print(f"Converted {args.checkpoint} into {out_dir}")
    print(next_steps(out_dir))
    return 0


def add_upgrade(commands, common):
    parser = add_command(
        commands, "upgrade", common, run_upgrade,
        help="turn a transformers built-in BigBirdPegasus model into a plugin repo",
        description="Turn a model of transformers' built-in BigBirdPegasus (a local folder or a Hub repo id, such "
                    "as google/bigbird-pegasus-large-arxiv) into a plugin repo folder with this package's code.\n"
                    "Nothing is written if anything fails.",
        epilog=examples(
            "upgrade google/bigbird-pegasus-large-arxiv bigbird-pegasus-arxiv",
            "upgrade ./old-model ./new-repo --overwrite",
        ),
    )
    parser.add_argument("src", metavar="SRC", help="built-in model folder or Hub repo id")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    parser.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub repo SRC")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run_upgrade(args) -> int:
    require_new_folder(args.out_dir, args.overwrite)
    from .conversion.upgrade import upgrade_builtin

    out_dir = upgrade_builtin(args.src, args.out_dir, revision=args.revision, overwrite=args.overwrite)
    print(f"Upgraded {args.src} into {out_dir}")
    print(next_steps(out_dir))
    return 0


def add_build(commands, common):
    parser = add_command(
        commands, "build", common, run_build,
        help="build a Hub repo folder from a config, weights and a tokenizer",
        description="Build a complete, loadable plugin repo folder: config.json with auto_map, model code, "
                    "model.safetensors,\ngeneration config (the paper's decoding settings), tokenizer and model "
                    "card. The folder is written atomically:\nnothing is left behind if anything fails.",
        epilog=examples(
            "build my-repo --config config.json --weights model.safetensors --tokenizer spiece.model",
            "build my-repo --config config.json --weights model.safetensors --tokenizer tokenizer-folder/ "
            "--description \"Fine-tuned on my papers\" --overwrite",
        ),
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    parser.add_argument("--config", required=True, metavar="CONFIG.json", help="the model's config.json")
    parser.add_argument("--weights", required=True, metavar="model.safetensors",
                        help="weights of a BigBirdPegasusForConditionalGeneration, in safetensors format")
    parser.add_argument("--tokenizer", required=True, metavar="DIR_OR_SPM",
                        help="a Pegasus tokenizer folder, or a sentencepiece .model file")
    parser.add_argument("--description", help="what the weights are, for the model card")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run_build(args) -> int:
    require_new_folder(args.out_dir, args.overwrite)
    require_exists(args.config, "--config")
    require_exists(args.weights, "--weights")
    require_exists(args.tokenizer, "--tokenizer")
    if Path(args.weights).suffix != ".safetensors":
        raise CommandError(f"--weights {args.weights} is not a .safetensors file: save the weights with "
                           "safetensors (model.save_pretrained does by default).")
    from safetensors import SafetensorError

    from .repo import build_repo

    try:
        out_dir = build_repo(args.out_dir, config=args.config, state_dict=args.weights, tokenizer=args.tokenizer,
                             description=args.description, overwrite=args.overwrite)
    except SafetensorError as error:
        raise CommandError(f"Cannot read the weights {args.weights} ({error}): is the file complete?") from error
    print(f"Built {out_dir}")
    print(next_steps(out_dir))
    return 0


def add_push(commands, common):
    parser = add_command(
        commands, "push", common, run_push,
        help="upload a repo folder to the Hugging Face Hub",
        description="Upload a repo folder (made by build, convert-tf or upgrade) to the Hub in one commit, "
                    "creating the repo if needed,\nand print the commit id and Python that loads exactly that "
                    "commit. Log in first with `hf auth login`, or set HF_TOKEN.",
        epilog=examples(
            "push my-repo my-user/bigbird-pegasus-arxiv",
            "push my-repo my-user/bigbird-pegasus-arxiv --private --message \"First release\"",
            "push my-repo my-org/bigbird-pegasus-arxiv --branch dev --create-pr",
        ),
    )
    parser.add_argument("folder", metavar="FOLDER", help="the repo folder to upload")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub repo, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--branch", help="commit to this branch, created from the default branch if needed")
    parser.add_argument("--message", default="Upload BigBirdPegasus plugin repo", help="the commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")


def run_push(args) -> int:
    require_exists(args.folder, "FOLDER")
    from .hub import PushError, push_repo

    try:
        result = push_repo(args.folder, args.repo_id, private=args.private, branch=args.branch,
                           commit_message=args.message, create_pr=args.create_pr, token=None)
    except PushError as error:
        raise CommandError(str(error)) from error
    print(f"Pushed {args.folder} to {result.repo_id}")
    print(f"commit: {result.commit_id}")
    print(f"url: {result.commit_url}")
    if result.pull_request_url:
        print(f"pull request: {result.pull_request_url}")
    print("\nLoad exactly this commit, code included:\n")
    print(result.loading_snippet().rstrip())
    print(f"\nor: {PROG} summarize --model {result.repo_id} --revision {result.commit_id} --trust-remote-code FILE")
    return 0


def require_exists(path: str | None, what: str) -> None:
    if path is not None and not Path(path).exists():
        raise CommandError(f"{what} {path} does not exist: check the path.")


def require_new_folder(out_dir: str, overwrite: bool) -> None:
    """Refuses before the long work what the repo builders would refuse after it."""
    if Path(out_dir).exists() and not overwrite:
        raise CommandError(f"{out_dir} already exists: choose another folder, or pass --overwrite to replace it.")


def next_steps(out_dir) -> str:
    return (f"Try it: {PROG} summarize --model {out_dir} FILE\n"
            f"Publish it: {PROG} push {out_dir} OWNER/NAME")


if __name__ == "__main__":
    sys.exit(main())
