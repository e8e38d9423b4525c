"""--push against a stand-in for HfApi: preflight refusals, one commit then a tag, failures.

The Hub steps (retries, one line per failure, a rerun publishing once) are tested on hub.py's
own functions with the shared staged folder; builds with --push only where the build's part is
what is tested: the whole path once, a refusal before any work, the vectors kept after a failure."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from datasets.info import DatasetInfosDict
from huggingface_hub.errors import HfHubHTTPError

from elm_wikitext.core.errors import BuildError
from elm_wikitext import pipeline
from elm_wikitext.pipeline import build
from elm_wikitext.publish import hub
from elm_wikitext.core.schema import expected_features

TOKEN = "hf_secretTOKENvalue1234567890"


def http_error(status: int) -> HfHubHTTPError:
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return HfHubHTTPError(f"{status} from the Hub", response=response)


class StandInApi:
    """Records calls like HfApi would receive them; `fail` maps a method to errors to raise, in turn."""

    def __init__(self, tags=(), exists=False, fail=None, card_data=None):
        self.calls, self.tags, self.exists, self.fail = [], list(tags), exists, fail or {}
        self.uploaded, self.card_data = None, card_data

    def _call(self, name, *args, **kwargs):
        self.calls.append(name)
        errors = self.fail.get(name)
        if errors:
            raise errors.pop(0)

    def whoami(self):
        self._call("whoami")
        return {"name": "someone"}

    def repo_exists(self, repo_id, repo_type):
        self._call("repo_exists")
        return self.exists

    def list_repo_refs(self, repo_id, repo_type):
        self._call("list_repo_refs")
        tags = [tag if isinstance(tag, tuple) else (tag, "an older commit") for tag in self.tags]
        return SimpleNamespace(tags=[SimpleNamespace(name=name, target_commit=commit) for name, commit in tags])

    def dataset_info(self, repo_id):
        self._call("dataset_info")
        return SimpleNamespace(card_data=self.card_data)

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self._call("create_repo")

    def upload_folder(self, repo_id, repo_type, folder_path, commit_message, delete_patterns, ignore_patterns=()):
        from fnmatch import fnmatch  # as huggingface_hub matches the patterns, on the path in the folder

        self._call("upload_folder")
        self.uploaded = sorted(name for name in (str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*")
                                                 if p.is_file()) if not any(fnmatch(name, pattern) for pattern in ignore_patterns))
        return SimpleNamespace(oid="abc123")

    def create_tag(self, repo_id, repo_type, tag, revision, tag_message):
        self._call("create_tag")
        self.tags.append((tag, revision))


@pytest.fixture
def no_waiting(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub.time, "sleep", lambda seconds: None)


@pytest.fixture
def push_options(options, no_waiting):
    """A build with --push into a fresh output; its local model and source named by Hub ids."""
    options.push, options.version = True, "v1.0.0"
    options.model_id, options.source_id = "someone/tiny-embedding", "Salesforce/wikitext"
    return options


def publish(api, hub_folder, repo_id=None) -> str:
    """What a build with --push does on the Hub (pipeline.py): the preflight, then the upload
    of the staged folder (the shared one of the sample's full build) and the tag."""
    params = hub.HubParams(repo_id=repo_id, version="v1.0.0", private=False)
    return hub.push(hub_folder, hub.preflight(params, api, expected_features({"embedding": 64})), api)


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_push_uploads_one_commit_then_tags_it(push_options, embedded_copy, capsys):
    # The README's way: the command that built the output, again with --push; the vectors are reused.
    push_options.output = str(embedded_copy)
    api = StandInApi()
    stats = build(push_options, api=api)
    assert api.calls == ["whoami", "repo_exists", "create_repo", "upload_folder", "create_tag"]
    assert api.tags == [("v1.0.0", "abc123")]
    assert api.uploaded == ["README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
                            "data/validation-00000-of-00001.parquet", "embedding_map.png", "token_lengths.png"]
    assert stats["published"] == 'load_dataset("someone/elm-wikitext2", revision="v1.0.0")'
    assert stats["embed"]["embedding"]["reused"] is True
    assert sorted(p.name for p in embedded_copy.parent.iterdir()) == ["embedded"]  # the staged folder is gone
    # The token is never printed, logged or written.
    written = "".join(p.read_text(errors="ignore") for p in embedded_copy.rglob("*") if p.suffix in (".json", ".md"))
    captured = capsys.readouterr()
    assert TOKEN not in written + captured.out + captured.err + json.dumps(stats)


def test_busy_hub_is_retried_on_reads(hub_folder, no_waiting):
    api = StandInApi(fail={"whoami": [http_error(429)], "create_tag": [http_error(503)]})
    assert publish(api, hub_folder) == 'load_dataset("someone/elm-wikitext2", revision="v1.0.0")'
    assert api.calls.count("whoami") == 2 and api.calls.count("create_tag") == 2
    assert api.tags == [("v1.0.0", "abc123")]


class ConnectError(Exception):
    """Stands for the HTTP client's own network error (httpx2.ConnectError in huggingface_hub 2.x),
    which is neither an OSError nor an HfHubHTTPError."""


# Each Hub step failing (an HTTP error, retried where the step is idempotent, or a network
# error), and what the one line says.
FAILING_STEPS = [
    ("whoami", [http_error(500)] * 3, r"the Hub refused the token \(500\): run `hf auth login` again"),
    ("repo_exists", [http_error(503)] * 3, "checking someone/elm-wikitext2 on the Hub failed .*try again later"),
    ("create_repo", [http_error(502)] * 3, "creating someone/elm-wikitext2 failed .*nothing was uploaded: rerun"),
    ("upload_folder", [http_error(500)], "no tag was created and v1.0.0 is not published: rerun the same command"),
    ("create_tag", [http_error(500)] * 3, "the data is in someone/elm-wikitext2 at commit abc123, but creating "
                                          "the tag v1.0.0 failed .*run `hf repos tag create"),
    ("whoami", [ConnectError("connection refused")], r"cannot reach the Hub \(ConnectError: connection refused\)"),
    ("upload_folder", [ConnectError("reset")], r"uploading to someone/elm-wikitext2 failed \(reset\)"),
    ("create_tag", [ConnectError("timed out")], r"but creating the tag v1.0.0 failed \(timed out\)"),
]


@pytest.mark.parametrize("step, errors, says", FAILING_STEPS)
def test_a_failing_hub_step_says_so_and_a_rerun_publishes_once(hub_folder, no_waiting, step, errors, says):
    api = StandInApi(fail={step: list(errors)})
    with pytest.raises(BuildError, match=says):
        publish(api, hub_folder)
    assert api.calls.count(step) == len(errors)  # retried as often as it failed, no more
    assert api.tags == []  # no tag, so no half-published version
    assert api.calls.count("upload_folder") == (step in ("upload_folder", "create_tag"))  # never retried
    rerun = StandInApi()
    publish(rerun, hub_folder)
    assert rerun.tags == [("v1.0.0", "abc123")] and rerun.calls.count("upload_folder") == 1


@pytest.mark.parametrize("step, errors", [("whoami", [http_error(500)] * 3), ("upload_folder", [ConnectError("reset")])],
                         ids=["before the embedding", "after it"])
def test_a_build_whose_push_fails_keeps_its_vectors_for_the_rerun(push_options, text_output_copy, step, errors):
    # The embed stage on the shared text-stage output: a real embedding, without the text stage.
    push_options.stage, push_options.output = "embed", str(text_output_copy)
    before = snapshot(text_output_copy)
    with pytest.raises(BuildError):
        build(push_options, api=StandInApi(fail={step: list(errors)}))
    if step == "whoami":  # refused in the preflight: nothing was computed or written, nothing to keep
        assert snapshot(text_output_copy) == before
        assert sorted(p.name for p in text_output_copy.parent.iterdir()) == ["out"]
        return
    # A failure after the embedding kept its vectors (the output, and its chunks): the rerun
    # computes none again, and publishes once.
    rerun = StandInApi()
    stats = build(push_options, api=rerun)
    assert rerun.tags == [("v1.0.0", "abc123")] and rerun.calls.count("upload_folder") == 1
    assert stats["embed"]["embedding"]["reused"] is True


def test_a_tag_whose_answer_was_lost_is_not_reported_as_failed(hub_folder, no_waiting):
    class LostAnswer(StandInApi):
        def create_tag(self, repo_id, repo_type, tag, revision, tag_message):
            self.calls.append("create_tag")
            if (tag, revision) in self.tags:
                raise http_error(409)  # the retry: the tag exists
            self.tags.append((tag, revision))
            raise http_error(502)  # the tag was made, but its answer was lost on the way

    api = LostAnswer()
    assert publish(api, hub_folder) == 'load_dataset("someone/elm-wikitext2", revision="v1.0.0")'
    assert api.calls.count("create_tag") == 2 and api.tags == [("v1.0.0", "abc123")]


def published_card(dim: int):
    from datasets.info import DatasetInfo
    from huggingface_hub import DatasetCardData

    card = DatasetCardData()
    DatasetInfosDict({"default": DatasetInfo(features=expected_features({"embedding": dim}))}).to_dataset_card_data(card)
    return card


def test_an_existing_repo_with_the_same_columns_gets_a_new_version(hub_folder, no_waiting):
    api = StandInApi(exists=True, tags=["v0.9.0"], card_data=published_card(dim=64))
    publish(api, hub_folder)
    assert api.tags == ["v0.9.0", ("v1.0.0", "abc123")]  # the earlier version kept, the new one tagged


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "bad name/x", "-x/y"])
def test_malformed_repo_id_is_refused(hub_folder, no_waiting, repo_id):
    api = StandInApi()
    with pytest.raises(BuildError, match=f"--repo-id '{repo_id}' is not of the form owner/name: pass e.g. "
                                         "--repo-id someone/elm-wikitext2"):
        publish(api, hub_folder, repo_id=repo_id)
    assert api.calls == ["whoami"]


