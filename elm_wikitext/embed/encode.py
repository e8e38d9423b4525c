"""The embedding model and its pooling, as the model's own recipe (core/recipe.py) specifies them.

Qwen3-Embedding's, the default: documents get no instruction; the tokenizer appends
`<|endoftext|>`; the vector is the last layer's hidden state at that appended token, L2-normalized
(and, for `dim` below the hidden size, cut to the first `dim` values and normalized again: the
model is trained for that, Matryoshka-style). Encoder models (BERT-like, T5's encoder) run the
same batches with an attention mask and pool as their sentence-transformers files say.

Nothing here knows about datasets or processes: it maps lists of token ids to vectors.
"""

import hashlib
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoConfig, AutoModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from elm_wikitext.core.recipe import Recipe, model_recipe
from elm_wikitext.core.devices import DTYPES, pick_device
from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.processes import share

log = logging.getLogger(__name__)

# Part of the embedding's resume key: bump it when the vectors change (pooling, normalization,
# precision, padding; not for comments or refactors), so that no finished chunk of the old code is
# reused. tests/embed/test_encode.py holds reference vectors tied to this number, and fails until both agree.
EMBED_VERSION = 2  # 2: every layer runs the model's own forward (1: the last one at the pooled token)

# Where lengths are sparse (the long tail), smaller batches beat computing padding.
MAX_PADDING = 0.03
# PyTorch's SDPA prefers cuDNN's attention on H100s, which builds a plan for each new shape of
# (rows, length), and nearly every batch here is one: a quarter of a build's embedding time on an
# H100 (benchmarks/README.md). Its other fused kernels have no such cost.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# Encoder-decoder models whose encoder alone embeds (as sentence-transformers loads them).
ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


@dataclass
class Encoder:
    model: torch.nn.Module
    pad_id: int
    dim: int
    device: torch.device
    recipe: Recipe = Recipe()
    causal: bool = True  # a decoder: no padding to mask (see embed_ids)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def check_config_file(model: str) -> None:
    """A local model's config.json that is not a JSON object is named as such (the tokenizer,
    which reads it first, would otherwise take the blame)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BuildError(f"--model {model} has a damaged config.json ({err}): download the model "
                         "again, or pass a complete model directory") from None
    if not isinstance(config, dict):
        raise BuildError(f"--model {model} has a config.json that is not a JSON object: download "
                         "the model again, or pass a complete model directory")


def check_model_config(model: str, revision: str | None, dim: int | None, tokenizer=None) -> int:
    """Refuse, from the config alone, a model that last-token pooling does not fit, a `dim` it
    does not have, or a vocabulary smaller than `tokenizer`'s ids; return the dim to keep."""
    check_config_file(model)
    try:
        config = AutoConfig.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as err:  # no config.json, or one without a known model_type
        raise BuildError(f"--model {model} has no model config that transformers can read ({err}): "
                         "pass a complete model directory (config.json and weights) or a Hub model id") from None
    architecture(config, model)
    vocabulary = getattr(config, "vocab_size", None)
    if tokenizer is not None and isinstance(vocabulary, int) and len(tokenizer) > vocabulary:
        raise BuildError(f"--model {model} has a vocabulary of {vocabulary} tokens, but its tokenizer "
                         f"makes ids up to {len(tokenizer) - 1}: its config.json and tokenizer belong to "
                         "different models; download the model again")
    hidden = hidden_size(config)
    dim = dim or hidden
    if not 32 <= dim <= hidden:
        raise BuildError(f"--dim {dim} is outside 32..{hidden} (the hidden size of "
                         f"{model}): pass a --dim in that range")
    return dim


def hidden_size(config) -> int:
    return getattr(config, "hidden_size", None) or config.d_model  # T5 names it d_model


def architecture(config, model: str) -> str:
    """'decoder' (causal: pads without a mask), 'encoder' (attends both ways: needs the mask),
    or the class that loads an encoder-decoder model's encoder alone; refuse anything else."""
    kind = config.model_type
    if kind in ENCODER_ONLY_CLASSES:  # its config says encoder-decoder, or not, as it was saved
        return ENCODER_ONLY_CLASSES[kind]
    if getattr(config, "is_encoder_decoder", False):
        raise BuildError(f"--model {model} is a {kind} encoder-decoder model, whose encoder this build "
                         f"cannot load alone (it can for {', '.join(ENCODER_ONLY_CLASSES)}): pick "
                         "an encoder or decoder embedding model")
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


