"""The build, composed in one place: source -> text -> split -> embed -> output (card, Hub)."""

import contextlib
import dataclasses
import logging
import secrets
import time
from pathlib import Path

import numpy as np
from datasets import DatasetDict, concatenate_datasets
from huggingface_hub import HfApi

from elm_wikitext.embed.chunks import EmbedParams, embed_splits, plan_chunks
from elm_wikitext.embed.encode import (check_config_file, check_model_config, cpu_rate, estimate_embedding, gpu_peak,
                                       row_flops)
from elm_wikitext.core.reference import check_against_reference
from elm_wikitext.embed.spec import resolve_model
from elm_wikitext.core.tokens import load_tokenizer, model_on_hub
from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.processes import Processes, current_processes
from elm_wikitext.core.locations import check_on_hub, download_record, on_hub, resolved
from elm_wikitext.neighbors.params import NeighborParams
from elm_wikitext.neighbors.columns import neighbor_stats, save_vectors, split_vectors, with_neighbors, without_neighbors
from elm_wikitext.neighbors.search import nearest, search_flops
from elm_wikitext.core.schema import SPLIT_NAMES, expected_features, neighbor_columns
from elm_wikitext.options import BuildOptions
from elm_wikitext.publish.card import check_card_template, stage_hub_folder, token_counts, write_card
from elm_wikitext.publish.hub import HubParams, check_can_push, offline_preflight, preflight, push, upload_commands
from elm_wikitext.core.records import NeighborStats, TextStats, new_manifest
from elm_wikitext.publish.output import (NotWhole, check_hub_folder_location, check_output_location,
                                         check_writable_beside, columns_on_disk,
                                         make_work_folder, output_lock, output_path, read_output, recover_output,
                                         remove_finished_work, remove_work_folder, write_output)
from elm_wikitext.publish.verify import check_files, check_vectors, verify
from elm_wikitext.text.paragraphs import build_paragraphs
from elm_wikitext.text.source import is_raw, load_lines, source_on_hub
from elm_wikitext.text.params import TextParams
from elm_wikitext.text.split import make_splits

log = logging.getLogger(__name__)


def stage_params(kind: type, options: BuildOptions, **given):
    """A stage's own parameters (a frozen dataclass: TextParams, EmbedParams, NeighborParams,
    HubParams), each field the option of its name unless `given`: the stage reads nothing else."""
    named = {field.name: getattr(options, field.name) for field in dataclasses.fields(kind) if field.name not in given}
    return kind(**named, **given)


def text_params(options: BuildOptions) -> TextParams:
    return stage_params(TextParams, options, ratios=options.split_ratios())  # parsed from --split


def text_stage(options: BuildOptions, tokenizer, keep_ids: bool = False) -> tuple:
    """The splits of paragraphs, and the text stage's statistics (what the steps counted, and the
    settings they ran with); with `keep_ids`, the token ids too, for an embed stage in this process."""
    started = time.perf_counter()
    lines = load_lines(options.source, options.source_config, options.source_revision)
    params = text_params(options)
    paragraphs, counts = build_paragraphs(lines, tokenizer, params, keep_ids)
    # Each step's dataset maps its own file, and every page read of it stays in this process's
    # memory while the dataset lives: let each go once the next is written (0.8 GiB at WikiText-103).
    del lines
    splits = make_splits(paragraphs, params)
    del paragraphs
    stats = TextStats(
        **counts, source=options.source, source_config=options.source_config,
        raw=is_raw(options.source_config), source_revision=options.source_revision,
        split_by=options.split_by, split=options.split, seed=options.seed, min_tokens=options.min_tokens,
        max_tokens=options.max_tokens, tokenizer=options.model, tokenizer_revision=options.model_revision,
        splits={name: len(ds) for name, ds in splits.items()},
        tokens={name: int(ds.data.column("token_count").to_numpy().sum()) for name, ds in splits.items()},
        seconds=round(time.perf_counter() - started, 2), **source_identity(options))
    return splits, stats


