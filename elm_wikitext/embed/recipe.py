"""How a model turns a text into one vector: its pooling, normalization, document prompt and
longest input, read from its own sentence-transformers files.

A sentence-transformers model folder says it in `modules.json` (Transformer -> Pooling ->
Normalize), `1_Pooling/config.json`, `config_sentence_transformers.json` (the prompts) and
`sentence_bert_config.json` (max_seq_length). A plain transformers model has none of them and
gets Qwen3-Embedding's recipe: the last token's state, L2-normalized, no prompt.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from elm_wikitext.errors import BuildError

POOLINGS = ("lasttoken", "mean", "cls")  # sentence-transformers' names of the poolings reproduced here
# sentence-transformers' pooling_mode_* flags (its files before v6) by the pooling they select.
LEGACY_FLAGS = {"pooling_mode_lasttoken": "lasttoken", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean"}
# What the first recipes wrote for the only pooling they had.
LEGACY_POOLING = "last_token_l2"
# The sentence-transformers modules reproduced here, by the last part of their type name (the
# name moved between versions: sentence_transformers.models.Pooling, ...modules.pooling.Pooling).
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
# The prompt names sentence-transformers' encode_document looks for, in its order.
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


@dataclass(frozen=True)
class Recipe:
    pooling: str = "lasttoken"
    normalize: bool = True
    prompt: str = ""  # put before every text (its tokens are pooled too)
    max_length: int | None = None  # tokens the model reads at most; None: no limit known
    origin: str = "transformers"  # where the recipe was read: sentence-transformers files, or the default

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Recipe":
        """A recorded recipe; one written before poolings other than the last token's has only
        `pooling: last_token_l2`."""
        if data.get("pooling") == LEGACY_POOLING:
            return cls()
        return cls(**{key: data[key] for key in ("pooling", "normalize", "prompt", "max_length", "origin")
                      if data.get(key) is not None})


def model_file(model: str, revision: str | None, name: str) -> Path | None:
    """One file of a model directory or Hub model, or None where the model has none."""
    if Path(model).is_dir():
        path = Path(model) / name
        return path if path.is_file() else None
    cached = try_to_load_from_cache(model, name, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None or constants.HF_HUB_OFFLINE:  # known to be absent, or nothing to ask
        return None
    try:
        return Path(hf_hub_download(model, name, revision=revision))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except HfHubHTTPError as err:
        raise BuildError(f"cannot read {name} of --model {model} ({type(err).__name__}): check the id "
                         "and the revision, or pass a local model directory") from None


def read_json(model: str, revision: str | None, name: str) -> dict | list | None:
    path = model_file(model, revision, name)
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BuildError(f"--model {model} has a damaged {name} ({err}): download the model again") from None


def model_recipe(model: str, revision: str | None = None) -> Recipe:
    """The model's own recipe (sentence-transformers files), or the last-token default."""
    modules = read_json(model, revision, "modules.json")
    if modules is None:  # the embed stage logs that the default is used
        return Recipe(max_length=_max_seq_length(model, revision))
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    unknown = [kind for kind in kinds if kind not in KNOWN_MODULES]
    if unknown or kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise BuildError(f"--model {model} chains the sentence-transformers modules {' -> '.join(kinds)}, "
                         "which this build cannot reproduce (it runs Transformer -> Pooling [-> Normalize]): "
                         "pick another model, or one without extra modules")
    pooling_folder = modules[1].get("path") or "1_Pooling"
    pooling, include_prompt = _pooling(read_json(model, revision, f"{pooling_folder}/config.json") or {}, model)
    prompt = _document_prompt(read_json(model, revision, "config_sentence_transformers.json") or {})
    if prompt and not include_prompt:
        raise BuildError(f"--model {model} pools without its document prompt's tokens (include_prompt: "
                         "false), which this build cannot reproduce: pick another model")
    return Recipe(pooling, kinds[2:] == ["Normalize"], prompt, _max_seq_length(model, revision),
                  "sentence-transformers")


def _pooling(config: dict, model: str) -> tuple[str, bool]:
    mode = config.get("pooling_mode")
    if mode is None:  # the files of sentence-transformers before v6: one flag per mode
        flags = [name for key, name in LEGACY_FLAGS.items() if config.get(key)]
        mode = flags[0] if len(flags) == 1 else flags or "mean"  # its default: mean
    if mode not in POOLINGS:
        raise BuildError(f"--model {model} pools with {mode!r}, which this build cannot reproduce "
                         f"(it pools {', '.join(POOLINGS)}): pick a model with one of those")
    return mode, bool(config.get("include_prompt", True))


def _document_prompt(config: dict) -> str:
    """The prompt sentence-transformers' `encode_document` puts before a text."""
    prompts = config.get("prompts") or {}
    name = next((name for name in DOCUMENT_PROMPTS if name in prompts), config.get("default_prompt_name"))
    return (prompts.get(name) or "") if name else ""


def _max_seq_length(model: str, revision: str | None) -> int | None:
    """The longest input, in tokens: sentence-transformers' max_seq_length, else the tokenizer's
    model_max_length, else the model's position embeddings (whichever are set)."""
    st_config = read_json(model, revision, "sentence_bert_config.json") or {}
    tokenizer_config = read_json(model, revision, "tokenizer_config.json") or {}
    config = read_json(model, revision, "config.json") or {}
    if isinstance(st_config.get("max_seq_length"), int):
        return st_config["max_seq_length"]
    # transformers writes a huge model_max_length (1e30) for "no limit".
    limits = [limit for limit in (tokenizer_config.get("model_max_length"), config.get("max_position_embeddings"))
              if isinstance(limit, (int, float)) and 0 < limit < 1e9]
    return int(min(limits)) if limits else None
