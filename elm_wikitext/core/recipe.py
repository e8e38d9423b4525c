"""How a model turns a text into one vector, exactly as `SentenceTransformer(model).encode_document`
does: its pooling, normalization, document prompt and longest input, read from its own
sentence-transformers files, every key of which is either reproduced or refused in one line.

A sentence-transformers model folder says it in `modules.json` (Transformer -> Pooling ->
Normalize), `1_Pooling/config.json`, `config_sentence_transformers.json` (the prompts, the model
type, a truncation) and `sentence_bert_config.json` (the longest input, lowercasing, the input
kinds, tokenizer and loading arguments). A plain transformers folder gets what
sentence-transformers builds for it: mean pooling, or the last token's for a causal language
model, never normalized. docs/embedding.md lists what is reproduced and what is refused.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

from elm_wikitext.core.errors import BuildError

POOLINGS = ("lasttoken", "mean", "cls")  # sentence-transformers' names of the poolings reproduced here
# sentence-transformers' pooling_mode_* flags (its files before v6) by the pooling they select.
LEGACY_FLAGS = {"pooling_mode_lasttoken": "lasttoken", "pooling_mode_mean_tokens": "mean",
                "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean"}
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
    query_prompt: str = ""  # what the model's own `encode_query` puts before a query (the card shows it)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Recipe":
        """A recorded recipe: these fields of `data` (a card's recipe holds the model's too), every one of them."""
        return cls(**{field.name: data[field.name] for field in fields(cls)})


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


def read_required_json(model: str, revision: str | None, name: str, kind: type):
    """A file the model's modules.json says it has: present and of `kind`, or refused (never a default)."""
    data = read_json(model, revision, name)
    if data is None:
        raise BuildError(f"--model {model} lacks {name}, which its modules.json names: copy the whole "
                         "model folder (sentence-transformers would use its defaults in its place)")
    return checked(data, kind, model, name)


def checked(value, kind, model: str, name: str, key: str | None = None):
    """`value` when it is of `kind` (a type or a tuple of types), else one line naming the file and key."""
    if isinstance(value, bool) and kind in (int, (int, type(None))):  # JSON true is not a number
        kind = ()
    if not isinstance(value, kind):
        where = f"{name} key {key!r}" if key else name
        raise BuildError(f"--model {model} has a {where} of the wrong type ({type(value).__name__}): "
                         "download the model again, or fix that file")
    return value


def refuse(model: str, name: str, key: str, value, why: str) -> BuildError:
    return BuildError(f"--model {model} sets {key}={value!r} in {name}, which this build cannot "
                      f"reproduce ({why}): pick another model, or remove that setting from {name}")