def source_identity(options: BuildOptions) -> dict:
    """The source's Hub id and commit: a Hub id is its own; a local copy has the id the user
    gives (--source-id) and the commit `hf download --local-dir` recorded, if any."""
    if on_hub(options.source):
        return {"source_id": options.source, "source_commit": options.source_revision}
    return {"source_id": options.source_id, "source_commit": download_record(Path(options.source))[0]}


def check_publishable(options: BuildOptions) -> None:
    """A published card names the model and the source by their Hub ids, never by a path on this
    machine: a local folder needs its id before any work."""
    publishing = "--push" if options.push else "--hub-folder"
    for flag, name, given, example in (("--model", options.model, options.model_id, "Qwen/Qwen3-Embedding-4B"),
                                       ("--source", options.source, options.source_id, "Salesforce/wikitext")):
        if not on_hub(name) and not given:
            raise BuildError(f"{publishing} publishes the {flag[2:]}'s Hub id, and {flag} {name} is a local folder: "
                             f"pass {flag}-id with its Hub id (e.g. {flag}-id {example})")


def with_local_paths_resolved(options: BuildOptions) -> BuildOptions:
    """Local --source and --model as absolute paths: the manifest and the card then name them
    whatever directory a later --verify or --stage embed runs from."""
    return dataclasses.replace(options, source=resolved(options.source), model=resolved(options.model))


# The text stage's options, as its statistics in the manifest record them.
TEXT_SETTINGS = {"source": "source", "source_config": "source_config", "source_revision": "source_revision",
                 "min_tokens": "min_tokens", "max_tokens": "max_tokens", "split": "split",
                 "split_by": "split_by", "seed": "seed", "model": "tokenizer",
                 "model_revision": "tokenizer_revision", "source_id": "source_id"}


def with_text_settings(options: BuildOptions, text: TextStats) -> BuildOptions:
    """`--stage embed` continues the text stage: an option left at its default takes the text
    stage's value from the manifest; one given otherwise must agree with it. Another --model is
    allowed: the embed stage checks that its tokenizer counts the text stage's tokens."""
    defaults, taken = BuildOptions(), {}
    other_model = options.model not in (defaults.model, text.tokenizer)
    for option, key in TEXT_SETTINGS.items():
        if other_model and option in ("model", "model_revision"):
            continue  # another model's own
        given, recorded = getattr(options, option), getattr(text, key)
        if option == "source_id" and recorded is None:
            continue  # a local source named only now, at a later run: the card takes it (_build)
        if given != getattr(defaults, option) and given != recorded:
            flag = "--" + option.replace("_", "-")
            raise BuildError(f"{flag} {given} contradicts the text stage of --output {options.output}, "
                             f"made with {flag} {recorded}: leave {flag} out, or rebuild the text with --stage all "
                             f"{flag} {given} --drop-columns (the columns of the old text are dropped)")
        taken[option] = recorded
    return dataclasses.replace(options, **taken)


# The two folders a build keeps beside its --output, named here only: the embedding's finished
# chunks, which wait there until the output is written (a rerun resumes from them), and the Hub
# layout that --push stages and uploads.
def work_folder(output: str) -> Path:
    return beside(output, ".embed-work")


def hub_layout(output: str) -> Path:
    return beside(output, ".hub")


def beside(output: str, suffix: str) -> Path:
    target = output_path(output)  # a symlink's target, no trailing slash: beside it, never inside
    return target.parent / f"{target.name}{suffix}"


