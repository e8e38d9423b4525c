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
The methods take turns for --repeats rounds; the report gives each one's median and the ratios
round by round. --compile then measures (a) with the layers compiled, as build.py does on a GPU
(--compile auto) or anywhere with --compile yes; --profile prints the operators that take one
full batch's time (eager, and compiled with --compile).
"""

import argparse
import json
import time

import numpy as np
import torch
from transformers import Qwen3Config, Qwen3Model

from elm_wikitext.embed.encode import Encoder, compile_layers, embed_ids, embed_rows, token_batches
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

    if encoder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(encoder.device, run)
    tokens, computed, batches = run.stats
    result = report(tokens, computed, seconds, batches=batches)
    if encoder.device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        result["mfu"] = round(result["tokens_per_s"] * FLOP_PER_TOKEN / H100_PEAK, 3)
    return result


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


def sentence_transformers_model(model_dir: str):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(model_dir, processor_kwargs={"padding_side": "left"})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def sentence_transformers_encode(st, texts: list[str], ids, batch_size: int) -> dict:
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


def profile_batch(encoder: Encoder, ids: list[list[int]], budget: int, top: int = 15) -> str:
    """The operators (and on GPU the kernels) that take the time of one full batch."""
    from torch.profiler import ProfilerActivity, profile

    lengths = np.array([len(row) for row in ids])
    batch = max(token_batches(lengths, budget), key=len)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if encoder.device.type == "cuda" else [])
    try:
        with profile(activities=activities) as prof:
            timed(encoder.device, lambda: embed_rows(encoder, [ids[i] for i in batch]))
    except RuntimeError as err:  # a profiler that cannot start must not cost the rest of a GPU run
        return f"no profile: {err}"
    key = "self_device_time_total" if encoder.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top)


def median_of(rounds: list[dict]) -> dict:
    """Each method's median run over the rounds (by tokens/s), with the range of tokens/s."""
    out = {}
    for name in rounds[0]:
        runs = sorted((r[name] for r in rounds), key=lambda run: run["tokens_per_s"])
        out[name] = {**runs[len(runs) // 2], "tokens_per_s_range": [runs[0]["tokens_per_s"], runs[-1]["tokens_per_s"]]}
    return out


def ratios(rounds: list[dict], budget: int) -> dict:
    """(a) over (c) and over the better (b), round by round: the methods took turns, so each
    ratio compares runs made under the same load."""
    a = [r[f"a_this_build_{budget}"]["tokens_per_s"] for r in rounds]
    over_c = [x / r["c_plan_loop_batch8"]["tokens_per_s"] for x, r in zip(a, rounds)]
    out = {"a_over_c": [round(v, 2) for v in over_c]}
    if any(name.startswith("b_") for name in rounds[0]):
        best_b = [max(v["tokens_per_s"] for k, v in r.items() if k.startswith("b_")) for r in rounds]
        out["a_over_best_b"] = [round(x / b, 2) for x, b in zip(a, best_b)]
    return {name: {"median": round(float(np.median(values)), 2), "each_round": values} for name, values in out.items()}


def compiled_runs(encoder: Encoder, tokenizer, texts, ids, budgets: list[int], repeats: int, profile: bool) -> dict:
    """(a) with `compile_layers`: its warm-up (the two graphs dynamo makes), then the same rounds
    and budgets; recompilations during them are counted, and the vectors are compared with eager ones."""
    from torch._dynamo.utils import counters

    eager = embed_ids(encoder, ids[:64])
    warm_up = timed(encoder.device, lambda: compile_layers(encoder))
    graphs = counters["stats"]["unique_graphs"]
    rounds = [{f"a_compiled_{budget}": this_build(encoder, tokenizer, texts, budget) for budget in budgets}
              for _ in range(repeats)]
    cosine = round(float((embed_ids(encoder, ids[:64]) * eager).sum(dim=1).min()), 6)
    if profile:
        print("compiled:\n" + profile_batch(encoder, ids, budgets[-1]), flush=True)
    return {"warm_up_seconds": round(warm_up, 1), "min_cosine_to_eager": cosine, "graphs_after_warm_up": graphs,
            "graphs_after_runs": counters["stats"]["unique_graphs"], "median": median_of(rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cpu", "qwen3-4b"], default="cpu")
    parser.add_argument("--paragraphs", type=int, default=400)
    parser.add_argument("--baseline-paragraphs", type=int, default=None,
                        help="paragraphs for the slow baselines (default: all)")
    parser.add_argument("--budgets", default="16384,65536", help="token budgets of (a) to compare")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--repeats", type=int, default=5,
                        help="rounds in which every method runs once, in turn; medians are reported")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="then compile the layers (--compile of build.py) and measure (a) again")
    parser.add_argument("--profile", action="store_true", help="print the operators of one full batch")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if device.type == "cuda" else torch.float32
    tokenizer = build_qwen_tokenizer()
    texts, ids = paragraphs(tokenizer, args.paragraphs)
    torch.manual_seed(0)
    config = qwen3_4b_config() if args.model == "qwen3-4b" else cpu_config()
    with torch.device(device):
        model = Qwen3Model(config).to(dtype).eval()
    model.set_attn_implementation("sdpa")
    encoder = Encoder(model, tokenizer.pad_token_id, config.hidden_size, device)
    embed_ids(encoder, ids[:4])  # warm-up: kernels, allocator
    budgets = [int(b) for b in args.budgets.split(",")]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "model": args.model, "dtype": str(dtype), "paragraphs": len(ids),
               "tokens": int(sum(len(r) for r in ids)), "torch": torch.__version__, "repeats": args.repeats}

    few = args.baseline_paragraphs or len(ids)
    st_models = {}
    if device.type == "cpu" and not args.skip_baselines:
        import tempfile

        with tempfile.TemporaryDirectory() as model_dir:
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            st_models = {batch_size: sentence_transformers_model(model_dir) for batch_size in (8, 32)}
    rounds = []
    for _ in range(args.repeats):  # the methods take turns, so a change of load hits them all
        runs = {f"a_this_build_{budget}": this_build(encoder, tokenizer, texts, budget) for budget in budgets}
        if not args.skip_baselines:
            runs["c_plan_loop_batch8"] = plan_loop(encoder, tokenizer, texts[:few])
            for batch_size, st in st_models.items():
                runs[f"b_sentence_transformers_batch{batch_size}"] = sentence_transformers_encode(
                    st, texts[:few], ids[:few], batch_size)
        rounds.append(runs)
        print(json.dumps(runs), flush=True)
    results["median"] = median_of(rounds)
    if not args.skip_baselines:
        results["ratios"] = ratios(rounds, budgets[-1])
    if device.type == "cuda":
        results["float16_vs_float32_min_cosine"] = half_vs_full(encoder, ids[:64])
    if args.profile:
        print("eager:\n" + profile_batch(encoder, ids, budgets[-1]), flush=True)
    if args.compile:
        try:
            results["compiled"] = compiled_runs(encoder, tokenizer, texts, ids, budgets, args.repeats,
                                                args.profile)
        except Exception as err:  # a compiler that fails (no C compiler, a Triton error) must not cost
            results["compiled"] = {"error": f"{type(err).__name__}: {err}"[:2000]}  # the eager figures
    print(json.dumps(results, indent=2))
    base = results["median"].get("c_plan_loop_batch8", {}).get("tokens_per_s")
    for name, result in {**results["median"], **results.get("compiled", {}).get("median", {})}.items():
        versus = f"  {result['tokens_per_s'] / base:5.2f}x (c)" if base else ""
        print(f"{name:38s} {result['tokens_per_s']:>9,} tok/s  padding {result['padding_share']:6.1%}{versus}")


if __name__ == "__main__":
    main()