# Dense float16/bfloat16 peaks (FLOP/s) by GPU name, and the share of it this build reached on an
# H100 with Qwen3-Embedding-4B's architecture (benchmarks/results): compiled layers, the default
# on a GPU, and eager ones. A CPU is measured where the plan is made (`cpu_rate`).
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
             "T4": 65e12}
MEASURED_MFU = {"compiled": 0.53, "eager": 0.35}


def cpu_rate(model: str, revision: str | None, tokens: int = 256, repeats: int = 3) -> float:
    """FLOP/s of this CPU on matrix products of the model's own shape (`tokens` rows through its
    MLP's first matrix, float32 as the build runs there): the best of a few timings of about 1
    GFLOP each (one product for the 4B model, many for a tiny one), a second or so in all."""
    config = AutoConfig.from_pretrained(model, revision=revision)
    hidden = hidden_size(config)
    mlp = getattr(config, "intermediate_size", None) or config.d_ff
    rows, weight = torch.randn(tokens, hidden), torch.randn(hidden, mlp)
    flops = 2 * tokens * hidden * mlp
    products = max(1, min(1000, round(1e9 / flops)))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(products):
            torch.mm(rows, weight)
        best = min(best, time.perf_counter() - started)
    return products * flops / max(best, 1e-9)


def row_flops(model: str, revision: str | None, lengths: np.ndarray) -> np.ndarray:
    """The FLOPs of embedding each row, from the model's config (no weights)."""
    config = AutoConfig.from_pretrained(model, revision=revision)
    hidden = hidden_size(config)
    heads = getattr(config, "num_attention_heads", None) or config.num_heads  # T5: num_heads
    head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or hidden // heads
    q = heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    mlp = getattr(config, "intermediate_size", None) or config.d_ff
    gated = architecture(config, model) == "decoder"  # Qwen3's SwiGLU: three MLP matrices, else two
    per_layer = hidden * (2 * q + 2 * kv) + (3 if gated else 2) * hidden * mlp
    layers = getattr(config, "num_hidden_layers", None) or config.num_layers
    lengths = lengths.astype(np.float64)
    # 2 FLOPs per weight per token, plus attention: QK^T and AV, over half the context if causal.
    attention = (2 if gated else 4) * q * lengths ** 2
    return layers * (2 * per_layer * lengths + attention)


def gpu_peak(name: str) -> float:
    """The dense float16 peak of a GPU named like `torch.cuda.get_device_name` or `--plan-gpu`."""
    peak = next((value for key, value in GPU_PEAKS.items() if key.lower() in name.lower()), None)
    if peak is None:
        raise BuildError(f"--plan-gpu {name} is not a GPU whose peak this build knows: pass one of "
                         f"{', '.join(GPU_PEAKS)}")
    return peak


def compiles(setting: str, device: torch.device) -> bool:
    """Whether `--compile` SETTING compiles the layers on DEVICE ('auto': on a GPU)."""
    return setting == "yes" or (setting == "auto" and device.type == "cuda")


def seconds_at(flops: float, device: str, compiled: bool, cpu_flops: float | None = None) -> float | None:
    """Time of `flops` on a device named like `torch.cuda.get_device_name` ('cpu': at `cpu_flops`,
    this CPU's measured rate); None for a GPU of unknown peak."""
    if device == "cpu":
        return flops / cpu_flops
    try:
        return flops / (gpu_peak(device) * MEASURED_MFU["compiled" if compiled else "eager"])
    except BuildError:
        return None