def build(options: BuildOptions, api=None) -> dict | None:
    """Run the stages that `options.stage` asks for, then publish if asked; return the
    statistics as JSON, as the manifest holds them, and the published version's line (main
    process). `api` is the Hub client (a stand-in in tests)."""
    options = with_local_paths_resolved(options)
    check_output_location(options.output, work_folder(options.output), hub_layout(options.output),
                          **{"--source": options.source, "--model": options.model})
    processes = current_processes()  # asked once: the stages are handed it
    if options.dry_run:  # one plan, from the main process
        return plan(options) if processes.is_main else None
    check_before_work(options)
    # One build per output at a time; the lock goes with the process, even after kill -9.
    with output_lock(options.output) if processes.is_main else contextlib.nullcontext():
        return _build(options, api or HfApi(), processes)


def _build(options: BuildOptions, api, processes: Processes) -> dict | None:
    """The build from top to bottom: what this run does, its input, the checks before any work, the
    text, the embedding (gates, reference check, neighbours), the output, the upload."""
    builds_text = options.stage != "embed"  # else its input is the text stage's --output
    embeds = options.stage != "text"
    if processes.is_main:
        recover_output(options.output)
    processes.wait()  # the others read the output only once it is whole again
    options, read, text = (options, None, None) if builds_text else read_text_stage(options)
    tokenizer, spec = check_inputs(options, reads_source=builds_text, embeds=embeds)
    # The output already there, its columns this run keeps (all but the one it embeds), their neighbours.
    earlier, others, other_neighbors = earlier_columns(options, read, embeds)
    hub = check_destination(options, api, spec, others, other_neighbors, processes.is_main)
    if builds_text:
        with processes.main_first():  # the others reuse the main process's cached maps
            splits, text = text_stage(options, tokenizer, keep_ids=embeds)
        splits, others, other_neighbors = keep_columns(splits, earlier, others, other_neighbors, options)
    else:
        splits = read[0]
    embed = neighbors = None
    if embeds:
        splits, embed, neighbors = embed_stage(splits, tokenizer, options, spec, earlier, processes)
    if not processes.is_main:
        return None
    stats = write(splits, options, text, earlier, {**others, options.column: embed} if embed is not None else others,
                  {**other_neighbors, **({options.column: neighbors} if neighbors else {})})
    if hub:
        stats.update(publish(options, hub, api))
    if embed is not None:  # only now: a rerun after a failed upload finds every vector done
        remove_finished_work(work_folder(options.output), embed.key)
    return stats


def read_text_stage(options: BuildOptions) -> tuple:
    """`--stage embed` starts from the text stage's output: the options with its settings, the
    output (splits, manifest) and its text record."""
    splits, manifest = read_output(options.output)
    options = with_text_settings(options, manifest.stats.text)
    text = manifest.stats.text
    if options.source_id and not text.source_id:
        text = dataclasses.replace(text, source_id=options.source_id)
    return options, (splits, manifest), text


def check_inputs(options: BuildOptions, reads_source: bool, embeds: bool) -> tuple:
    """The checks before any work that read the source's and the model's names and files: the
    tokenizer, and the model resolved once (None where this run does not embed)."""
    if options.push or options.hub_folder:  # what both publish names the model and source by Hub id
        check_publishable(options)
    if options.push:  # no Hub, no token: refused before the tokenizer or the model is read
        check_can_push()
    check_hub_ids(options, reads_source)
    check_config_file(options.model)  # a damaged config.json, before the tokenizer reads it
    tokenizer = load_tokenizer(options.model, options.model_revision)  # checks a Hub id first
    spec = None
    if embeds:  # a model whose recipe cannot be reproduced is refused before the text stage
        spec = resolve_model(options.model, options.model_revision, options.model_id, options.dim, tokenizer)
    return tokenizer, spec


def check_destination(options: BuildOptions, api, spec, others: dict, other_neighbors: dict,
                      is_main: bool) -> HubParams | None:
    """Where the output goes, checked before any work (by the main process, `is_main`): the Hub repo
    of --push, with the schema it will get, or the --hub-folder. The Hub's parameters with the
    repo id, or None."""
    hub = stage_params(HubParams, options)
    if options.push and is_main:
        dims = {**{column: stats.dim for column, stats in others.items()}, options.column: spec.dim}
        ks = {**{column: stats.k for column, stats in other_neighbors.items()},
              **({options.column: options.neighbors} if options.neighbors else {})}
        return preflight(hub, api, expected_features(dims, ks))
    if options.hub_folder and is_main:
        hub = offline_preflight(hub)
        check_hub_folder_location(options.hub_folder, options.output)
        return hub
    return None