def model_recipe(model: str, revision: str | None = None) -> Recipe:
    """What `SentenceTransformer(model).encode_document` does, read from every file and key that
    can change a vector; anything this build does not reproduce exactly is refused in one line."""
    modules = read_json(model, revision, "modules.json")
    if modules is None:
        return plain_recipe(model, revision)
    modules = [checked(module, dict, model, "modules.json") for module in checked(modules, list, model, "modules.json")]
    kinds = [module_kind(module, model) for module in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise BuildError(f"--model {model} chains the sentence-transformers modules {' -> '.join(kinds)}, "
                         "which this build cannot reproduce (it runs Transformer -> Pooling [-> Normalize]): "
                         "pick another model, or one without extra modules")
    if modules[0]["path"]:
        raise refuse(model, "modules.json", "path", modules[0]["path"],
                     "the weights are read from the model folder itself, not a subfolder")
    max_length = transformer_settings(model, revision)
    pooling, include_prompt = _pooling(read_required_json(model, revision, f"{modules[1]['path']}/config.json", dict),
                                       model, f"{modules[1]['path']}/config.json")
    if len(modules) == 3:
        check_normalize(model, revision, modules[2]["path"])
    prompt, query_prompt = _prompts(model, revision)
    if prompt and not include_prompt:
        raise BuildError(f"--model {model} pools without its document prompt's tokens (include_prompt: "
                         "false), which this build cannot reproduce: pick another model")
    return Recipe(pooling, len(modules) == 3, prompt, max_length, "sentence-transformers", query_prompt)


def module_kind(module: dict, model: str) -> str:
    """The last part of a module's type name, for sentence-transformers' own modules (the name
    moved between versions: sentence_transformers.models.Pooling, ...modules.pooling.Pooling);
    a module of another package, forward arguments or a path outside the folder are refused."""
    kind = checked(module.get("type"), str, model, "modules.json", "type")
    path = checked(module.get("path"), str, model, "modules.json", "path")
    short = kind.rsplit(".", 1)[-1]
    if not kind.startswith("sentence_transformers."):  # a module of its own code, under any name
        raise refuse(model, "modules.json", "type", kind, f"it runs {', '.join(KNOWN_MODULES)} of sentence_transformers")
    if module.get("kwargs"):
        raise refuse(model, "modules.json", "kwargs", module["kwargs"], "no module takes forward arguments here")
    if ".." in Path(path).parts or Path(path).is_absolute():
        raise refuse(model, "modules.json", "path", path, "a module lies inside the model folder")
    return short


# sentence_bert_config.json (the Transformer module's settings; older versions named the file
# after the architecture): each key this build reproduces, and the values it takes.
TRANSFORMER_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                     "sentence_camembert_config.json", "sentence_albert_config.json",
                     "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
TEXT_ONLY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
# Keys that change nothing a document's vector depends on: the queries' own length and expansion,
# and unpadding (the same sums without the padding, a kernel choice).
QUERY_ONLY_KEYS = ("query_length", "query_expansion", "unpad_inputs")
# Loading arguments that change how, not what, is computed; the build's own dtype is recorded.
HARMLESS_ARGUMENTS = {"model": {"dtype", "torch_dtype", "attn_implementation"}, "processor": {"padding_side"},
                      "config": set()}
ARGUMENT_KEYS = {"model_kwargs": "model", "model_args": "model", "processor_kwargs": "processor",
                 "tokenizer_args": "processor", "config_kwargs": "config", "config_args": "config"}


def transformer_settings(model: str, revision: str | None) -> int | None:
    """The longest input, after checking every key of the Transformer module's settings."""
    name, config = next(((name, data) for name in TRANSFORMER_FILES
                         if (data := read_json(model, revision, name)) is not None), (TRANSFORMER_FILES[0], {}))
    config = checked(config, dict, model, name)
    for key, value in config.items():
        if key == "max_seq_length":
            checked(value, (int, type(None)), model, name, key)
        elif key == "do_lower_case":
            if checked(value, bool, model, name, key):
                raise refuse(model, name, key, value, "sentence-transformers lowercases with the tokenizer's "
                             "normalizer, which this build does not copy")
        elif key == "transformer_task" and value != "feature-extraction":
            raise refuse(model, name, key, value, "it runs the model's hidden states (feature-extraction)")
        elif key == "modality_config" and value != TEXT_ONLY:
            raise refuse(model, name, key, value, "it embeds plain text, without a chat template or other inputs")
        elif key == "module_output_name" and value != "token_embeddings":
            raise refuse(model, name, key, value, "it pools the token embeddings")
        elif key == "processing_kwargs" and value:
            raise refuse(model, name, key, value, "it tokenizes with the tokenizer's own settings")
        elif key == "document_length":
            checked(value, (int, type(None)), model, name, key)
        elif key in ARGUMENT_KEYS:
            extra = set(checked(value, dict, model, name, key)) - HARMLESS_ARGUMENTS[ARGUMENT_KEYS[key]]
            if extra:
                raise refuse(model, name, key, {k: value[k] for k in sorted(extra)}, "it loads the model as saved")
        elif key not in ("transformer_task", "modality_config", "module_output_name", "processing_kwargs",
                         *QUERY_ONLY_KEYS):
            raise refuse(model, name, key, value, "a setting this build does not know")
    limit = config.get("document_length") or config.get("max_seq_length")  # documents are cut at document_length
    return limit if limit is not None else _tokenizer_limit(model, revision)


def check_normalize(model: str, revision: str | None, folder: str) -> None:
    """Normalize has no settings before sentence-transformers 6 (and its empty folder is not on the
    Hub); from 6 on it may name the features it normalizes: only the sentence embedding is reproduced."""
    name = f"{folder}/config.json"
    config = checked(read_json(model, revision, name) or {}, dict, model, name)
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, "sentence_embedding"):
            raise refuse(model, name, key, config[key], "it normalizes the sentence embedding")


