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

from . import repo_files
from .atomic import Terminated, check_output_path, exit_on_termination
from .conversion.presets import PRESET_NAMES
from .summarize import DEFAULT_MODEL_DIR, DEVICES, DTYPES, SINGLE_THREAD_MAX_WIDTH

PROG = "bigbird-pegasus"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
STDIN = "-"
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
        with exit_on_termination():  # SIGTERM and SIGHUP unwind like Ctrl-C: temporary output is removed
            return args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as stopped:
        print(f"{PROG}: stopped by {stopped.signal_name}", file=sys.stderr)
        return stopped.code
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
    for add_command in (add_summarize, add_evaluate, add_convert_tf, add_upgrade, add_build, add_push, add_finetune,
                        add_export_onnx):
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


def int_at_least(minimum: int, why: str = ""):
    """An argparse type: a whole number >= `minimum` (`why` explains the minimum in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {text}")
        return value

    parse.__name__ = f"whole number >= {minimum}"  # argparse names the type in some messages
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
# The decoder's start token counts towards a summary's max_length: 2 is one generated token.
summary_length = int_at_least(2, " (the decoder's start token counts, so 2 allows one generated token)")


# ----------------------------------------------------------------------------------------------------------------
# summarize


SUMMARIZE_DESCRIPTION = f"""\
Summarize each FILE (standard input when no FILE is given, or for '-'). Summaries go to stdout; warnings and,
for several files, a progress bar go to stderr.

Default model: the bundled demo model ({DEFAULT_MODEL_DIR}), a tiny model trained only to copy a
document's lead (its title line and first sentence): it shows that everything works, it does not summarize.
For real summaries pass --model with a converted checkpoint, e.g. made by
  {PROG} upgrade google/bigbird-pegasus-large-arxiv arxiv-plugin   (then --model arxiv-plugin)
  {PROG} convert-tf CHECKPOINT_PREFIX arxiv-plugin --preset arxiv --spm-model pegasus.model

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
device and the main process merges the shares. Needs the corpus extra.

