"""Big-model loading with accelerate: device maps, CPU/disk offload, half precision, meta-device loading.

Everything runs on the CPU: "disk" offload and simulated GPUs (accelerate's `infer_auto_device_map` only
plans, it never allocates) stand in for the multi-device cases.
"""

import re

import accelerate
import pytest
import torch
from accelerate.utils import compute_module_sizes, find_tied_parameters
from torch.overrides import TorchFunctionMode

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from tiny import max_abs_diff, random_inputs, tiny_config

# Three layers each and few positions, so the layers (not the position tables) dominate the size.
SPLIT = dict(encoder_layers=3, decoder_layers=3, max_position_embeddings=512, init_std=0.3)
EOS = tiny_config().eos_token_id
NO_SPLIT = {"BigBirdPegasusEncoderLayer", "BigBirdPegasusDecoderLayer"}
TIED_EMBEDDINGS = {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"}
LAYER_KEY = re.compile(r"model\.(encoder|decoder)\.layers(\.\d+)?")

# `final_logits_bias` is a top-level buffer (the built-in's weight name, which checkpoints use), so device maps name
# it, and accelerate warns that the key "does not match any submodule" while it places the buffer all the same
# (test_final_logits_bias_offloaded_to_disk_is_loaded). The built-in model gets the same warning.
pytestmark = pytest.mark.filterwarnings("ignore:The following device_map keys do not match any submodules")


def build(head: str, seed: int = 0, **overrides):
    """A tiny model with large random weights (init_std) and a non-zero final_logits_bias, so that logits differ
    clearly between tokens and generation does not stop at the first step."""
    torch.manual_seed(seed)
    model = getattr(ours, head)(tiny_config(**{**SPLIT, **overrides}))
    if hasattr(model, "final_logits_bias"):
        model.final_logits_bias.normal_(0, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """head name -> (folder, the model on one device): each head saved once for the whole module."""
    cache = {}

    def save(head):
        if head not in cache:
            folder = tmp_path_factory.mktemp(head)
            model = build(head)
            model.save_pretrained(folder)
            cache[head] = folder, model
        return cache[head]

    return save


def load(head, folder, **kwargs):
    return getattr(ours, head).from_pretrained(folder, **kwargs).eval()


def alternating_device_map(config):
    """Embeddings (tied) on the CPU, layers alternating between CPU and disk, final norms and bias on disk."""
    device_map = {"model.shared": "cpu", "model.encoder.embed_tokens": "cpu", "model.decoder.embed_tokens": "cpu"}
    for stack, num_layers in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        device_map[f"model.{stack}.embed_positions"] = "cpu"
        for idx in range(num_layers):
            device_map[f"model.{stack}.layers.{idx}"] = ("cpu", "disk")[(idx + (stack == "decoder")) % 2]
        device_map[f"model.{stack}.layernorm_embedding"] = "disk"
    return device_map


def head_device_map(head, config):
    """`alternating_device_map` plus the head's own modules."""
    extra = {
        "BigBirdPegasusForConditionalGeneration": {"lm_head": "cpu", "final_logits_bias": "disk"},
        "BigBirdPegasusForQuestionAnswering": {"qa_outputs": "disk"},
        "BigBirdPegasusForSequenceClassification": {"classification_head": "disk"},
    }[head]
    return {**alternating_device_map(config), **extra}


def offload_kwargs(kind, reference, offload_folder):
    """from_pretrained arguments for a hand-written cpu/disk map, or for "auto" with room on the CPU for about
    half of the model, so that the rest goes to disk."""
    if kind == "dict":
        device_map = head_device_map("BigBirdPegasusForConditionalGeneration", reference.config)
        return dict(device_map=device_map, offload_folder=offload_folder)
    max_memory = {"cpu": compute_module_sizes(reference)[""] // 2}
    return dict(device_map="auto", max_memory=max_memory, offload_folder=offload_folder)


def generate(model, input_ids, attention_mask, num_beams):
    return model.generate(input_ids, attention_mask=attention_mask, num_beams=num_beams, do_sample=False,
                          max_new_tokens=6, min_new_tokens=6)


def seq2seq_results(model):
    """Logits and loss of one forward pass, and greedy and beam-search ids."""
    input_ids, attention_mask = random_inputs(length=160)  # long enough for block-sparse attention
    labels = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outputs = model(input_ids, attention_mask=attention_mask, labels=labels)
    greedy, beam = (generate(model, input_ids, attention_mask, num_beams) for num_beams in (1, 3))
    return outputs.logits, outputs.loss, greedy, beam


@pytest.fixture(scope="module")
def expected_seq2seq(saved):
    return seq2seq_results(saved("BigBirdPegasusForConditionalGeneration")[1])


# ----------------------------------------------------------------------------------------------------------------
# Split and offloaded models give the same results as the model on one device.
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dict", "auto_max_memory"])
def test_cpu_and_disk_offload_match_one_device(saved, expected_seq2seq, tmp_path, kind):
    folder, reference = saved("BigBirdPegasusForConditionalGeneration")
    split = load("BigBirdPegasusForConditionalGeneration", folder, **offload_kwargs(kind, reference, tmp_path))
    assert {"cpu", "disk"} <= set(split.hf_device_map.values())
    assert any(LAYER_KEY.fullmatch(key) and device == "disk" for key, device in split.hf_device_map.items())

    logits, loss, greedy, beam = seq2seq_results(split)
    expected_logits, expected_loss, expected_greedy, expected_beam = expected_seq2seq
    assert max_abs_diff(logits, expected_logits) <= 1e-5
    assert abs(loss.item() - expected_loss.item()) <= 1e-5
    assert len(set(expected_greedy[0, 1:].tolist())) > 1  # a real sequence, not one token repeated
    assert torch.equal(greedy, expected_greedy)
    assert torch.equal(beam, expected_beam)


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_final_logits_bias_offloaded_to_disk_is_loaded(tmp_path, safe_serialization):
    """A top-level tensor on "disk" belongs to no module that accelerate could hook (transformers 4 left it at
    zeros), from safetensors (read in place) and from other checkpoints (copied to the offload folder)."""
    reference = build("BigBirdPegasusForConditionalGeneration")
    reference.save_pretrained(tmp_path / "model", safe_serialization=safe_serialization)
    device_map = head_device_map("BigBirdPegasusForConditionalGeneration", reference.config)
    split = load("BigBirdPegasusForConditionalGeneration", tmp_path / "model", device_map=device_map,
                 offload_folder=tmp_path / "offload")
    assert split.hf_device_map["final_logits_bias"] == "disk"
    assert torch.equal(split.final_logits_bias, reference.final_logits_bias)
    input_ids, attention_mask = random_inputs(length=160)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        assert max_abs_diff(split(input_ids, attention_mask=attention_mask).logits, expected) <= 1e-5


@pytest.mark.parametrize("device_map", ["auto", "balanced", "balanced_low_0", "sequential"])
def test_device_map_strategies_load_and_match(saved, device_map):
    folder, reference = saved("BigBirdPegasusForConditionalGeneration")
    model = load("BigBirdPegasusForConditionalGeneration", folder, device_map=device_map)
    input_ids, attention_mask = random_inputs(length=160)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask).logits
        assert max_abs_diff(model(input_ids, attention_mask=attention_mask).logits, expected) <= 1e-5
    assert model.lm_head.weight is model.model.shared.weight


def classification_inputs():
    """Unpadded inputs that end with exactly one </s>, as the sequence classifier requires."""
    input_ids, attention_mask = random_inputs(length=160, pad_tail=0)
    input_ids[:, -1] = EOS
    return input_ids, attention_mask


# head -> (the outputs to compare, the labels that make it compute a loss)
HEAD_CASES = {
    "BigBirdPegasusForQuestionAnswering": (
        ("start_logits", "end_logits"),
        dict(start_positions=torch.tensor([3, 50]), end_positions=torch.tensor([9, 60])),
    ),
    "BigBirdPegasusForSequenceClassification": (("logits",), dict(labels=torch.tensor([0, 1]))),
}


@pytest.mark.parametrize("head", sorted(HEAD_CASES))
def test_task_heads_split_across_cpu_and_disk_match_one_device(saved, tmp_path, head):
    folder, reference = saved(head)
    split = load(head, folder, device_map=head_device_map(head, reference.config), offload_folder=tmp_path)
    assert {"cpu", "disk"} <= set(split.hf_device_map.values())
    outputs, labels = HEAD_CASES[head]
    input_ids, attention_mask = classification_inputs()
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask, **labels)
        actual = split(input_ids, attention_mask=attention_mask, **labels)
    for name in outputs:
        assert max_abs_diff(actual[name], expected[name]) <= 1e-5, name
    assert abs(actual.loss.item() - expected.loss.item()) <= 1e-5


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])  # torch_dtype: the name before transformers 4.56
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loading(saved, dtype, keyword):
    folder, reference = saved("BigBirdPegasusForConditionalGeneration")
    model = load("BigBirdPegasusForConditionalGeneration", folder, device_map="auto", **{keyword: dtype})
    assert {param.dtype for param in model.parameters()} == {dtype}
    assert model.final_logits_bias.dtype == dtype
    input_ids, attention_mask = random_inputs(length=160)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=attention_mask).logits
        expected = reference(input_ids, attention_mask=attention_mask).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert max_abs_diff(logits, expected) < 0.1 * expected.abs().max().item()