# What a build with --push refuses before any work (no output is written), and the one line.
REFUSED_BEFORE_ANY_WORK = {
    "an existing tag": ({"exists": True, "tags": ["v1.0.0"]}, "already has the tag v1.0.0: pass a new --version"),
    "an existing repo with other columns": ({"exists": True, "tags": ["v0.9.0"], "card_data": 32},
                                            "holds other columns"),
    "no token": ({}, "needs a Hugging Face token"),
    "HF_HUB_OFFLINE=1": ({}, "--push needs the Hub but HF_HUB_OFFLINE=1 is set: unset it, or build without "
                             r"--push \(--hub-folder DIR --repo-id OWNER/NAME stages the upload here"),
}


@pytest.mark.parametrize("case", list(REFUSED_BEFORE_ANY_WORK))
def test_a_push_that_cannot_succeed_is_refused_before_any_work(case, push_options, monkeypatch):
    hub_state, says = REFUSED_BEFORE_ANY_WORK[case]
    if "card_data" in hub_state:
        hub_state = {**hub_state, "card_data": published_card(dim=hub_state["card_data"])}
    api = StandInApi(**hub_state)
    if case == "no token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(hub, "get_token", lambda: None)
    if case == "HF_HUB_OFFLINE=1":  # as the variable sets it when huggingface_hub is imported
        monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    if case in ("no token", "HF_HUB_OFFLINE=1"):  # known without the Hub: refused before the model is read
        monkeypatch.setattr(pipeline, "load_tokenizer", lambda *args: pytest.fail("the tokenizer was read first"))
    with pytest.raises(BuildError, match=says):
        build(push_options, api=api)
    assert "create_repo" not in api.calls and not Path(push_options.output).exists()