def estimate_embedding(flops: np.ndarray, chunks: list[np.ndarray], setting: str, gpus: int, gpu: str,
                       measure_cpu) -> dict:
    """The embedding's time from each row's FLOPs (`row_flops`), with the compile SETTING: on this
    device (a CPU at the rate `measure_cpu()` returns), and on GPUS GPUs named GPU, which share the
    chunks as the build does (every n-th one each), so the busiest sets the time. Batches only:
    loading (and compiling) comes on top."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    cpu_flops = measure_cpu() if name == "cpu" else None
    chunk_flops = np.array([flops[rows].sum() for rows in chunks])
    busiest = max(share(chunk_flops, i, gpus).sum() for i in range(gpus)) if len(chunks) else 0.0
    on_gpus = compiles(setting, torch.device("cuda"))
    return {"tflop": float(flops.sum()) / 1e12, "chunks": len(chunks),
            "device": name, "device_compiled": compiles(setting, device),
            "device_seconds": seconds_at(float(flops.sum()), name, compiles(setting, device), cpu_flops),
            "cpu_flops": cpu_flops,
            "gpus": gpus, "gpu": gpu, "gpus_compiled": on_gpus, "gpus_chunks": -(-len(chunks) // gpus),
            "gpus_seconds": seconds_at(float(busiest), gpu, on_gpus)}


def load_encoder(model: str, revision: str | None, dtype: str, dim: int | None, pad_id: int | None,
                 device: torch.device | None = None, recipe: Recipe | None = None) -> Encoder:
    """Load the model once, in float32 on CPU or `dtype` on GPU, and check it before any work;
    it pools by `recipe` (default: the model's own, `recipe.model_recipe`)."""
    device = device or pick_device()
    dim = check_model_config(model, revision, dim)
    recipe = recipe or model_recipe(model, revision)
    kind = architecture(AutoConfig.from_pretrained(model, revision=revision), model)
    torch_dtype = DTYPES[dtype] if device.type == "cuda" else torch.float32
    # A decoder runs its fused causal kernels (see _attention); an encoder transformers' default.
    attention = {"attn_implementation": _attention(device, torch_dtype)} if kind == "decoder" else {}
    loader = AutoModel if kind in ("decoder", "encoder") else getattr(transformers, kind)
    try:
        loaded, info = loader.from_pretrained(model, revision=revision, dtype=torch_dtype,
                                              output_loading_info=True, **attention)
    except (OSError, SafetensorError) as err:  # no weight files, or damaged ones
        raise BuildError(f"cannot load the weights of --model {model} ({err}): download the model "
                         "again, or pass a complete model directory") from None
    except RuntimeError as err:  # transformers refuses weights of other sizes than the config's
        reason = str(err).splitlines()[0][:200]
        raise BuildError(f"the weights of --model {model} have other sizes than its config.json says "
                         f"({reason}): its config and weights belong to different models; download it again") from None
    check_weight_names(model, info, kind)
    log.info("model %s (%s) on %s in %s, dim %d, %s pooling%s", model, kind, device, torch_dtype, dim,
             recipe.pooling, ", normalized" if recipe.normalize else "")
    pad_id = 0 if pad_id is None else pad_id  # no attention reaches the padding, so any id does
    return Encoder(loaded.to(device).eval(), pad_id, dim, device, recipe, causal=kind == "decoder")


def check_weight_names(model: str, info: dict, loaded_as: str = "decoder") -> None:
    """The checkpoint holds exactly the weights the config's model class has: a missing one
    would be random, an unexpected one (Qwen3's q_norm under another model_type) ignored. (The
    decoder of an encoder-decoder checkpoint is unexpected for its encoder class: left out.)"""
    if loaded_as in ENCODER_ONLY_CLASSES.values():
        info = {**info, "unexpected_keys": [name for name in info.get("unexpected_keys") or []
                                            if not str(name).startswith(("decoder.", "lm_head."))]}
    # BERT's pooler head (pooler_output) is never read: a checkpoint saved without it, as
    # `BertModel(add_pooling_layer=False)` saves, embeds the same (sentence-transformers loads it too).
    info = {**info, "missing_keys": [name for name in info.get("missing_keys") or [] if not str(name).startswith("pooler.")]}
    for kind, what in (("missing_keys", "lacks {n} weights"), ("unexpected_keys", "holds {n} weights its model class does not use"),
                       ("mismatched_keys", "holds {n} weights of other sizes than its config says")):
        names = sorted(str(name) for name in info.get(kind) or [])
        if names:
            raise BuildError(f"--model {model} {what.format(n=len(names))} (e.g. {names[:3]}): its "
                             "checkpoint does not fit its config.json (partial, or of another model_type); "
                             "download it again or pass a complete model")


def model_identity(model: str, revision: str | None) -> str:
    """What names a model's weights, so that other weights never reuse old vectors: the commit of
    a Hub model (its cached snapshot's folder), or the SHA-256 of a local directory's files (about
    5 s for the 8 GB of Qwen3-Embedding-4B; their dates would differ from machine to machine)."""
    if not Path(model).is_dir():  # loaded, so its config.json is in the cache (unless told otherwise)
        cached = try_to_load_from_cache(model, "config.json", revision=revision)
        return Path(cached).parent.name if isinstance(cached, str) else f"{model}@{revision}"
    digest = hashlib.sha256()
    for path in sorted(path for path in Path(model).iterdir() if path.is_file()):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def compile_layers(encoder: Encoder, required: bool = True) -> bool:
    """torch.compile each decoder layer in place, for batches of any shape (`--compile`), and
    compile them now, on two small batches, so that the progress bar times batches only. Return
    whether they are compiled: where inductor cannot build its kernels (no C compiler, say), the
    layers stay eager, with a warning, or, if `required`, the build is refused before any work.

    Between its matmuls a Qwen3 layer runs many small element-wise kernels (float32 RMSNorm,
    rotary, SwiGLU, residual adds); compiling fuses them: 1.5x the tokens/s of eager layers in a
    build on an H100 (benchmarks/README.md). The layers share one compiled graph for batches of several rows
    and one for a single row, whatever their length: no batch compiles again.
    """
    layers = getattr(encoder.model, "layers", None)  # decoders named otherwise are compiled whole
    eager = list(layers) if layers else [encoder.model]
    compiled = [torch.compile(module, dynamic=True) for module in eager]  # wrappers sharing the weights
    log.info("compiling %s with torch.compile", f"{len(eager)} decoder layers" if layers else "the model")
    _put_layers(encoder, compiled, layers)
    try:
        # Sizes no model dimension has: dynamo gives input dimensions of equal size one symbol,
        # and a length equal to the head size, say, would fix the length of the compiled graph.
        for rows in (1, 3):
            embed_ids(encoder, [[encoder.pad_id] * 37] * rows)
    except Exception as err:  # inductor's and Triton's errors come in many types
        _put_layers(encoder, eager, layers)  # the eager modules back in their places: nothing compiled stays
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:300]
        if required:
            raise BuildError(f"--compile yes cannot compile on this machine ({reason}): install a C "
                             "compiler (gcc) that torch.compile can use, or pass --compile no") from None
        log.warning("cannot compile the model on this machine (%s): embedding eagerly, about a third "
                    "slower on a GPU; install a C compiler (gcc) that torch.compile can use", reason)
        return False
    return True