CPU threads: a model at most {SINGLE_THREAD_MAX_WIDTH} wide (d_model), such as the demo model, runs on one
thread, which is faster for its small matrix products; wider ones use torch's default (one per core), or the
cores shared out between the processes of `accelerate launch` / `torchrun`. --threads sets the number."""

DEMO_MODEL_NOTICE = (f"{PROG} summarize: note: no --model given: this is the bundled demo model, which copies a "
                     f"document's lead and does not summarize (`{PROG} summarize --help` says how to get a real one).")


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
                       help="local model folder or Hub repo id (default: the bundled demo model, which only copies "
                            "a document's lead)")
    model.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub repo; a commit pins its code")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a Hub repo's own Python code to run (needed when it ships code)")
    model.add_argument("--device", choices=DEVICES, default="auto",
                       help="where the model runs; auto: GPUs if any (device_map=auto), else the CPU (default: auto)")
    model.add_argument("--dtype", choices=DTYPES, default="auto",
                       help="weight precision; auto: as saved (default: auto)")
    model.add_argument("--threads", type=positive_int, metavar="N",
                       help=f"CPU threads per process (default: 1 for a model at most {SINGLE_THREAD_MAX_WIDTH} "
                            "wide, else one per core, shared out between the processes of a multi-process run)")
    generation = parser.add_argument_group("generation")
    generation.add_argument("--num-beams", type=positive_int, metavar="N",
                            help="beam search width (default: the model's generation config)")
    generation.add_argument("--max-length", type=summary_length, metavar="TOKENS",
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
                             "(default: the multiple the model pads to itself, its block size unless its config sets "
                             "pad_to_multiple_of, which leaves each summary as the document gets alone; the "
                             "original evaluation padded every input to 3072)")
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
    if args.chunk_overlap is not None and not args.chunk:
        raise CommandError("--chunk-overlap only applies with --chunk: add --chunk, or drop --chunk-overlap.")
    if check_corpus_options(args):
        return run_summarize_corpus(args)
    documents = read_documents(args.files)
    quiet_library_warnings(args.debug)
    from .summarize import load_summarizer, resolve_model, set_cpu_threads

    # First the cheap checks of the model (folder, Hub repo, remote code), then the imports and the loading.
    source = resolve_model(args.model, revision=args.revision, trust_remote_code=args.trust_remote_code)
    if args.model is None:
        print(DEMO_MODEL_NOTICE, file=sys.stderr)
    hide_weight_loading_bar()
    summarizer = load_summarizer(source, device=args.device, dtype=args.dtype, max_input_tokens=args.max_input_tokens)
    set_cpu_threads(summarizer.model, args.threads)
    summaries = summarizer.summarize(
        (document.text for document in documents), batch_size=args.batch_size, chunk=args.chunk,
        chunk_overlap=args.chunk_overlap, num_beams=args.num_beams, max_length=args.max_length,
    )
    several = len(documents) > 1
    with progress_bar(len(documents)) as bar:
        for document, summary in zip(documents, summaries):
            if summary.truncated:
                write_line(truncation_warning(document, summary, summarizer.max_input_tokens), sys.stderr)
            if not summary.text:
                write_line(f"warning: {document.label}: the model generated an empty summary; its weights may be "
                           "damaged (NaN) or untrained.", sys.stderr)
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
    from .corpus_run import CorpusJob, scan_job, summarize_corpus

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
    index = scan_job(job)  # bad input stops the run before the model loads
    if args.model is None and os.environ.get("RANK", "0") == "0":  # once, under torchrun or accelerate launch
        print(DEMO_MODEL_NOTICE, file=sys.stderr)
    hide_weight_loading_bar()
    report = summarize_corpus(job, source, index)
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--per-document", action="store_true", help="add every document's scores to --output")
    parser.add_argument("--samples", type=positive_int, default=1000, metavar="N",
                        help="bootstrap resamples (default: 1000, as rouge_score)")
    parser.add_argument("--confidence", type=probability, default=0.95, metavar="P",
                        help="confidence of the intervals (default: 0.95)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                        help="seed of the bootstrap's resampling (default: 0)")


def probability(text: str) -> float:
    value = number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (e.g. 0.95), got {text}")
    return value


def run_evaluate(args) -> int:
    if args.per_document and not args.output:
        raise CommandError("--per-document adds the scores to the JSON file: give --output FILE.json.")
    if args.output:
        check_output_path(args.output, overwrite=args.overwrite, folder=False)
    from .evaluate import evaluate_files, write_json

    evaluation = evaluate_files(
        Path(args.predictions), Path(args.references) if args.references else None,
        prediction_column=args.prediction_column, reference_column=args.reference_column, id_column=args.id_column,
        samples=args.samples, confidence=args.confidence, seed=args.seed, per_document=args.per_document,
    )
    if args.output:
        write_json(evaluation, Path(args.output), overwrite=args.overwrite)
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
                    "model code and card. Nothing is written if anything fails.\n\n"
                    "Hyperparameters use the original code's names (google-research/bigbird): a --preset, then the "
                    "run's --params JSON,\nthen --set overrides. The JSON is one flat object of those names, as the "
                    "original code's params dict:\n"
                    '  {"hidden_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16, '
                    '"intermediate_size": 4096,\n'
                    '   "vocab_size": 96103, "max_position_embeddings": 4096, "attention_type": "block_sparse", '
                    '"block_size": 64,\n'
                    '   "num_rand_blocks": 3, "hidden_act": "gelu", "use_bias": false, "rescale_embedding": true,\n'
                    '   "norm_type": "prenorm", "couple_encoder_decoder": false, "beam_size": 5, "alpha": 0.8, '
                    '"max_decoder_length": 256}\n'
                    "Other flags of the run (learning rate, TPU settings, ...) may be in it and are ignored.\n\n"
                    "The tokenizer is required: the sentencepiece model the checkpoint was trained with "
                    "(--spm-model; the released\nmodels use bigbird/vocab/pegasus.model).",
        epilog=examples(
            "convert-tf arxiv/model.ckpt-300000 bigbird-pegasus-arxiv --preset arxiv --spm-model pegasus.model",
            "convert-tf run/model.ckpt-1000 my-repo --params params.json --spm-model pegasus.model "
            "--set beam_size=4",
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT_PREFIX",
                        help="checkpoint prefix such as dir/model.ckpt-300000 (or its folder)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    parser.add_argument("--spm-model", metavar="FILE", required=True,
                        help="required: the checkpoint's sentencepiece .model (or a Pegasus tokenizer folder)")
    parser.add_argument("--params", metavar="PARAMS.json",
                        help="hyperparameters of the original run, a flat JSON object (see above; needed unless "
                             "--preset gives them)")
    parser.add_argument("--preset", choices=tuple(PRESET_NAMES),
                        help=f"hyperparameters of a released checkpoint: {', '.join(PRESET_NAMES)} "
                             "(google/bigbird-pegasus-large-NAME)")
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
    require_checkpoint(args.checkpoint)
    repo_files.check_tokenizer_source(args.spm_model)
    from .conversion.params import checked_params  # no torch: the hyperparameters are checked at once

    checked_params(args.params, preset=args.preset, overrides=dict(args.overrides))
    from .conversion.tf_to_plugin import convert_tf_checkpoint

    out_dir = convert_tf_checkpoint(
        args.checkpoint, args.out_dir, params=args.params, preset=args.preset,
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
            "upgrade ./weights-only-folder ./new-repo --tokenizer pegasus.model",
        ),
    )
    parser.add_argument("src", metavar="SRC", help="built-in model folder or Hub repo id")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    parser.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub repo SRC")
    parser.add_argument("--tokenizer", metavar="DIR_OR_SPM",
                        help="a Pegasus tokenizer folder or sentencepiece .model file, for a SRC without tokenizer "
                             "files (default: SRC's tokenizer)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run_upgrade(args) -> int:
    require_new_folder(args.out_dir, args.overwrite)
    require_exists(args.tokenizer, "--tokenizer")
    if Path(args.src).is_dir():
        if args.revision is not None:
            raise CommandError(f"{args.src} is a local folder: --revision only applies to Hub repo ids. Drop it.")
        repo_files.check_builtin_folder(args.src, tokenizer_given=args.tokenizer is not None)
    from .conversion.upgrade import upgrade_builtin

    out_dir = upgrade_builtin(args.src, args.out_dir, revision=args.revision, tokenizer=args.tokenizer,
                              overwrite=args.overwrite)
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
    if Path(args.config).is_dir():
        raise CommandError(f"--config {args.config} is a folder: give its config.json file.")
    repo_files.read_model_config(args.config, "--config")
    if Path(args.weights).suffix != ".safetensors":
        raise CommandError(f"--weights {args.weights} is not a .safetensors file: save the weights with "
                           "safetensors (model.save_pretrained does by default).")
    repo_files.check_safetensors_file(args.weights)
    repo_files.check_tokenizer_source(args.tokenizer)
    from .repo import build_repo

    out_dir = build_repo(args.out_dir, config=args.config, state_dict=args.weights, tokenizer=args.tokenizer,
                         description=args.description, overwrite=args.overwrite)
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
    repo_files.check_repo(args.folder)  # complete, and referencing only its own code: before any upload
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


EXPORT_ONNX_DESCRIPTION = """\
Export a model folder (made by build, convert-tf or upgrade) to ONNX, with its real block-sparse attention and
original random blocks. OUT_DIR gets encoder_model.onnx, decoder_model.onnx and decoder_with_past_model.onnx
(each with its weights in <file>_data), config.json, generation_config.json and the tokenizer: the layout that
Optimum's ORTModelForSeq2SeqLM loads (transformers 4.x), as does this package's own ONNX Runtime runner
(transformers 4.57 and 5.x). One encoder graph serves every length: inputs are padded to a multiple of 1024
tokens, where the original code's random blocks are slices of one table (models off that grid pad every input to
max_position_embeddings inside the graph). Nothing is written if anything fails.