def embed_stage(splits, tokenizer, options: BuildOptions, spec, earlier, processes: Processes) -> tuple:
    """The embedding column (an up-to-date output's vectors are reused, not recomputed), the
    build's gates on it, the check against sentence-transformers, and its neighbours (those the
    output records for these very vectors are kept)."""
    work = work_folder(options.output)
    splits, embed = embed_splits(splits, tokenizer, stage_params(EmbedParams, options), spec, work, processes,
                                 earlier)
    key = embed.key if embed is not None else None  # the main process's
    # The build's own gates: no vector that --verify would refuse is written (nor searched: every
    # process learns the main process's verdict, and stops with it).
    problems = check_vectors(splits, options.column, embed) if processes.is_main else None
    refuse_bad_vectors(processes.gather(problems)[0], work, key, processes.is_main)
    embed = checked_by_sentence_transformers(splits, options, embed, processes)
    recorded = earlier[1].stats.neighbors.get(options.column) if earlier else None
    params = stage_params(NeighborParams, options, k=options.neighbors)
    splits, neighbors = neighbors_stage(splits, key, params, work, recorded, processes)
    return splits, embed, neighbors


def write(splits, options: BuildOptions, text, earlier, columns: dict, all_neighbors: dict) -> dict:
    """The output, written whole with its manifest (and card, where it has vectors); its statistics as JSON."""
    splits, columns = in_earlier_order(splits, columns, earlier)
    all_neighbors = {column: all_neighbors[column] for column in columns if column in all_neighbors}
    manifest = new_manifest(options, text, columns, all_neighbors)
    write_output(splits, manifest, options.output, card=write_card if columns else None)
    return manifest.stats.to_json()


def check_hub_ids(options: BuildOptions, reads_source: bool) -> None:
    """The model and the source (where this run reads it), asked about together."""
    source = source_on_hub(options.source, options.source_revision) if reads_source else None
    check_on_hub(*filter(None, [source, model_on_hub(options.model, options.model_revision)]))


def earlier_columns(options: BuildOptions, read: tuple | None, embeds: bool) -> tuple:
    """The output already there (`read` by --stage embed), whose vectors may be reused, and the
    records of its columns that this run keeps: all but the one it embeds (a text stage: all)."""
    earlier = read or earlier_output(options, embeds)
    others = {column: stats for column, stats in earlier[1].stats.embed.items()
              if column != options.column or not embeds} if earlier else {}
    if earlier and not untouched(earlier, others, options, is_input=read is not None):  # nothing of it is reused
        return None, {}, {}
    neighbors = {column: stats for column, stats in earlier[1].stats.neighbors.items()
                 if column in others} if earlier else {}
    return earlier, others, neighbors


def in_earlier_order(splits, columns: dict, earlier: tuple | None) -> tuple:
    """The splits and column records with the columns in the order the output had them (a new
    one last), so that the card's first column stays first."""
    if not (earlier and columns):
        return splits, columns
    order = [column for column in earlier[1].stats.embed if column in columns]
    columns = {column: columns[column] for column in order + [c for c in columns if c not in order]}
    had = earlier[0]["train"].column_names  # each column beside its neighbours, as the output had them
    names = sorted(splits["train"].column_names, key=lambda name: had.index(name) if name in had else len(had))
    return splits.select_columns(names), columns


def check_before_work(options: BuildOptions) -> None:
    """What can be checked without the text or the model, each with its own remedy."""
    if options.push:
        options.check_push_options()
    check_writable_beside(options.output)
    check_card_template()


