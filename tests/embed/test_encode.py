import time

import numpy as np
import pytest
import torch
from transformers import Qwen3Config, Qwen3Model

from elm_wikitext.embed.encode import embed_ids, embed_rows, load_encoder, model_identity, token_batches
from elm_wikitext.core.errors import BuildError

TEXTS = [
    "The river rises in the northern hills and flows south for 120 km before it reaches the sea.",
    "A short one.",
    "The composer wrote twelve songs, an opera and a great deal of church music, most of it "
    "for the choir he led for forty years; little of it was printed in his lifetime.",
    "Storms of that season caused flooding along the coast.",
]


@pytest.fixture(scope="module")
def encoder(tiny_model, tokenizer):
    return load_encoder(tiny_model, None, "float16", None, tokenizer.pad_token_id)


def reference_vectors(model_dir: str, texts: list[str]) -> np.ndarray:
    """sentence-transformers' configuration of Qwen3-Embedding: Transformer -> Pooling('lasttoken')
    -> Normalize, padding on the left."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(model_dir, processor_kwargs={"padding_side": "left"})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    return model.encode(texts, batch_size=len(texts), convert_to_numpy=True)


def test_vectors_match_sentence_transformers(encoder, tokenizer, tiny_model):
    ids = tokenizer(TEXTS)["input_ids"]
    ours = embed_ids(encoder, ids).numpy()
    reference = reference_vectors(tiny_model, TEXTS)
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= 0.99999, cosine


def test_alone_equals_in_a_padded_batch(encoder, tokenizer):
    ids = tokenizer(TEXTS)["input_ids"]
    batch = embed_ids(encoder, ids)
    for i, row in enumerate(ids):
        alone = embed_ids(encoder, [row])[0]
        assert torch.dot(alone, batch[i]).item() >= 0.9999


def test_vectors_are_unit_norm_and_matryoshka_cut(tiny_model, tokenizer):
    encoder = load_encoder(tiny_model, None, "float16", 32, tokenizer.pad_token_id)
    full = load_encoder(tiny_model, None, "float16", None, tokenizer.pad_token_id)
    ids = tokenizer(TEXTS)["input_ids"]
    cut, whole = embed_ids(encoder, ids), embed_ids(full, ids)
    assert cut.shape == (len(TEXTS), 32) and whole.shape == (len(TEXTS), 64)
    assert torch.allclose(cut.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    assert torch.allclose(cut, torch.nn.functional.normalize(whole[:, :32], dim=1), atol=1e-5)


def test_non_finite_rows_are_recomputed_in_float32(encoder, tokenizer):
    """A half-precision model that overflows on a row gets that row from float32 weights."""
    ids = tokenizer(TEXTS)["input_ids"]
    expected = embed_ids(encoder, ids)
    # "eager" stands for FlashAttention here: a kernel the float32 pass must not use.
    encoder.model.half().set_attn_implementation("eager")
    original, float32_attention = encoder.model.forward, []

    def overflowing(*args, **kwargs):
        out = original(*args, **kwargs)
        if out.last_hidden_state.dtype == torch.float16:
            out.last_hidden_state[1, :, 0] = float("inf")
        else:
            float32_attention.append(encoder.model.config._attn_implementation)
        return out

    encoder.model.forward = overflowing
    try:
        vectors, recomputed = embed_rows(encoder, ids)
        assert encoder.dtype == torch.float16 and encoder.model.config._attn_implementation == "eager"
    finally:
        del encoder.model.forward
        encoder.model.float().set_attn_implementation("sdpa")
    assert recomputed == 1 and float32_attention == ["sdpa"]
    assert torch.isfinite(vectors).all()
    assert torch.dot(vectors[1], expected[1]).item() >= 0.9999


def test_a_tokenizer_without_a_pad_token_still_batches(tiny_model, tokenizer):
    ids = tokenizer(TEXTS)["input_ids"]
    padded = load_encoder(tiny_model, None, "float16", None, tokenizer.pad_token_id)
    unpadded = load_encoder(tiny_model, None, "float16", None, None)
    assert torch.allclose(embed_ids(unpadded, ids), embed_ids(padded, ids), atol=1e-6)


def test_token_batches_cap_budget_and_padding():
    lengths = np.random.default_rng(0).integers(100, 2001, size=2000)
    batches = token_batches(lengths, 16384)
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    computed = sum(len(b) * lengths[b].max() for b in batches)
    assert all(len(b) * lengths[b].max() <= 16384 for b in batches)
    assert 1 - lengths.sum() / computed <= 0.03


def test_refuses_partial_weights(tiny_model, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1." not in k}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(BuildError, match="lacks .* weights"):
        load_encoder(str(broken), None, "float16", None, 0)


def test_a_hub_model_is_named_by_the_commit_of_its_cached_files(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "models--someone--embedder"
    for commit in ("1111aaaa", "2222bbbb"):
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("2222bbbb")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_identity("someone/embedder", None) == "2222bbbb"  # where main points now
    assert model_identity("someone/embedder", "1111aaaa") == "1111aaaa"


def test_out_of_memory_halves_the_batch_and_retries(encoder, tokenizer, monkeypatch, caplog):
    """A batch that does not fit is split in two, each half retried once the failed attempt's
    tensors are freed (a retry inside `except` would keep them alive through the traceback);
    the vectors are unchanged."""
    import weakref

    from elm_wikitext.embed import encode

    ids = tokenizer(TEXTS)["input_ids"]
    expected = embed_ids(encoder, ids)
    real, sizes, failed_batches, alive_at_retry = encode.embed_ids, [], [], []

    def small_memory(enc, rows):
        sizes.append(len(rows))
        alive_at_retry.append(sum(ref() is not None for ref in failed_batches))
        if len(rows) > 1:
            activations = torch.ones(len(rows), 1000)  # what the forward had allocated
            failed_batches.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(enc, rows)

    monkeypatch.setattr(encode, "embed_ids", small_memory)
    vectors, _ = embed_rows(encoder, ids)
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    assert alive_at_retry == [0] * len(sizes)
    assert "retrying as two halves" in caplog.text
    assert torch.allclose(vectors, expected, atol=1e-5)


# Vectors of a fixed model (weights drawn from a seeded generator, not from transformers' init) for
# fixed token ids, computed by the code of EMBED_VERSION. Changing the math fails this test until
# EMBED_VERSION is bumped (so that no build resumes from old chunks) and these values go with it.
EMBED_REFERENCE_VERSION = 2
EMBED_REFERENCE = [[-0.0462, 0.1184, -0.2047, -0.3162, 0.1134, -0.2353],
                   [-0.0332, 0.0637, -0.1929, -0.1708, 0.19, -0.2506],
                   [-0.0964, -0.0072, -0.3732, -0.0108, 0.1507, -0.1968]]

def test_planned_flops_and_time_follow_the_4b_architecture_and_the_compile_setting(tmp_path):
    from transformers import Qwen3Config

    from elm_wikitext.embed.chunks import plan_chunks
    from elm_wikitext.embed.encode import MEASURED_MFU, estimate_embedding, row_flops

    Qwen3Config(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, intermediate_size=9728).save_pretrained(tmp_path)  # Qwen3-Embedding-4B's shape
    lengths = np.full(2600, 300)
    flops = row_flops(str(tmp_path), None, lengths)
    assert flops[0] / 300 == pytest.approx(7.35e9, rel=0.01)  # per token, at a few hundred tokens
    chunks = plan_chunks(lengths, chunk_tokens=30_000)  # 26 chunks of 100 rows
    compiled, eager = (estimate_embedding(flops, chunks, setting, 8, "H100", measure_cpu=lambda: 1e11)
                       for setting in ("auto", "no"))
    assert compiled["chunks"] == 26 and compiled["gpus_chunks"] == 4  # 26 chunks over 8 GPUs: 4 on the busiest
    assert compiled["gpus_seconds"] == pytest.approx(4 * 100 * flops[0] / (989e12 * MEASURED_MFU["compiled"]))
    assert eager["gpus_seconds"] / compiled["gpus_seconds"] == pytest.approx(0.53 / 0.35)
    assert (compiled["gpus_compiled"], eager["gpus_compiled"]) == (True, False)
    assert compiled["device_compiled"] == torch.cuda.is_available()  # auto: compiled on a GPU only
    assert compiled["tflop"] == pytest.approx(flops.sum() / 1e12)
    if not torch.cuda.is_available():  # a CPU at the rate measured on it
        assert (compiled["device_seconds"], compiled["cpu_flops"]) == (pytest.approx(flops.sum() / 1e11), 1e11)


def test_the_cpu_rate_is_measured_on_the_models_shape(tiny_model):
    from elm_wikitext.embed.encode import cpu_rate

    started = time.perf_counter()
    rate = cpu_rate(tiny_model, None, repeats=1)
    assert 1e7 < rate < 1e14 and time.perf_counter() - started < 30  # FLOP/s of some real CPU, measured briefly


def reference_model(directory) -> str:
    config = Qwen3Config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    model = Qwen3Model(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    model.save_pretrained(directory)
    return str(directory)


def test_vectors_changed_only_with_embed_version(tmp_path):
    from elm_wikitext.embed.encode import EMBED_VERSION

    from elm_wikitext.core.recipe import Recipe

    # The last token's state, normalized (a plain folder would be pooled by mean, as sentence-transformers does).
    encoder = load_encoder(reference_model(tmp_path), None, "float16", 32, 0, recipe=Recipe())
    ids = [[17, 200, 3, 99, 255], [5, 6, 7, 8, 9, 10, 11, 12, 255], [42, 255]]
    values = embed_ids(encoder, ids)[:, :6].double().numpy().round(4).tolist()
    assert EMBED_VERSION == EMBED_REFERENCE_VERSION, (
        "EMBED_VERSION was bumped: set EMBED_REFERENCE_VERSION and EMBED_REFERENCE to the new values")
    assert np.shape(values) == np.shape(EMBED_REFERENCE) and np.allclose(values, EMBED_REFERENCE, atol=2e-4), (
        f"the vectors changed: bump EMBED_VERSION in elm_wikitext/embed/encode.py, then set "
        f"EMBED_REFERENCE_VERSION = {EMBED_VERSION + 1} and EMBED_REFERENCE = {values}")


@pytest.mark.parametrize("kind", ["qwen3-lasttoken", "bert-mean", "bert-cls", "t5-mean", "plain-qwen3", "plain-bert"])
def test_every_model_kind_equals_sentence_transformers_encode(st_models, kind, sample_dir):
    """The model's own recipe, through the build's batches (right padding, a mask for encoders):
    the vectors sentence-transformers' encode_document gives, row for row."""
    from sentence_transformers import SentenceTransformer

    from elm_wikitext.core.tokens import load_tokenizer, token_ids

    texts = [line for line in (sample_dir / "wiki.train.raw").read_text(encoding="utf-8").splitlines()
             if len(line) > 80][:12]
    tokenizer = load_tokenizer(st_models[kind])
    encoder = load_encoder(st_models[kind], None, "float32", None, tokenizer.pad_token_id)
    ids = token_ids(texts, tokenizer, encoder.recipe.prompt)
    ours = np.concatenate([embed_ids(encoder, [ids[i] for i in batch]).numpy()
                           for batch in token_batches(np.array([len(row) for row in ids]), 2048)])
    order = np.concatenate(token_batches(np.array([len(row) for row in ids]), 2048))
    reference = SentenceTransformer(st_models[kind], device="cpu").encode_document(texts, batch_size=5)[order]
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.99999, cosine
    assert np.allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-4)  # normalized or not, alike


def test_a_bert_checkpoint_without_pooler_weights_embeds_as_sentence_transformers_does(st_models, sample_dir, tmp_path):
    """Many BERT checkpoints lack the pooler BertModel adds; nothing reads it (sentence-transformers
    pools the last hidden states too, and loads such a checkpoint with a warning)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    from elm_wikitext.core.tokens import load_tokenizer, token_ids

    folder = shutil.copytree(st_models["bert-mean"], tmp_path / "no-pooler")
    weights = load_file(folder / "model.safetensors")
    assert any(name.startswith("pooler.") for name in weights)  # the fixture's checkpoint has one to drop
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, folder / "model.safetensors",
              metadata={"format": "pt"})
    texts = [line for line in (sample_dir / "wiki.valid.raw").read_text(encoding="utf-8").splitlines() if len(line) > 80][:4]
    tokenizer = load_tokenizer(str(folder))
    encoder = load_encoder(str(folder), None, "float32", None, tokenizer.pad_token_id)
    ours = np.concatenate([embed_ids(encoder, [row]).numpy() for row in token_ids(texts, tokenizer, encoder.recipe.prompt)])
    reference = SentenceTransformer(str(folder), device="cpu").encode_document(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
