"""Embedding throughput: this build's batching against the usual alternatives, in one run.

Same model, same paragraphs (random words with WikiText-2's paragraph-length profile, 100 to
2000 tokens), each compared in tokens/s of real (unpadded) tokens and in padding share:

  (a) this build: sort by length, token-budget batches, at most 3% padding (encode.py);
  (b) sentence-transformers `encode` at batch size 8 and 32 (CPU only: it needs a saved model);
  (c) the earlier plan's loop: batches of 8 in dataset order, padded to the longest.

    python benchmarks/embed_speed.py                       # CPU: hidden 256, 4 layers
    python benchmarks/embed_speed.py --model qwen3-4b --paragraphs 15000 --baseline-paragraphs 1500

On a GPU the model is Qwen3-Embedding-4B's architecture with random weights in float16, and
the report adds MFU (tokens/s x 7.35 GFLOP/token over the H100's 989 TFLOP/s) and peak memory.
"""

import argparse
import json
import time

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3Model

from elm_wikitext.encode import Encoder, embed_ids, embed_rows, token_batches
from elm_wikitext.tiny import QWEN3_VOCAB_SIZE, build_qwen_tokenizer

FLOP_PER_TOKEN = 7.35e9  # Qwen3-Embedding-4B at a few hundred tokens (../shared/REFERENCE.md)
H100_PEAK = 989e12
WORDS = ("the of and in to a was is for on as with by he at from his an were are which this also "
         "river album season army game team ship storm church war government series film , . ( ) ;").split()


def qwen3_4b_config() -> Qwen3Config:
    return Qwen3Config(vocab_size=151665, hidden_size=2560, intermediate_size=9728,
                       num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000)


def cpu_config() -> Qwen3Config:
    return Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, hidden_size=256, intermediate_size=768,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def paragraphs(tokenizer, count: int, seed: int = 0) -> tuple[list[str], list[list[int]]]:
    """Random-word paragraphs whose token counts follow WikiText-2's kept paragraphs."""
    rng = np.random.default_rng(seed)
    targets = np.clip(rng.lognormal(mean=5.2, sigma=0.55, size=count), 100, 2000).astype(int)
    texts, ids = [], []
    for target in targets:
        words = rng.choice(WORDS, size=int(target * 0.8))
        row = tokenizer(" ".join(words))["input_ids"][-target:]
        texts.append(tokenizer.decode(row[:-1]))
        ids.append(row)
    return texts, ids


def timed(device: torch.device, fn) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def this_build(encoder: Encoder, tokenizer, texts: list[str], budget: int) -> dict:
    """Tokenize once, then sorted token-budget batches (what embed.py does chunk by chunk)."""
    def run():
        ids = tokenizer(texts)["input_ids"]
        lengths = np.array([len(row) for row in ids])
        batches = token_batches(lengths, budget)
        for batch in batches:
            embed_rows(encoder, [ids[i] for i in batch])
        run.stats = (int(lengths.sum()), sum(len(b) * int(lengths[b].max()) for b in batches), len(batches))

    seconds = timed(encoder.device, run)
    tokens, computed, batches = run.stats
    return report(tokens, computed, seconds, batches=batches)