def earlier_output(options: BuildOptions, embeds: bool) -> tuple | None:
    """The output a rerun finds at --output, if it is a whole one of this build. One it cannot
    read whole (a manifest edited since, damaged files) holds columns that cannot be kept: the
    rebuild is refused unless --drop-columns lets it go without them."""
    try:
        return read_output(options.output)
    except NotWhole as err:  # one that cannot be trusted: nothing to reuse
        problem = err.problem
    except BuildError:  # none yet
        return None
    lost = columns_on_disk(options.output)
    own = (options.column, *neighbor_columns(options.column)) if embeds else ()  # rebuilt here
    lost = lost if lost is None else [column for column in lost if column not in own]
    if lost != [] and not options.drop_columns:
        held = f"its columns {', '.join(lost)}" if lost else "the columns it holds"
        raise BuildError(f"--output {options.output} cannot be read whole ({problem}), so this rebuild cannot "
                         f"keep {held}: pass --drop-columns to rebuild it without them (then add each again "
                         "with --stage embed --column NAME), or pass another --output")
    return None


def untouched(earlier: tuple, others: dict, options: BuildOptions, is_input: bool) -> bool:
    """Whether the output's files are as its build wrote them, so that its columns `others` can be
    kept as the build's and its vectors reused (a changed file's would pass into a new manifest
    unchecked). If not, the run is refused where it holds `others` or is this run's input (`is_input`,
    --stage embed), or goes on without reusing anything of it (False): with --drop-columns, or
    where it has no other column."""
    problems = check_files(*earlier, options.output)
    if not problems:
        return True
    if is_input:  # its text is this run's input: it is rebuilt, not trusted
        raise BuildError(f"--output {options.output} changed since its build ({problems[0]}): rebuild it with "
                         f"python build.py --stage all --drop-columns --output {options.output} and the options "
                         "you built it with, then add its columns again with --stage embed --column NAME")
    if not others or options.drop_columns:
        log.warning("%s changed since its build (%s): nothing of it is reused%s", options.output, problems[0],
                    f"; dropping its columns {', '.join(others)} (--drop-columns)" if others else "")
        return False
    raise BuildError(f"--output {options.output} changed since its build ({problems[0]}), so its columns "
                     f"{', '.join(others)} cannot be kept as the build's: pass --drop-columns to go on without them "
                     "(then embed each again with --stage embed --column NAME), or pass another --output")


def keep_columns(splits, earlier: tuple | None, others: dict, neighbors: dict, options: BuildOptions) -> tuple:
    """The new text's splits with the earlier output's `others` columns and their `neighbors`
    columns (every column its manifest records), where the text is the same paragraphs in the same
    order (their text key): those vectors are then still the text's. Where the text changed, the
    rebuild is refused, naming them, unless --drop-columns."""
    if not others:
        return splits, {}, {}
    vectors = earlier[0]
    if all(_text_ids(vectors[name]).equals(_text_ids(splits[name])) for name in SPLIT_NAMES):
        log.info("the text is unchanged: keeping the columns %s of %s", ", ".join(others), options.output)
        kept = [name for column in others for name in (column, *(neighbor_columns(column) if column in neighbors else ()))]
        return DatasetDict({name: concatenate_datasets(
            [splits[name].flatten_indices(), vectors[name].select_columns(kept)], axis=1)
            for name in SPLIT_NAMES}), others, neighbors
    if options.drop_columns:
        log.warning("the text changed: dropping the columns %s of %s (--drop-columns)", ", ".join(others),
                    options.output)
        return splits, {}, {}
    again = "; ".join(f"python build.py --stage embed --output {options.output} --column {column} --model {stats.model}"
                      for column, stats in others.items())
    raise BuildError(f"these options change the text of --output {options.output}, and its columns "
                     f"{', '.join(others)} were embedded from the old text: pass --drop-columns to rebuild "
                     f"without them, then embed them again ({again}); or keep the options it was built with")


