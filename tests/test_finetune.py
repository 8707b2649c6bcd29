"""`bigbird-pegasus finetune`, run as a user runs it: the console script in subprocesses, on tiny models.

The runs (module fixture `runs`, started side by side):
  * full: a tiny random model, fine-tuned on a learnable task (the summary is the document's first three words),
    killed with SIGTERM after its first checkpoint, then continued with --resume;
  * lora: LoRA with bf16 autocast on the bundled demo model (a trained lead copier), read from the test Hub as a
    repo with code (--trust-remote-code), merged into a plugin repo;
  * adapter: the same with --save-adapter, in two processes under `accelerate launch` (CPU, gloo).
Then the in-process checks of LoRA with gradient checkpointing, and the bad-input cases through the console script.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from test_cli import Run, assert_fails_clearly, assert_succeeds, finish, run_side_by_side, start
from tiny import enable_checkpointing, tiny_config, tiny_repo
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from bigbird_pegasus_hub.finetune import LORA_TARGET_MODULES, RougeMetrics, with_lora
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.repo import check_repo
from bigbird_pegasus_hub.rouge import document_scores, mean_scores
from bigbird_pegasus_hub.summarize import DEFAULT_MODEL_DIR
from bigbird_pegasus_hub.tokenizer import bundled_corpus_path

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models; OpenMP threads only spin when test processes share the CPUs
FAST = ("--batch-size", "4", "--logging-steps", "5", "--num-beams", "1", "--max-source-length", "256",
        "--max-target-length", "16", "--learning-rate", "1e-2")
TRAINED = re.compile(r"Trained (\d+) steps on (\d+) documents(?: in (\d+) processes)?(?:, resumed from "
                     r"(checkpoint-\d+))?: training loss ([\d.]+) \(step 1\) -> ([\d.]+) \(step (\d+)\)")
VALIDATION = re.compile(r"Validation \((\d+) documents\): validation loss ([\d.]+), ROUGE-1 ([\d.]+), "
                        r"ROUGE-2 ([\d.]+), ROUGE-Lsum ([\d.]+)")
BAD_JSON = '{"document": "A text.", "summary": "A."}\n{"document": "Another text.", "summary": \n'


# ----------------------------------------------------------------------------------------------------------------
# The corpus and the runs.


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Documents of three paragraphs (about 300 tokens: block-sparse attention, line breaks as <n>); the summary is
    the first three words, which a few steps teach."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [line.strip() for line in bundled_corpus_path().read_text().splitlines() if len(line.split()) > 40]
    documents = ["\n".join(lines[start : start + 3]) for start in range(0, 108, 3)]
    rows = [{"document": document, "summary": " ".join(document.split()[:3])} for document in documents]
    return {"train": write_jsonl(folder / "train.jsonl", rows[:32]),
            "validation": write_jsonl(folder / "validation.jsonl", rows[32:36])}


@pytest.fixture(scope="module")
def demo_on_hub(hub_server) -> tuple[str, str]:
    """The bundled demo model on the test Hub, with its code: (repo id, commit)."""
    from bigbird_pegasus_hub.hub import push_repo

    result = push_repo(DEFAULT_MODEL_DIR, "test-user/finetune-demo")
    return result.repo_id, result.commit_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(processes: int) -> tuple:
    """`accelerate launch` of the CLI module over `processes` CPU processes (gloo), on a port of its own."""
    return (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(free_port()), "-m", "bigbird_pegasus_hub.cli")


def interrupt_after_first_checkpoint(process, checkpoint_dir: Path, timeout: float = 600):
    """SIGTERM once a checkpoint is complete (its trainer state, written last, whole)."""
    from bigbird_pegasus_hub.finetune import last_checkpoint

    deadline = time.monotonic() + timeout
    while last_checkpoint(checkpoint_dir) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    return finish(process)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer_dir, corpus, demo_on_hub):
    folder = tmp_path_factory.mktemp("finetune")
    base = tiny_repo(folder / "base", tokenizer_dir, max_position_embeddings=512)
    repo_id, commit = demo_on_hub
    data = ("--train", corpus["train"], "--validation", corpus["validation"], *FAST)
    out = {name: folder / name / "out" for name in ("full", "lora", "adapter")}  # a folder each: no run sees another's
    for path in out.values():
        path.parent.mkdir()
    full = (base, out["full"], *data, "--max-steps", "40", "--save-steps", "10", "--eval-steps", "20")
    lora = (repo_id, out["lora"], "--trust-remote-code", "--lora", "--lora-rank", "8", "--bf16", *data,
            "--max-steps", "30")
    adapter = (repo_id, out["adapter"], "--trust-remote-code", "--lora", "--save-adapter", "--train", corpus["train"],
               *FAST, "--batch-size", "2", "--max-steps", "15")
    # CUDA_VISIBLE_DEVICES: the two processes share the CPU even where a GPU is visible.
    cpu_only = {**ONE_THREAD, "CUDA_VISIBLE_DEVICES": ""}
    interrupted = start(Run(("finetune", *full), env=ONE_THREAD))
    others = {"lora": start(Run(("finetune", *lora), env=ONE_THREAD)),
              "adapter": start(Run(("finetune", *adapter), env=cpu_only, program=accelerate_launch(2)))}
    results = {"interrupted": interrupt_after_first_checkpoint(interrupted, folder / "full" / "out-checkpoints")}
    after_interrupt = sorted(path.name for path in (folder / "full").iterdir())
    results["full"] = finish(start(Run(("finetune", *full, "--resume"), env=ONE_THREAD)))
    results |= {name: finish(process) for name, process in others.items()}
    return {"folder": folder, "base": base, "out": out, "results": results, "repo_id": repo_id, "commit": commit,
            "after_interrupt": after_interrupt,
            "train_documents": [json.loads(line)["document"] for line in corpus["train"].read_text().splitlines()],
            "documents": [json.loads(line)["document"] for line in corpus["validation"].read_text().splitlines()]}


def report(result) -> tuple[re.Match, re.Match | None]:
    assert_succeeds(result)
    trained = TRAINED.search(result.stdout)
    assert trained, result.stdout
    return trained, VALIDATION.search(result.stdout)


# ----------------------------------------------------------------------------------------------------------------
# A full fine-tune, interrupted and resumed.


def test_interrupted_run_leaves_its_checkpoint_and_no_output(runs):
    result = runs["results"]["interrupted"]
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "stopped by SIGTERM" in result.stderr and "--resume" in result.stderr
    assert runs["after_interrupt"] == ["out-checkpoints"]  # no OUT_DIR, no temporary folder: only the checkpoints


def test_resumed_run_learned_and_reports_rouge(runs):
    trained, validation = report(runs["results"]["full"])
    steps, documents, _, resumed_from, first_loss, last_loss, last_step = trained.groups()
    assert (int(steps), int(documents), int(last_step)) == (40, 32, 40)
    assert resumed_from is not None and int(resumed_from.split("-")[1]) in range(10, 40, 10)
    assert float(last_loss) < 0.75 * float(first_loss)  # about 7.0 -> 3.7: it learned
    assert validation and int(validation[1]) == 4
    assert all(0 <= float(score) <= 100 for score in validation.groups()[2:])
    assert "step 20/40: validation loss" in runs["results"]["full"].stderr  # --eval-steps, with ROUGE
    assert "Warning" not in runs["results"]["full"].stderr  # e.g. transformers 5's gradient checkpointing rename


def test_output_is_a_complete_repo_and_checkpoints_are_gone(runs):
    out = runs["out"]["full"]
    check_repo(out)
    assert sorted(path.name for path in out.parent.iterdir()) == ["out"]  # checkpoints removed after success
    assert json.loads((out / "config.json").read_text())["use_cache"] is True  # the Trainer turned it off
    card = (out / "README.md").read_text()
    assert f"Fine-tuned from `{runs['base']}`" in card and "ROUGE-Lsum" in card
    assert sorted(path.name for path in out.iterdir() if path.name.startswith("token")) == \
        sorted(path.name for path in runs["base"].iterdir() if path.name.startswith("token"))


def summary_batch(tokenizer, documents: list[str]) -> dict:
    """Documents and their three-word summaries as a model batch (padding ignored by the loss)."""
    batch = tokenizer(documents, text_target=[" ".join(text.split()[:3]) for text in documents], truncation=True,
                      max_length=256, padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    return batch


def test_output_loads_with_auto_classes_and_summarizes(runs):
    out = runs["out"]["full"]
    model = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules")  # the repo's own code
    ours = BigBirdPegasusForConditionalGeneration.from_pretrained(out).eval()
    base = BigBirdPegasusForConditionalGeneration.from_pretrained(runs["base"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = summary_batch(tokenizer, runs["train_documents"][:8])
    with torch.no_grad():
        assert model(**batch).loss < 0.8 * base(**batch).loss  # the trained weights (about 3.7 against 7.0)
        inputs = {name: batch[name][:1] for name in ("input_ids", "attention_mask")}
        ids = model.generate(**inputs, max_new_tokens=8, num_beams=1)
        assert ids.shape[1] > 2  # tokens between the start and the end
        assert torch.equal(ids, ours.generate(**inputs, max_new_tokens=8, num_beams=1))


def test_summarize_and_push_accept_the_lora_output(runs, tmp_path, hub_server):
    from bigbird_pegasus_hub.hub import push_repo

    document = tmp_path / "document.txt"
    document.write_text(runs["documents"][0], encoding="utf-8")
    result = finish(start(Run(("summarize", "--model", runs["out"]["lora"], "--num-beams", "1", "--max-length", "16",
                               document), env=ONE_THREAD)))
    assert_succeeds(result)
    # LoRA taught the lead copier (which copies up to --max-length) to stop after about three words.
    summary = result.stdout.strip()
    assert summary.startswith(" ".join(runs["documents"][0].split()[:3])) and len(summary.split()) <= 6, summary
    assert len(push_repo(runs["out"]["lora"], "test-user/finetuned-lora").commit_id) == 40


# ----------------------------------------------------------------------------------------------------------------
# LoRA: merged into a plugin repo; the adapter alone, trained in two processes.


def test_lora_learns_and_reports_rouge(runs):
    trained, validation = report(runs["results"]["lora"])
    assert float(trained[6]) < 0.5 * float(trained[5])  # about 2.0 -> 0.2
    assert validation and float(validation[3]) > 50  # ROUGE-1 of held-out documents


def test_merged_lora_changes_exactly_the_attention_projections(runs):
    merged = AutoModelForSeq2SeqLM.from_pretrained(runs["out"]["lora"], trust_remote_code=True).state_dict()
    base = BigBirdPegasusForConditionalGeneration.from_pretrained(DEFAULT_MODEL_DIR).state_dict()
    assert merged.keys() == base.keys()  # no LoRA leftovers: a plain plugin repo
    projections = {name for name in base if name.endswith(".weight") and name.split(".")[-2] in LORA_TARGET_MODULES}
    assert len(projections) == 2 * 4 + 2 * 8  # encoder: query/key/value/output; decoder: self and cross q/k/v/out
    changed = {name for name in base if not torch.equal(merged[name], base[name])}
    assert changed == projections


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft 0.21's call
def test_adapter_trained_in_two_processes_loads_onto_its_base(runs):
    from peft import PeftModel

    trained, _ = report(runs["results"]["adapter"])
    assert trained[3] == "2"  # processes
    out = runs["out"]["adapter"]
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {
        path.name for path in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == (runs["repo_id"], runs["commit"])
    base = AutoModelForSeq2SeqLM.from_pretrained(runs["repo_id"], revision=runs["commit"], trust_remote_code=True)
    batch = summary_batch(AutoTokenizer.from_pretrained(out), runs["documents"])
    with torch.no_grad():
        base_loss = base.eval()(**batch).loss
        adapted = PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
        assert adapted(**batch).loss < 0.8 * base_loss  # the trained adapter, not a fresh one


# ----------------------------------------------------------------------------------------------------------------
# LoRA with gradient checkpointing (in-process): same gradients, every matrix trains.


def lora_training(checkpointing: bool, steps: int = 3) -> dict:
    """A few AdamW steps of LoRA on a tiny block-sparse model (dropout 0): the LoRA matrices before, their first
    gradients, after; and how often encoder layer 0 ran forward."""
    torch.manual_seed(0)
    model = with_lora(BigBirdPegasusForConditionalGeneration(tiny_config()), rank=4, dropout=0.0)
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    calls = []  # the block-sparse attention of encoder layer 0 (inside the checkpointed layer)
    model.base_model.model.model.encoder.layers[0].self_attn.register_forward_hook(lambda *args: calls.append(1))
    generator = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(3, 99, (2, 320), generator=generator),
             "labels": torch.randint(3, 99, (2, 12), generator=generator)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["attention_mask"][1, -40:] = 0
    lora = {name: param for name, param in model.named_parameters() if "lora_" in name}
    assert lora and all(param.requires_grad for param in lora.values())
    assert {name for name, param in model.named_parameters() if param.requires_grad} == set(lora)
    before = {name: param.detach().clone() for name, param in lora.items()}
    optimizer = torch.optim.AdamW(lora.values(), lr=1e-2)
    for step in range(steps):
        model(**batch).loss.backward()
        if step == 0:
            first_gradients = {name: param.grad.clone() for name, param in lora.items()}
        optimizer.step()
        optimizer.zero_grad()
    after = {name: param.detach().clone() for name, param in lora.items()}
    return {"before": before, "gradients": first_gradients, "after": after, "forward_calls": len(calls)}


@pytest.fixture(scope="module")
def lora_runs() -> dict[bool, dict]:
    return {checkpointing: lora_training(checkpointing) for checkpointing in (False, True)}


def test_checkpointing_recomputes_the_layers(lora_runs):
    assert lora_runs[False]["forward_calls"] == 3
    assert lora_runs[True]["forward_calls"] == 6  # forward, and again in backward


def test_lora_covers_every_attention_projection(lora_runs):
    modules = {name.rsplit(".lora_", 1)[0] for name in lora_runs[True]["before"]}
    config = tiny_config()
    assert len(modules) == 4 * config.encoder_layers + 8 * config.decoder_layers
    assert {module.rsplit(".", 1)[1] for module in modules} == set(LORA_TARGET_MODULES)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_first_step_gradients_reach_only_b(lora_runs, checkpointing):
    for name, gradient in lora_runs[checkpointing]["gradients"].items():
        if "lora_A" in name:
            assert torch.count_nonzero(gradient) == 0, name  # B is zero at the start, so A's gradient is too
        else:
            assert torch.count_nonzero(gradient) > 0, name


def test_checkpointing_gives_the_same_gradients(lora_runs):
    plain, checkpointed = lora_runs[False], lora_runs[True]
    for name in plain["gradients"]:
        torch.testing.assert_close(checkpointed["before"][name], plain["before"][name], rtol=0, atol=0)
        torch.testing.assert_close(checkpointed["gradients"][name], plain["gradients"][name], rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(checkpointed["after"][name], plain["after"][name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_every_lora_matrix_moves(lora_runs, checkpointing):
    run = lora_runs[checkpointing]
    assert {name.split(".lora_")[1].split(".")[0] for name in run["before"]} == {"A", "B"}
    for name, before in run["before"].items():
        assert not torch.equal(run["after"][name], before), f"{name} did not move"


def test_enabling_checkpointing_does_not_warn():
    import warnings

    from bigbird_pegasus_hub.finetune import FinetuneOptions, training_arguments

    from accelerate.state import PartialState

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = BigBirdPegasusForConditionalGeneration(tiny_config())
        enable_checkpointing(model)
        try:
            arguments = training_arguments(FinetuneOptions("m", "out", "train.jsonl"), model.config, evaluate=True)
        finally:
            PartialState._reset_state()  # the arguments set up accelerate's process-wide state: leave none behind
    assert model.model.encoder.layers[0].gradient_checkpointing
    name = "activation_checkpointing" if hasattr(arguments, "activation_checkpointing") else "gradient_checkpointing"
    assert getattr(arguments, name) is True and getattr(arguments, f"{name}_kwargs") == {"use_reentrant": False}


def test_rouge_metrics_decode_the_generated_ids(tokenizer_dir):
    import numpy as np
    from transformers.trainer_utils import EvalPrediction

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    references = ["The river runs.\nIt floods.", "Rain falls on the hills."]
    generated = ["The river ran. <n> It flooded in spring.", "Snow."]
    rows = tokenizer(generated)["input_ids"]
    ids = np.full((2, max(map(len, rows))), -100)  # the Trainer pads generated batches with -100
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = tokens
    scores = RougeMetrics(tokenizer, references)(EvalPrediction(predictions=ids, label_ids=ids))
    expected = mean_scores(document_scores(generated, references))
    assert scores == pytest.approx({name: 100 * value for name, value in expected.items()})
    assert 0 < scores["rougeLsum"] < 100


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, nothing written.


def bad_inputs(folder: Path, base: Path, train: Path) -> dict[str, tuple[tuple, dict, list[str]]]:
    """name -> (command line, environment, fragments of the error line)."""
    (folder / "wrong-columns.jsonl").write_text('{"text": "A text.", "summary": "A."}\n')
    (folder / "empty.jsonl").write_text("\n  \n")
    (folder / "empty-row.jsonl").write_text('{"document": "A text.", "summary": "A."}\n'
                                            '{"document": "  ", "summary": "B."}\n')
    (folder / "latin1.csv").write_bytes("document,summary\nCaf\xe9 cr\xe8me,Caf\xe9\n".encode("latin-1"))
    (folder / "numbers.csv").write_text("document,summary\nA text.,1\nAnother.,2\n")
    (folder / "broken.jsonl").write_text(BAD_JSON)
    (folder / "notes.txt").write_text("document")
    (folder / "exists").mkdir()
    (folder / "old-checkpoints" / "checkpoint-5").mkdir(parents=True)
    (folder / "old-checkpoints" / "checkpoint-5" / "trainer_state.json").write_text("{}")
    no_peft = folder / "no-peft"
    no_peft.mkdir()
    (no_peft / "sitecustomize.py").write_text("import sys\nsys.modules['peft'] = None  # as if not installed\n")

    def case(train_file, *extra, env=None, fragments):
        return ((base, folder / "out", "--train", train_file, *extra), env or {}, fragments)

    return {
        "missing-column": case(folder / "wrong-columns.jsonl", fragments=[
            "has no column 'document' (columns found: 'text', 'summary')", "--text-column"]),
        "missing-summary-column": case(train, "--summary-column", "abstract", fragments=["no column 'abstract'"]),
        "empty-file": case(folder / "empty.jsonl", fragments=["empty.jsonl is empty"]),
        "empty-document": case(folder / "empty-row.jsonl", fragments=[
            "row 2 has an empty document (column 'document')"]),
        "not-utf8": case(folder / "latin1.csv", fragments=["latin1.csv is not UTF-8 text (byte 0xe9", "iconv"]),
        "numbers": case(folder / "numbers.csv", fragments=["row 1: the summary (column 'summary') is not text"]),
        "broken-json": case(folder / "broken.jsonl", fragments=[
            "broken.jsonl cannot be read as JSON Lines: line 2 is not valid JSON (Expecting value, column 42)"]),
        "unknown-format": case(folder / "notes.txt", fragments=["unknown format '.txt'", ".jsonl"]),
        "missing-file": case(folder / "nowhere.jsonl", fragments=["--train", "nowhere.jsonl does not exist"]),
        "lora-without-peft": case(train, "--lora", env={"PYTHONPATH": str(no_peft)}, fragments=[
            "--lora needs the peft package", 'pip install "bigbird-pegasus-hub[train]"']),
        "output-exists": ((base, folder / "exists", "--train", train), {}, ["exists already exists", "--overwrite"]),
        "earlier-checkpoints": case(train, "--checkpoint-dir", folder / "old-checkpoints", fragments=[
            "holds the checkpoints of an earlier run", "--resume"]),
        "resume-without-checkpoint": case(train, "--resume", fragments=["--resume, but", "holds no checkpoint"]),
        "learning-rate": case(train, "--learning-rate", "0", fragments=["--learning-rate: must be a number above 0"]),
        "batch-size": case(train, "--batch-size", "0", fragments=["--batch-size: must be at least 1"]),
        "epochs-and-steps": case(train, "--epochs", "2", "--max-steps", "5", fragments=["not allowed with"]),
        "adapter-without-lora": case(train, "--save-adapter", fragments=["--save-adapter", "add --lora"]),
        "same-columns": case(train, "--summary-column", "document", fragments=["need a column each"]),
        "source-too-long": case(train, "--max-source-length", "100000", fragments=[
            "--max-source-length 100000 is more than the 512 tokens the model reads: give at most 512"]),
    }


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, runs, corpus):
    folder = tmp_path_factory.mktemp("bad")
    cases = bad_inputs(folder, runs["base"], corpus["train"])
    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    results = run_side_by_side({name: Run(("finetune", *args), env={**ONE_THREAD, **env})
                                for name, (args, env, _) in cases.items()})
    after = sorted(path.relative_to(folder) for path in folder.rglob("*"))
    return {name: (results[name], fragments) for name, (_, _, fragments) in cases.items()}, before, after


@pytest.mark.parametrize("case", ["missing-column", "missing-summary-column", "empty-file", "empty-document",
                                  "not-utf8", "numbers", "broken-json", "unknown-format", "missing-file",
                                  "lora-without-peft", "output-exists", "earlier-checkpoints",
                                  "resume-without-checkpoint", "learning-rate", "batch-size", "epochs-and-steps",
                                  "adapter-without-lora", "same-columns", "source-too-long"])
def test_bad_input_is_one_clear_line(bad_runs, case):
    result, fragments = bad_runs[0][case]
    assert_fails_clearly(result, "bigbird-pegasus finetune: error:", *fragments)


def test_bad_input_writes_nothing(bad_runs):
    _, before, after = bad_runs
    assert after == before


def test_help_names_the_defaults():
    from test_cli import run_cli

    result = run_cli("finetune", "--help")
    assert_succeeds(result)
    for text in ("--text-column NAME", "(default: document)", "(default: summary)", "--no-gradient-checkpointing",
                 "accelerate launch", "--resume", "examples:"):
        assert text in result.stdout, text