def test_neighbour_columns_join_a_repo_and_a_build_without_them_is_told_their_k():
    def card(neighbors):
        from datasets.info import DatasetInfo
        from huggingface_hub import DatasetCardData

        data = DatasetCardData()
        DatasetInfosDict({"default": DatasetInfo(features=expected_features({"embedding": 64}, neighbors))}
                         ).to_dataset_card_data(data)
        return data

    with_neighbours = expected_features({"embedding": 64}, {"embedding": 8})
    hub.check_features(card(None), with_neighbours, "someone/elm-wikitext2")  # a repo from before them
    hub.check_features(card({"embedding": 8}), with_neighbours, "someone/elm-wikitext2")
    for build_features in (expected_features({"embedding": 64}), expected_features({"embedding": 64}, {"embedding": 4})):
        with pytest.raises(BuildError, match="holds the neighbour columns embedding_neighbors, "
                                             "embedding_neighbor_cosines of 8 neighbours.*pass --neighbors 8"):
            hub.check_features(card({"embedding": 8}), build_features, "someone/elm-wikitext2")


# What a staged card names the local model and sample by (a local folder has no Hub id of its own).
HUB_IDS = ["--model-id", "someone/tiny-embedding", "--source-id", "Salesforce/wikitext"]


def staging(embedded_copy, sample_dir, tiny_model, *extra) -> list[str]:
    """The build of the shared output again (its vectors reused), staging the upload for someone/elm-wikitext2."""
    return ["--source", str(sample_dir), "--model", tiny_model, "--output", str(embedded_copy),
            "--repo-id", "someone/elm-wikitext2", *HUB_IDS, *extra]


