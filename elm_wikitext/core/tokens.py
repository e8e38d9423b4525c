"""The embedding model's tokens of a text: its tokenizer, and the one way every stage tokenizes.

The text stage counts tokens to filter by length, the embed stage feeds the ids to the model, and
`--verify` and `Embedder` tokenize again: all through `token_ids`, so that they always agree (the
embed stage checks that they do).
"""

import weakref
from pathlib import Path

from huggingface_hub import constants
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import HubId, check_on_hub, looks_like_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def model_on_hub(model: str, revision: str | None) -> HubId | None:
    """`model` as a Hub id to ask about before loading it; None for a local one, or offline."""
    if Path(model).exists() or looks_like_path(model) or constants.HF_HUB_OFFLINE:
        return None
    return HubId("--model", model, revision, "model", "pass a local model directory, or run once online "
                 "and then set HF_HUB_OFFLINE=1 to use the cached copy")


def load_tokenizer(model: str, revision: str | None = None):
    """The model's tokenizer; the first thing a build fetches of the model, so a Hub id is checked
    here with one quick request."""
    from_hub = not Path(model).is_dir()
    if not from_hub:
        if not any((Path(model) / name).is_file() for name in TOKENIZER_FILES):
            raise BuildError(f"--model {model} holds no tokenizer ({', '.join(TOKENIZER_FILES)}): "
                             "save the model's tokenizer there, or pass a Hub model id")
    elif looks_like_path(model):
        raise BuildError(f"--model {model} does not exist: pass a local model directory or a Hub model id")
    elif hub_id := model_on_hub(model, revision):
        check_on_hub(hub_id)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    except (OSError, ValueError) as err:
        if from_hub and constants.HF_HUB_OFFLINE:
            raise BuildError(f"--model {model} is not in the local cache and HF_HUB_OFFLINE=1 is set: "
                             "run once online to cache it, or pass a local model directory") from None
        raise BuildError(f"cannot load a tokenizer from --model {model} ({err}): pass a Hub model id "
                         "or a directory with tokenizer.json / tokenizer_config.json") from None
    return tokenizer


def check_tokenizer(tokenizer, recipe, model: str) -> None:
    """Last-token pooling reads the end-of-text token the tokenizer appends: refuse one that adds none."""
    probe = tokenizer("probe")["input_ids"]
    if recipe.pooling == "lasttoken" and probe == tokenizer("probe", add_special_tokens=False)["input_ids"]:
        raise BuildError(f"the tokenizer of {model} does not append an end-of-text token, which "
                         "last-token pooling reads: use the embedding model's own tokenizer")


def token_ids(texts: list[str], tokenizer, prompt: str = "") -> list[list[int]]:
    """Each text's token ids as the model consumes them, `prompt` put before it (the model's
    document prompt, as sentence-transformers puts it) and the special tokens added (Qwen3's
    end-of-text, BERT's [CLS] and [SEP]); the same as `tokenizer(texts)["input_ids"]`, in about
    half the time: the Rust tokenizer's batch call that skips the character offsets, which
    nothing here reads."""
    if prompt:
        texts = [prompt + text for text in texts]
    backend = _plain_backend(tokenizer)
    if backend is None:  # a tokenizer written in Python
        return tokenizer(texts, add_special_tokens=True)["input_ids"]
    return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=True)]


# A tokenizer's Rust tokenizer where it truncates or pads, copied once without either (as
# transformers calls it for one text): the caller's tokenizer is left as it is.
_PLAIN_BACKENDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _plain_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    if backend.truncation is None and backend.padding is None:  # already plain: a copy of a large
        return backend  # vocabulary takes a second or two
    if tokenizer not in _PLAIN_BACKENDS:
        plain = Tokenizer.from_str(backend.to_str())
        plain.no_truncation()
        plain.no_padding()
        _PLAIN_BACKENDS[tokenizer] = plain
    return _PLAIN_BACKENDS[tokenizer]