def _pooling(config: dict, model: str, name: str) -> tuple[str, bool]:
    mode = config.get("pooling_mode")
    if mode is None:  # the files of sentence-transformers before v6: one flag per mode
        flags = [mode for key, mode in LEGACY_FLAGS.items() if checked(config.get(key, False), bool, model, name, key)]
        mode = flags or ["mean"]  # its default: mean
    if isinstance(mode, list) and len(mode) == 1:  # a list of one mode is that mode
        mode = mode[0]
    if mode not in POOLINGS:
        raise BuildError(f"--model {model} pools with {mode!r} in {name}, which this build cannot reproduce "
                         f"(it pools {', '.join(POOLINGS)}): pick a model with one of those")
    return mode, checked(config.get("include_prompt", True), bool, model, name, "include_prompt")


def _prompts(model: str, revision: str | None) -> tuple[str, str]:
    """The prompts sentence-transformers' `encode_document` and `encode_query` put before a text,
    after checking the keys of config_sentence_transformers.json that change a vector."""
    name = "config_sentence_transformers.json"
    config = checked(read_json(model, revision, name) or {}, dict, model, name)
    if config.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        raise refuse(model, name, "model_type", config["model_type"], "it reproduces SentenceTransformer models")
    if config.get("truncate_dim") is not None:
        raise refuse(model, name, "truncate_dim", config["truncate_dim"], "pass --dim to keep fewer values")
    prompts = checked(config.get("prompts") or {}, dict, model, name, "prompts")
    for key, value in prompts.items():
        checked(value, str, model, name, f"prompts.{key}")
    default = checked(config.get("default_prompt_name"), (str, type(None)), model, name, "default_prompt_name")
    if default is not None and default not in prompts:
        raise refuse(model, name, "default_prompt_name", default, "it names no prompt in prompts")
    document = next((prompt for prompt in DOCUMENT_PROMPTS if prompt in prompts), default)
    query = "query" if "query" in prompts else default
    return (prompts[document] if document else ""), (prompts[query] if query else "")


def plain_recipe(model: str, revision: str | None) -> Recipe:
    """What `SentenceTransformer(folder)` builds for a folder without its files: Transformer ->
    Pooling, no Normalize, no prompt; last-token pooling for a causal language model (its first
    architecture a *ForCausalLM, not marked is_causal: false), mean otherwise. It applies the
    tokenizer's chat template where there is one: refused."""
    config = checked(read_json(model, revision, "config.json") or {}, dict, model, "config.json")
    architectures = config.get("architectures") or [""]
    causal = str(architectures[0]).endswith("ForCausalLM") and config.get("is_causal", True) is not False
    tokenizer_config = read_json(model, revision, "tokenizer_config.json") or {}
    if (isinstance(tokenizer_config, dict) and tokenizer_config.get("chat_template")) or \
            model_file(model, revision, "chat_template.jinja") is not None:
        raise BuildError(f"--model {model} has no sentence-transformers files (modules.json) and its tokenizer "
                         "has a chat template, which SentenceTransformer(folder) applies to every text and this "
                         "build does not: save the model with sentence-transformers (modules.json) first")
    return Recipe("lasttoken" if causal else "mean", False, "", _tokenizer_limit(model, revision), "transformers")


def _tokenizer_limit(model: str, revision: str | None) -> int | None:
    """The longest input without a max_seq_length: the tokenizer's model_max_length, capped at
    the model's position embeddings (as sentence-transformers caps it)."""
    tokenizer_config = read_json(model, revision, "tokenizer_config.json") or {}
    config = read_json(model, revision, "config.json") or {}
    tokenizer_config = tokenizer_config if isinstance(tokenizer_config, dict) else {}
    config = config if isinstance(config, dict) else {}
    # transformers writes a huge model_max_length (1e30) for "no limit".
    limits = [limit for limit in (tokenizer_config.get("model_max_length"), config.get("max_position_embeddings"))
              if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < 1e9]
    return int(min(limits)) if limits else None