@torch.inference_mode()
def plan_loop(encoder: Encoder, tokenizer, texts: list[str], batch_size: int = 8) -> dict:
    """The earlier plan: batches of 8 in dataset order, tokenized and padded to their longest."""
    tokens = computed = 0

    def run():
        nonlocal tokens, computed
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, return_tensors="pt")
            tokens += int(batch["attention_mask"].sum())
            computed += batch["attention_mask"].numel()
            hidden = encoder.model(**batch.to(encoder.device)).last_hidden_state[:, -1]
            torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()

    seconds = timed(encoder.device, run)
    return report(tokens, computed, seconds, batches=-(-len(texts) // batch_size))


def sentence_transformers_encode(model_dir: str, texts: list[str], ids, batch_size: int) -> dict:
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(model_dir, processor_kwargs={"padding_side": "left"})
    st = SentenceTransformer(modules=[transformer, models.Pooling(
        transformer.get_embedding_dimension(), pooling_mode="lasttoken"), models.Normalize()],
        device="cpu")
    lengths = np.array([len(row) for row in ids])
    order = np.argsort(-lengths, kind="stable")  # encode sorts by length too
    computed = sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
                   for i in range(0, len(order), batch_size))
    seconds = timed(torch.device("cpu"), lambda: st.encode(texts, batch_size=batch_size))
    return report(lengths.sum(), computed, seconds, batches=-(-len(texts) // batch_size))


def half_vs_full(encoder: Encoder, ids: list[list[int]]) -> float:
    """How far the half-precision vectors are from float32 ones (random weights)."""
    half = embed_ids(encoder, ids)
    dtype = encoder.dtype
    encoder.model.float()
    full = embed_ids(encoder, ids)
    encoder.model.to(dtype)
    return round(float((half * full).sum(dim=1).min()), 6)


def report(tokens: int, computed: int, seconds: float, **extra) -> dict:
    return {"tokens_per_s": round(float(tokens) / seconds), "padding_share": round(1 - tokens / computed, 4),
            "seconds": round(seconds, 2), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cpu", "qwen3-4b"], default="cpu")
    parser.add_argument("--paragraphs", type=int, default=240)
    parser.add_argument("--baseline-paragraphs", type=int, default=None,
                        help="paragraphs for the slow baselines (default: all)")
    parser.add_argument("--budgets", default="16384,65536", help="token budgets of (a) to compare")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--skip-baselines", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    tokenizer = build_qwen_tokenizer()
    texts, ids = paragraphs(tokenizer, args.paragraphs)
    torch.manual_seed(0)
    config = qwen3_4b_config() if args.model == "qwen3-4b" else cpu_config()
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen3Model(config).to(dtype).eval()
    encoder = Encoder(model, tokenizer.pad_token_id, config.hidden_size, device)
    embed_ids(encoder, ids[:4])  # warm-up: kernels, allocator
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "model": args.model, "dtype": str(dtype), "paragraphs": len(ids),
               "tokens": int(sum(len(r) for r in ids)), "torch": torch.__version__}
    for budget in map(int, args.budgets.split(",")):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        results[f"a_this_build_{budget}"] = this_build(encoder, tokenizer, texts, budget)
        if device.type == "cuda":
            results[f"a_this_build_{budget}"]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            results[f"a_this_build_{budget}"]["mfu"] = round(
                results[f"a_this_build_{budget}"]["tokens_per_s"] * FLOP_PER_TOKEN / H100_PEAK, 3)
        print(json.dumps(results), flush=True)
    if device.type == "cuda":
        results["float16_vs_float32_min_cosine"] = half_vs_full(encoder, ids[:64])
    if args.skip_baselines:
        print(json.dumps(results, indent=2))
        return
    few = args.baseline_paragraphs or len(ids)
    results["c_plan_loop_batch8"] = plan_loop(encoder, tokenizer, texts[:few])
    if device.type == "cpu":
        import tempfile

        with tempfile.TemporaryDirectory() as model_dir:
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            for batch_size in (8, 32):
                results[f"b_sentence_transformers_batch{batch_size}"] = sentence_transformers_encode(
                    model_dir, texts[:few], ids[:few], batch_size)
    print(json.dumps(results, indent=2))
    base = results["c_plan_loop_batch8"]["tokens_per_s"]
    for name, result in results.items():
        if isinstance(result, dict):
            print(f"{name:38s} {result['tokens_per_s']:>9,} tok/s  padding {result['padding_share']:6.1%}"
                  f"  {result['tokens_per_s'] / base:5.2f}x (c)")


if __name__ == "__main__":
    main()