def _put_layers(encoder: Encoder, modules: list, layers) -> None:
    """Put `modules` in the model's layer list (`layers`), or in place of the whole model where it has none."""
    if layers:
        for index, module in enumerate(modules):
            layers[index] = module
    else:
        encoder.model = modules[0]


def _attention(device: torch.device, dtype: torch.dtype) -> str:
    # Right-padded causal batches need no mask, so both run their fused causal kernels;
    # FlashAttention 2 where it is installed (GPU, float16/bfloat16 only), else PyTorch's SDPA.
    if (device.type == "cuda" and dtype != torch.float32
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def check_budget(lengths: np.ndarray, max_batch_tokens: int) -> None:
    longest = int(lengths.max(initial=0))
    if longest > max_batch_tokens:
        raise BuildError(f"--max-batch-tokens {max_batch_tokens} is below the longest paragraph "
                         f"({longest} tokens): raise it to at least {longest}")


def token_batches(lengths: np.ndarray, max_batch_tokens: int) -> list[np.ndarray]:
    """Positions of `lengths` grouped longest first. A batch is padded to its longest row; it
    closes before it would cost more than `max_batch_tokens`, or before a row shorter than its
    longest by more than MAX_PADDING joins, which caps padding at MAX_PADDING of the tokens."""
    check_budget(lengths, max_batch_tokens)
    batches, current, width = [], [], 0
    for position in np.argsort(-lengths, kind="stable"):
        length = int(lengths[position])
        if current and ((len(current) + 1) * width > max_batch_tokens or length < (1 - MAX_PADDING) * width):
            batches.append(np.array(current))
            current = []
        if not current:
            width = length
        current.append(position)
    return batches + [np.array(current)] if current else batches


def right_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded at the end, and each row's length."""
    lengths = torch.tensor([len(row) for row in ids])
    input_ids = torch.full((len(ids), int(lengths.max())), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.as_tensor(row)
    return input_ids, lengths


@torch.inference_mode()
def embed_ids(encoder: Encoder, ids: list[list[int]]) -> torch.Tensor:
    """Float32 vectors (rows, dim), on the CPU, of token-id rows, pooled by the encoder's recipe
    (and unit rows where it normalizes).

    Qwen3-Embedding's authors pad on the left so that the end-of-text token is last in every row.
    Padding on the right and reading each row at its own last token gives the same vectors: under
    the causal mask no real token can see the padding that follows it, so a decoder needs no
    attention mask, and SDPA runs its fused causal kernel instead of a masked one. An encoder
    attends both ways and gets the mask.
    """
    input_ids, lengths = right_pad(ids, encoder.pad_id)
    input_ids, lengths = input_ids.to(encoder.device, non_blocking=True), lengths.to(encoder.device)
    real = torch.arange(input_ids.shape[1], device=encoder.device) < lengths[:, None]
    # use_cache=False: a key/value cache only serves generation, and filling it costs copies.
    inputs = {"use_cache": False} if encoder.causal else {"attention_mask": real.long()}
    with sdpa_kernel(SDPA_BACKENDS):
        hidden = encoder.model(input_ids=input_ids, **inputs).last_hidden_state
    vectors = pool(hidden, real, lengths, encoder.recipe.pooling)
    if encoder.recipe.normalize:
        vectors = F.normalize(vectors, dim=-1)
    if encoder.dim < vectors.shape[-1]:
        vectors = vectors[:, :encoder.dim]
        vectors = F.normalize(vectors, dim=-1) if encoder.recipe.normalize else vectors
    return vectors.cpu()


def pool(hidden: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor, pooling: str) -> torch.Tensor:
    """One float32 vector per row of right-padded states; `real` marks the tokens that are not padding."""
    if pooling == "lasttoken":
        return hidden[torch.arange(len(hidden), device=hidden.device), lengths - 1].float()
    if pooling == "cls":
        return hidden[:, 0].float()
    mask = real.unsqueeze(-1).float()
    return (hidden.float() * mask).sum(dim=1) / lengths[:, None].float()


@torch.inference_mode()
def embed_rows(encoder: Encoder, ids: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Like `embed_ids`, with two safety nets: a CUDA out-of-memory halves the batch and retries;
    rows whose float16/bfloat16 vector is not finite are recomputed in float32. Returns the
    vectors (on CPU) and how many rows needed float32."""
    try:
        vectors = embed_ids(encoder, ids)
    except torch.OutOfMemoryError:
        vectors = None  # retried below: here the traceback would keep the failed batch's tensors
    if vectors is None:
        if len(ids) == 1:
            raise BuildError("one paragraph does not fit in GPU memory: lower --max-tokens")
        half = len(ids) // 2
        log.warning("CUDA out of memory on %d rows: retrying as two halves", len(ids))
        torch.cuda.empty_cache()
        first, redo_a = embed_rows(encoder, ids[:half])
        second, redo_b = embed_rows(encoder, ids[half:])
        return torch.cat([first, second]), redo_a + redo_b
    bad = torch.nonzero(~torch.isfinite(vectors).all(dim=-1)).flatten().tolist()
    if bad:
        vectors[bad] = _embed_in_float32(encoder, [ids[i] for i in bad])
    return vectors, len(bad)


def _embed_in_float32(encoder: Encoder, ids: list[list[int]]) -> torch.Tensor:
    # float16 overflows to inf/NaN on some inputs. Casting float16/bfloat16 weights up and back
    # down is exact, so the model is unchanged afterwards. FlashAttention runs only half
    # precision, so float32 runs with SDPA.
    # transformers has a public setter of the attention (set_attn_implementation) but no getter.
    dtype, attention = encoder.dtype, encoder.model.config._attn_implementation
    if dtype == torch.float32:
        raise BuildError("the model gives non-finite vectors even in float32: check its weights")
    log.warning("%d rows gave non-finite vectors in %s: recomputing them in float32", len(ids), dtype)
    encoder.model.float().set_attn_implementation("sdpa")
    try:
        return embed_ids(encoder, ids)
    finally:
        encoder.model.to(dtype).set_attn_implementation(attention)
