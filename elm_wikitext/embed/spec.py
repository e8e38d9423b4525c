"""The embedding model resolved once per build (core/spec.py's `ModelSpec`): read and checked from
its config and files, no weights loaded."""

import logging
from pathlib import Path

from transformers import AutoConfig

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.recipe import model_recipe
from elm_wikitext.core.spec import ModelSpec, cached_commit, cached_weights, download_metadata
from elm_wikitext.core.tokens import check_tokenizer
from elm_wikitext.embed.encode import architecture, check_model_config

log = logging.getLogger(__name__)


def resolve_model(model: str, revision: str | None, model_id: str | None, dim: int | None, tokenizer) -> ModelSpec:
    """Read and check the model once, from its config and files (no weights loaded)."""
    dim = check_model_config(model, revision, dim, tokenizer)
    recipe = model_recipe(model, revision)
    check_tokenizer(tokenizer, recipe, model)
    kind = architecture(AutoConfig.from_pretrained(model, revision=revision), model)
    if Path(model).is_dir():
        commit, sha256 = download_metadata(Path(model))
        hub_id = model_id
    else:
        if model_id not in (None, model):
            raise BuildError(f"--model-id {model_id} names a local --model folder, and --model {model} is a "
                             "Hub id: leave --model-id out")
        commit, sha256, hub_id = cached_commit(model, revision), cached_weights(model, revision), model
    if recipe.origin == "transformers":
        log.info("--model %s has no sentence-transformers files (modules.json): embedding as "
                 "SentenceTransformer(folder) builds it: %s pooling, not normalized, no prompt", model, recipe.pooling)
    return ModelSpec(model, revision, hub_id, commit, sha256, kind, dim, recipe)