# ----------------------------------------------------------------------------------------------------------------
# Planning a multi-GPU split (simulated GPUs: the plan needs no devices).
# ----------------------------------------------------------------------------------------------------------------


def empty_model(head):
    """The model on the meta device, with ties restored: accelerate's `init_empty_weights` re-creates every
    parameter it registers, which unties them; from_pretrained calls `tie_weights` before planning too."""
    config = tiny_config(d_model=64, encoder_ffn_dim=256, decoder_ffn_dim=256, encoder_layers=6, decoder_layers=6,
                         vocab_size=1000, max_position_embeddings=512)
    with accelerate.init_empty_weights():
        model = getattr(ours, head)(config)
    model.tie_weights()
    return model


def device_of(device_map, name):
    """The device of a parameter: the one of the longest device_map key that contains it."""
    owners = [key for key in device_map if key == "" or name == key or name.startswith(key + ".")]
    return device_map[max(owners, key=len)]


@pytest.mark.parametrize("num_gpus", [2, 4])
@pytest.mark.parametrize("head", ["BigBirdPegasusForConditionalGeneration", "BigBirdPegasusForQuestionAnswering"])
def test_auto_device_map_keeps_layers_whole_and_ties_together(head, num_gpus):
    model = empty_model(head)
    assert set(model._no_split_modules) == NO_SPLIT
    tied = find_tied_parameters(model)
    expected_tied = TIED_EMBEDDINGS | ({"lm_head.weight"} if hasattr(model, "lm_head") else set())
    assert [set(group) for group in tied] == [expected_tied]

    # Each GPU holds a bit more than its share, so the plan needs every GPU, and the rest goes to the CPU.
    size = compute_module_sizes(model)[""]
    max_memory = {gpu: int(1.2 * size / num_gpus) for gpu in range(num_gpus)}
    max_memory["cpu"] = 2 * size
    device_map = accelerate.infer_auto_device_map(
        model, max_memory=max_memory, no_split_module_classes=model._no_split_modules)

    assert set(range(num_gpus)) <= set(device_map.values()), device_map
    for key in device_map:
        assert ".layers." not in key or LAYER_KEY.fullmatch(key), f"{key} splits a layer"
    assert len({device_of(device_map, name) for name in expected_tied}) == 1, device_map