Needs the onnx extra: pip install "bigbird-pegasus-hub[onnx]"."""


def add_export_onnx(commands, common):
    from .onnx_export import DEFAULT_OPSET, DTYPES, MAX_OPSET, MIN_OPSET

    parser = add_command(
        commands, "export-onnx", common, run_export_onnx,
        help="export a model folder to ONNX (ONNX Runtime, Optimum)",
        description=EXPORT_ONNX_DESCRIPTION,
        epilog=examples(
            "export-onnx my-repo my-repo-onnx",
            "export-onnx my-repo my-repo-onnx-fp16 --dtype fp16 --opset 22 --overwrite",
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="model folder (made by build, convert-tf or upgrade)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="precision of weights and activations; fp16 is for GPUs (default: fp32)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run_export_onnx(args) -> int:
    from .onnx_export import check_export_request, export_onnx, quiet_exporter

    # The cheap checks first (options, folders, packages): a mistake is reported before torch is imported.
    check_export_request(Path(args.model), Path(args.out_dir), dtype=args.dtype, opset=args.opset,
                         overwrite=args.overwrite)
    quiet_library_warnings(args.debug)
    hide_weight_loading_bar()
    with quiet_exporter(args.debug):
        out_dir = export_onnx(args.model, args.out_dir, dtype=args.dtype, opset=args.opset, overwrite=args.overwrite)
    print(f"Exported {args.model} to ONNX in {out_dir}")
    print("Run it on ONNX Runtime (transformers 4.57 or 5.x):\n"
          "  from bigbird_pegasus_hub.onnx_model import OnnxBigBirdPegasusForConditionalGeneration\n"
          f"  model = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained({str(out_dir)!r})\n"
          "or with Optimum (optimum-onnx, transformers < 4.58): ORTModelForSeq2SeqLM.from_pretrained(the same folder)")


# ----------------------------------------------------------------------------------------------------------------
# finetune


FINETUNE_DESCRIPTION = """\
Fine-tune MODEL (a plugin repo folder, or a Hub repo id) on your documents and their summaries, and write the
result to OUT_DIR as a complete plugin repo (tokenizer and generation config included) that `summarize --model
OUT_DIR` and `push` accept. OUT_DIR appears only when training is done.