def _text_ids(split):
    return split.select_columns(["text_id"]).with_format("arrow")[:].column("text_id")  # in the split's order


def refuse_bad_vectors(problems: list[str], work: Path, key: str | None, is_main: bool) -> None:
    if problems:  # the chunks hold the same vectors: a rerun must compute them again
        if is_main:
            remove_finished_work(work, key)
        raise BuildError(f"the model gave vectors that are not finite unit vectors ({'; '.join(problems)}): "
                         "nothing was written; check the model's weights (e.g. all zeros) and --model")


def checked_by_sentence_transformers(splits, options: BuildOptions, embed, processes: Processes):
    """The column's stats (main process) with the report of a sample embedded again by
    sentence-transformers itself (a fresh seed each run); a row below the floor stops every
    process before anything is written. The finished chunks stay: a rerun draws another sample
    and embeds nothing again."""
    error = None
    if processes.is_main:
        column = {options.column: (options.model, options.model_revision, embed.dtype, embed.dim)}
        try:
            report = check_against_reference(splits, column, secrets.randbits(32), processes.device)
            facts = report["columns"][options.column]
            embed = dataclasses.replace(embed, reference={"seed": report["seed"], **{key: facts[key] for key in (
                "rows", "lowest_cosine", "min_cosine", "seconds", "load_seconds", "not_finite_there")}})
        except BuildError as err:
            error = f"nothing was written: {err}"
    error = processes.gather(error)[0]  # every process stops with the main one
    if error:
        raise BuildError(error)
    return embed


def neighbors_stage(splits, embed_key: str | None, params: NeighborParams, work: Path,
                    recorded: NeighborStats | None, processes: Processes) -> tuple:
    """Each split's `params.k` nearest rows in `params.column`, every process computing its share:
    the main process returns the splits with the two neighbour columns and the stage's record,
    the others (None, None). Neighbour columns the output already holds for these very vectors
    (`recorded`, same K and `embed_key`) are kept as they are; with K 0 the column's are dropped."""
    todo = neighbors_todo(splits, embed_key, params, work, recorded, processes)
    if todo != []:
        return search_neighbors(splits, embed_key, params, todo, processes)
    if not processes.is_main:
        return None, None
    if params.k:
        return splits, recorded
    return DatasetDict({name: without_neighbors(split, params.column) for name, split in splits.items()}), None


def neighbors_todo(splits, embed_key: str | None, params: NeighborParams, work: Path,
                   recorded: NeighborStats | None, processes: Processes) -> list[str] | None:
    """The main process's answer, which every process follows: [] nothing to compute; the files of
    each split's vectors in the work folder, where other processes share the search (they hold no
    split: they map the vectors); None: the main process searches its splits alone."""
    todo = None
    if processes.is_main:
        kept = all(name in splits["train"].column_names for name in neighbor_columns(params.column))
        if params.k == 0 or (kept and recorded is not None
                             and (recorded.k, recorded.embed_key) == (params.k, embed_key)):
            todo = []
        elif processes.count > 1:
            folder = make_work_folder(work)
            todo = [save_vectors(split_vectors(splits[name], params.column), folder / f"neighbors-{name}.npy")
                    for name in SPLIT_NAMES]
    return processes.gather(todo)[0]


def search_neighbors(splits, embed_key: str | None, params: NeighborParams, todo: list[str] | None,
                     processes: Processes) -> tuple:
    """The search itself, split by split (see `neighbors_stage`)."""
    started, searched, out = time.perf_counter(), 0, {}
    for i, name in enumerate(SPLIT_NAMES):
        vectors = np.load(todo[i], mmap_mode="r") if todo else split_vectors(splits[name], params.column)
        text_ids = splits[name].data.column("text_id").to_numpy(zero_copy_only=False) if processes.is_main else None
        found = nearest(vectors, text_ids, params.k, processes.device, processes.my_share, processes.gather)
        if found is not None:
            out[name] = with_neighbors(splits[name], params.column, params.k, found[0], found[1])
            searched += found[2]
    if not processes.is_main:
        return None, None
    log.info("found each row's %d nearest neighbours in %r in %.1f s", params.k, params.column,
             time.perf_counter() - started)
    return DatasetDict(out), NeighborStats(embed_key=embed_key, **neighbor_stats(
        params.k, time.perf_counter() - started, processes.device, processes.count, searched))