def test_accelerate_class_attributes():
    model = empty_model("BigBirdPegasusForConditionalGeneration")
    # generate passes the cache as `past_key_values` (transformers 4) or `cache` (5): never moved between devices.
    assert {"past_key_values", "cache"} <= set(model._skip_keys_device_placement)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


# ----------------------------------------------------------------------------------------------------------------
# Loading goes through the meta device and initialises only what the checkpoint lacks.
# ----------------------------------------------------------------------------------------------------------------

INIT_FUNCTIONS = {
    "normal_", "uniform_", "trunc_normal_", "constant_", "ones_", "zeros_", "zero_", "fill_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
}


class InitRecorder(TorchFunctionMode):
    """Records every `torch.nn.init` function or in-place fill applied to a real (not meta) tensor.

    A torch function mode sees the calls whatever name they were looked up by, including transformers 5's
    guarded copies of the `torch.nn.init` functions."""

    def __init__(self):
        super().__init__()
        self.tensors = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", "") in INIT_FUNCTIONS and isinstance(target, torch.Tensor):
            if target.device.type != "meta":
                self.tensors.append(target)
        return func(*args, **kwargs)

    def names(self, model):
        """The state_dict names of the recorded tensors (shape strings for tensors the model no longer holds)."""
        by_pointer = {tensor.data_ptr(): name for name, tensor in model.state_dict(keep_vars=True).items()}
        return {by_pointer.get(tensor.data_ptr(), str(tuple(tensor.shape))) for tensor in self.tensors}


@pytest.mark.parametrize("head", ["BigBirdPegasusForConditionalGeneration", "BigBirdPegasusModel",
                                  "BigBirdPegasusForQuestionAnswering", "BigBirdPegasusForSequenceClassification",
                                  "BigBirdPegasusForCausalLM"])
@pytest.mark.parametrize("placement", ["no device_map", "auto", "auto with disk offload"])
def test_loading_initialises_nothing_the_checkpoint_provides(saved, tmp_path, head, placement):
    folder, reference = saved(head)
    kwargs = {
        "no device_map": {},
        "auto": dict(device_map="auto"),
        "auto with disk offload": dict(device_map="auto", max_memory={"cpu": compute_module_sizes(reference)[""] // 2},
                                       offload_folder=tmp_path),
    }[placement]
    with InitRecorder() as recorder:
        model = load(head, folder, **kwargs)
    assert recorder.names(model) == set()
    for (name, expected), actual in zip(reference.state_dict().items(), model.state_dict().values()):
        assert actual.device.type == "meta" or torch.equal(actual, expected), name  # meta: offloaded to disk


def test_loading_initialises_exactly_the_missing_weights(saved):
    folder, reference = saved("BigBirdPegasusForConditionalGeneration")  # has no qa_outputs
    with InitRecorder() as recorder:
        model = load("BigBirdPegasusForQuestionAnswering", folder)
    assert recorder.names(model) == {"qa_outputs.weight", "qa_outputs.bias"}
    assert model.qa_outputs.weight.std().item() > 0 and not model.qa_outputs.bias.any()
    assert torch.equal(model.model.shared.weight, reference.model.shared.weight)