The corpus: a JSON Lines (.jsonl), CSV (.csv) or Parquet (.parquet) file with a document column and a summary
column (--text-column, default 'document'; --summary-column, default 'summary'). With --validation, the model
summarizes the validation documents at every evaluation and reports ROUGE-1, ROUGE-2 and ROUGE-Lsum (rouge_score,
with stemming, as Google's evaluation).

Training: transformers' Seq2SeqTrainer, gradient checkpointing on (--no-gradient-checkpointing turns it off), --bf16
mixed precision, --lora for PEFT LoRA on the attention projections (merged into OUT_DIR's weights, or saved alone
with --save-adapter). Checkpoints go to OUT_DIR-checkpoints (--checkpoint-dir) every --save-steps steps; --resume
continues from the last one. They are removed once OUT_DIR is written, unless --keep-checkpoints.

Several GPUs: accelerate launch --multi_gpu --num_processes N -m bigbird_pegasus_hub.cli finetune ...
(--batch-size is per process).

Needs the `train` extra: pip install "bigbird-pegasus-hub[train]"."""


def add_finetune(commands, common):
    from .finetune import DEFAULT_LEARNING_RATE, DEFAULT_LORA_LEARNING_RATE, DEFAULT_SUMMARY_COLUMN, DEFAULT_TEXT_COLUMN

    parser = add_command(
        commands, "finetune", common, run_finetune,
        help="fine-tune a model on your documents and summaries",
        description=FINETUNE_DESCRIPTION,
        epilog=examples(
            "finetune hub_repo my-model --train train.jsonl --validation val.jsonl",
            "finetune ./arxiv-plugin my-model --train papers.parquet --text-column article --summary-column abstract "
            "--batch-size 2 --gradient-accumulation 8 --bf16",
            "finetune ./arxiv-plugin my-model --train train.csv --lora --lora-rank 32 --max-steps 2000",
            "finetune ./arxiv-plugin my-model --train train.jsonl --resume",
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="plugin repo folder or Hub repo id to start from")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="repo folder to create")
    data = parser.add_argument_group("data")
    data.add_argument("--train", dest="train_file", required=True, metavar="FILE",
                      help="training corpus: .jsonl, .csv or .parquet")
    data.add_argument("--validation", dest="validation_file", metavar="FILE",
                      help="validation corpus (same format): loss and ROUGE at every evaluation")
    data.add_argument("--text-column", default=DEFAULT_TEXT_COLUMN, metavar="NAME",
                      help=f"column of the documents (default: {DEFAULT_TEXT_COLUMN})")
    data.add_argument("--summary-column", default=DEFAULT_SUMMARY_COLUMN, metavar="NAME",
                      help=f"column of the summaries (default: {DEFAULT_SUMMARY_COLUMN})")
    data.add_argument("--max-source-length", type=positive_int, metavar="TOKENS",
                      help="longer documents are cut (default: as many tokens as the model reads)")
    data.add_argument("--max-target-length", type=positive_int, default=256, metavar="TOKENS",
                      help="longer summaries are cut; also the longest validation summary (default: 256)")
    model = parser.add_argument_group("model")
    model.add_argument("--revision", metavar="REV", help="branch, tag or commit of a Hub repo MODEL")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="allow a Hub repo's own Python code to run (needed when it ships code)")
    training = parser.add_argument_group("training")
    training.add_argument("--learning-rate", type=positive_float, metavar="LR",
                          help=f"peak learning rate, decaying linearly (default: {DEFAULT_LEARNING_RATE:g}, with "
                               f"--lora {DEFAULT_LORA_LEARNING_RATE:g})")
    length = training.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_float, default=3.0, metavar="N",
                        help="passes over the training corpus (default: 3)")
    length.add_argument("--max-steps", type=positive_int, metavar="N", help="optimizer steps, instead of --epochs")
    training.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                          help="documents per step and process (default: 1)")
    training.add_argument("--gradient-accumulation", type=positive_int, default=1, metavar="N",
                          help="batches per optimizer step (default: 1)")
    training.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                          help="keep activations instead of recomputing them: faster, needs more memory")
    training.add_argument("--bf16", action="store_true",
                          help="bfloat16 mixed precision (GPUs since Ampere, recent CPUs)")
    training.add_argument("--lora", action="store_true",
                          help="train PEFT LoRA adapters on the attention projections instead of all weights")
    training.add_argument("--lora-rank", type=positive_int, default=16, metavar="R",
                          help="rank of the LoRA matrices; alpha is 2 * R (default: 16)")
    training.add_argument("--save-adapter", action="store_true",
                          help="with --lora: write only the adapter (and tokenizer) to OUT_DIR, not a merged model")
    training.add_argument("--seed", type=non_negative_int, default=42, help="random seed (default: 42)")
    evaluation = parser.add_argument_group("checkpoints and evaluation")
    evaluation.add_argument("--checkpoint-dir", metavar="DIR",
                            help="where checkpoints go (default: OUT_DIR-checkpoints)")
    evaluation.add_argument("--save-steps", type=positive_int, default=500, metavar="N",
                            help="save a checkpoint every N steps (default: 500)")
    evaluation.add_argument("--eval-steps", type=positive_int, metavar="N",
                            help="evaluate every N steps and after the last (default: --save-steps)")
    evaluation.add_argument("--logging-steps", type=positive_int, default=25, metavar="N",
                            help="print the training loss every N steps (default: 25)")
    evaluation.add_argument("--num-beams", type=positive_int, metavar="N",
                            help="beam width of the validation summaries (default: the model's generation config)")
    evaluation.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    evaluation.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after success")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT_DIR if it exists (and start over, without --resume)")


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def run_finetune(args) -> int:
    from dataclasses import fields

    from .finetune import FinetuneOptions, check_options, finetune, last_checkpoint

    options = FinetuneOptions(**{option.name: getattr(args, option.name) for option in fields(FinetuneOptions)})
    check_options(options)
    quiet_library_warnings(args.debug)
    try:
        result = finetune(options, notify=lambda line: write_line(line, sys.stderr))
    except (KeyboardInterrupt, Terminated):  # Ctrl-C, or SIGTERM/SIGHUP (which `accelerate launch` sends its workers)
        if last_checkpoint(options.checkpoint_dir) is not None:
            write_line(f"{PROG} finetune: the checkpoints in {options.checkpoint_dir} stay: run the same command with "
                       "--resume to continue.", sys.stderr)
        raise
    if result.main_process:  # the other processes of a multi-process run write nothing
        print(result.report())
        print(f"Saved the LoRA adapter to {options.out_dir}" if options.save_adapter else
              f"Saved {options.out_dir}\n{next_steps(options.out_dir)}")
    return 0


def require_exists(path: str | None, what: str) -> None:
    if path is not None and not Path(path).exists():
        raise CommandError(f"{what} {path} does not exist: check the path.")


def require_new_folder(out_dir: str, overwrite: bool) -> None:
    """Refuses before the long work what the repo builders would refuse after it."""
    if Path(out_dir).exists() and not overwrite:
        raise CommandError(f"{out_dir} already exists: choose another folder, or pass --overwrite to replace it.")
    check_output_path(out_dir, overwrite=overwrite)  # a parent that is a file; a file where the folder would go


def require_checkpoint(prefix: str) -> None:
    path = Path(prefix)
    if not (path.exists() or path.with_name(f"{path.name}.index").is_file()):
        raise CommandError(f"No checkpoint at {prefix}: neither {prefix}.index nor a folder of that name exists. "
                           "Pass a checkpoint prefix such as dir/model.ckpt-300000, or its folder.")


def next_steps(out_dir) -> str:
    return (f"Try it: {PROG} summarize --model {out_dir} FILE\n"
            f"Publish it: {PROG} push {out_dir} OWNER/NAME")


if __name__ == "__main__":
    sys.exit(main())