def plan(options: BuildOptions) -> dict:
    """What a build would do, from the text stage and the model's config (no weights)."""
    gpu_peak(options.plan_gpu)  # a name it does not know is refused before the text stage
    check_hub_ids(options, reads_source=options.stage != "embed")
    tokenizer = load_tokenizer(options.model, options.model_revision)
    splits, text = text_stage(options, tokenizer)
    lengths = token_counts(splits)
    estimate = estimate_embedding(row_flops(options.model, options.model_revision, lengths),
                                  plan_chunks(lengths, options.chunk_tokens), options.compile,
                                  options.plan_gpus, options.plan_gpu,
                                  measure_cpu=lambda: cpu_rate(options.model, options.model_revision))
    if options.neighbors:
        dim = check_model_config(options.model, options.model_revision, options.dim)
        estimate.update(estimate_neighbors(text.splits, dim, estimate, options.plan_gpus, options.plan_gpu))
    return {"plan": {"source": f"{options.source} ({options.source_config})", "model": options.model,
                     "paragraphs": text.splits, "dropped": text.dropped, "tokens": int(lengths.sum()),
                     **estimate}}


# A GPU's float32 matrix products (no TF32: the search's error bound needs true float32) run at
# about 1/15 of its dense float16 peak (H100 SXM: 67 of 989 TFLOPS).
FLOAT32_SHARE_OF_PEAK = 1 / 15


def estimate_neighbors(rows: dict[str, int], dim: int, embedding: dict, gpus: int, gpu: str) -> dict:
    """The neighbours' time, beside the embedding's: on this device (a CPU at the rate the
    embedding's estimate measured, of float32 matrix products too), and on GPUS GPUs named GPU
    sharing the block pairs."""
    flops = sum(search_flops(count, dim) for count in rows.values())
    here = embedding["device"]
    rate = embedding["cpu_flops"] if here == "cpu" else gpu_peak_or_none(here)
    cluster = gpu_peak_or_none(gpu)
    return {"neighbors_tflop": flops / 1e12, "neighbors_device_seconds": flops / rate if rate else None,
            "neighbors_gpus_seconds": flops / (cluster * gpus) if cluster else None}


def gpu_peak_or_none(name: str) -> float | None:
    try:
        return gpu_peak(name) * FLOAT32_SHARE_OF_PEAK
    except BuildError:  # a GPU of unknown peak
        return None


def publish(options: BuildOptions, hub: HubParams, api) -> dict:
    """--push: gate, stage the Hub layout beside the output, upload it as one commit, tag it.
    --hub-folder: gate and stage it there, with the commands that upload it. What was done."""
    if not options.push:
        folder = stage_upload(options, hub, Path(options.hub_folder))
        return {"staged": {"folder": str(folder), "repo_id": hub.repo_id, "version": hub.version,
                           "commands": upload_commands(folder, hub)}}
    folder = stage_upload(options, hub, hub_layout(options.output))
    line = push(folder, hub, api)
    remove_work_folder(folder)
    return {"published": line}


def stage_upload(options: BuildOptions, hub: HubParams, folder: Path) -> Path:
    """What --push uploads and --hub-folder leaves for `hf upload`, the same for both: the output,
    through --verify's gates, in the Hub's layout, its card naming what the output records."""
    verify(options.output, options.model)
    return stage_hub_folder(options.output, folder, hub.repo_id, hub.version)