def test_without_the_hub_the_upload_folder_is_staged_and_loads(embedded_copy, sample_dir, tiny_model, tmp_path,
                                                                 monkeypatch, capsys):
    from datasets import load_dataset, load_from_disk

    from elm_wikitext.cli import main

    api = StandInApi()
    monkeypatch.setattr("elm_wikitext.pipeline.HfApi", lambda: api)
    folder = tmp_path / "upload"
    assert main(staging(embedded_copy, sample_dir, tiny_model, "--version", "v1.2.0", "--hub-folder", str(folder))) == 0
    assert api.calls == []  # nothing looked up or sent
    out = capsys.readouterr().out
    # The commands that publish it as --push would: one commit replacing every shard, then the tag.
    assert (f"hf upload someone/elm-wikitext2 {folder} . --repo-type dataset --commit-message "
            "'elm-wikitext v1.2.0' --delete 'data/*' --exclude .elm-wikitext-work\n") in out
    assert "hf repos tag create someone/elm-wikitext2 v1.2.0 --repo-type dataset -m 'elm-wikitext v1.2.0'" in out
    # The folder is what --push uploads, and loads as the Hub would serve it.
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        ".elm-wikitext-work", "README.md", "data/test-00000-of-00001.parquet", "data/train-00000-of-00001.parquet",
        "data/validation-00000-of-00001.parquet", "embedding_map.png", "token_lengths.png"]
    staged, built = load_dataset(str(folder)), load_from_disk(str(embedded_copy))
    for name, split in built.items():
        assert staged[name]["text_id"] == split["text_id"]
        vectors = (part.with_format("numpy")["embedding"][:] for part in (staged[name], split))
        np.testing.assert_array_equal(*vectors)
    card = (folder / "README.md").read_text()
    assert 'load_dataset("someone/elm-wikitext2", revision="v1.2.0")' in card
    assert "--hub-folder" not in card  # how it was staged is no part of the command that rebuilds the data


@pytest.mark.parametrize("case, extra, says", [
    ("no repo id", ["--repo-id", ""], "--hub-folder needs --repo-id OWNER/NAME"),
    ("with --push", ["--push"], "--push and --hub-folder are two ways to publish"),
    ("a bad version", ["--version", "1.0"], "--version '1.0' is not a tag like v1.0.0"),
    ("inside the output", ["--hub-folder", "{output}/hub"], "--hub-folder .* and --output .* overlap"),
    ("a folder of the user's", ["--hub-folder", "{mine}"], "exists and holds what this build did not stage"),
])
def test_a_hub_folder_that_cannot_be_staged_is_refused_before_any_work(case, extra, says, options, tmp_path, capsys):
    from elm_wikitext.cli import main

    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    argv = ["--source", options.source, "--model", options.model, "--output", options.output, *HUB_IDS,
            "--repo-id", "someone/elm-wikitext2", "--hub-folder", str(tmp_path / "upload")]
    argv += [part.format(output=options.output, mine=mine) for part in extra]
    assert main(argv) == 2
    assert re.search(says, capsys.readouterr().err)
    assert not Path(options.output).exists() and not (tmp_path / "upload").exists()
    assert sorted(p.name for p in mine.iterdir()) == ["notes"]
