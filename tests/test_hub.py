"""--push against a stand-in for HfApi: preflight refusals, one commit then a tag, failures."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.errors import HfHubHTTPError

from datasets.info import DatasetInfosDict

from elm_wikitext import hub
from elm_wikitext.errors import BuildError
from elm_wikitext.pipeline import build

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

    def upload_folder(self, repo_id, repo_type, folder_path, commit_message, delete_patterns):
        self._call("upload_folder")
        self.uploaded = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        return SimpleNamespace(oid="abc123")

    def create_tag(self, repo_id, repo_type, tag, revision, tag_message):
        self._call("create_tag")
        self.tags.append((tag, revision))


@pytest.fixture
def push_options(options, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(hub.time, "sleep", lambda seconds: None)
    options.push, options.version = True, "v1.0.0"
    return options


def test_push_uploads_one_commit_then_tags_it(push_options, capsys):
    api = StandInApi()
    stats = build(push_options, api=api)
    assert api.calls == ["whoami", "repo_exists", "create_repo", "upload_folder", "create_tag"]
    assert api.tags == [("v1.0.0", "abc123")]
    assert "README.md" in api.uploaded and "data/train-00000-of-00001.parquet" in api.uploaded
    assert stats["published"] == 'load_dataset("someone/elm-wikitext2", revision="v1.0.0")'
    # The token is never printed, logged or written.
    output = Path(push_options.output)
    written = "".join(p.read_text(errors="ignore") for p in output.rglob("*") if p.suffix in (".json", ".md"))
    captured = capsys.readouterr()
    assert TOKEN not in written + captured.out + captured.err + json.dumps(stats)


def test_busy_hub_is_retried_on_reads(push_options):
    api = StandInApi(fail={"whoami": [http_error(429)], "create_tag": [http_error(503)]})
    build(push_options, api=api)
    assert api.calls.count("whoami") == 2 and api.calls.count("create_tag") == 2
    assert api.tags == [("v1.0.0", "abc123")]


def test_failed_commit_is_not_retried_and_leaves_no_tag(push_options):
    api = StandInApi(fail={"upload_folder": [http_error(500)]})
    with pytest.raises(BuildError, match="no tag was created.*rerun the same command"):
        build(push_options, api=api)
    assert api.calls.count("upload_folder") == 1 and api.tags == []
    rerun = StandInApi()
    build(push_options, api=rerun)  # rerunning publishes once
    assert rerun.tags == [("v1.0.0", "abc123")]


def test_existing_tag_is_refused_before_any_work(push_options):
    api = StandInApi(exists=True, tags=["v1.0.0"])
    with pytest.raises(BuildError, match="already has the tag v1.0.0: pass a new --version"):
        build(push_options, api=api)
    assert not Path(push_options.output).exists()


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "bad name/x", "-x/y"])
def test_malformed_repo_id_is_refused(push_options, repo_id):
    push_options.repo_id = repo_id
    with pytest.raises(BuildError, match="is not of the form owner/name"):
        build(push_options, api=StandInApi())


def test_missing_token_is_refused(push_options, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(BuildError, match="needs a Hugging Face token"):
        build(push_options, api=StandInApi())


def test_offline_push_is_refused_in_one_line(tiny_model, sample_dir, tmp_path):
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "build.py"), "--push", "--source", str(sample_dir), "--model", tiny_model,
         "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN, "PYTHONPATH": str(root)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: --push needs the Hub but HF_HUB_OFFLINE=1")
    assert not (tmp_path / "out").exists()


class ConnectError(Exception):
    """Stands for the HTTP client's own network error (httpx2.ConnectError in huggingface_hub 2.x),
    which is neither an OSError nor an HfHubHTTPError."""


@pytest.mark.parametrize("step, errors", [
    ("whoami", [http_error(500)] * 3), ("repo_exists", [http_error(503)] * 3),
    ("create_repo", [http_error(502)] * 3), ("upload_folder", [http_error(500)]),
    ("create_tag", [http_error(500)] * 3),
    ("whoami", [ConnectError("connection refused")]), ("upload_folder", [ConnectError("reset")]),
    ("create_tag", [ConnectError("timed out")]),
])
def test_a_failing_hub_step_says_so_and_a_rerun_publishes_once(push_options, step, errors):
    api = StandInApi(fail={step: list(errors)})
    with pytest.raises(BuildError):
        build(push_options, api=api)
    assert [tag for tag in api.tags] == []  # no tag, so no half-published version
    assert api.calls.count("upload_folder") <= 1  # the commit is never retried
    rerun = StandInApi()
    stats = build(push_options, api=rerun)
    assert rerun.tags == [("v1.0.0", "abc123")] and rerun.calls.count("upload_folder") == 1
    # A failure after the embedding kept its vectors (the output, and its chunks): the rerun
    # computes no vector again.
    embedded_before = step in ("create_repo", "upload_folder", "create_tag")
    computed_none = stats["embed"].get("reused", False) or stats["embed"]["paragraphs"] == 0
    assert computed_none == embedded_before


def test_a_tag_whose_answer_was_lost_is_not_reported_as_failed(push_options):
    class LostAnswer(StandInApi):
        def create_tag(self, repo_id, repo_type, tag, revision, tag_message):
            self.calls.append("create_tag")
            if (tag, revision) in self.tags:
                raise http_error(409)  # the retry: the tag exists
            self.tags.append((tag, revision))
            raise http_error(502)  # the tag was made, but its answer was lost on the way

    api = LostAnswer()
    stats = build(push_options, api=api)
    assert api.calls.count("create_tag") == 2 and api.tags == [("v1.0.0", "abc123")]
    assert stats["published"] == 'load_dataset("someone/elm-wikitext2", revision="v1.0.0")'


def published_card(dim: int):
    from datasets.info import DatasetInfo
    from huggingface_hub import DatasetCardData

    from elm_wikitext.output import expected_features

    card = DatasetCardData()
    DatasetInfosDict({"default": DatasetInfo(features=expected_features(dim))}).to_dataset_card_data(card)
    return card


def test_an_existing_repo_with_other_columns_is_refused_before_any_work(push_options):
    api = StandInApi(exists=True, tags=["v0.9.0"], card_data=published_card(dim=32))
    with pytest.raises(BuildError, match="holds other columns"):
        build(push_options, api=api)
    assert not Path(push_options.output).exists()


def test_an_existing_repo_with_the_same_columns_gets_a_new_version(push_options):
    api = StandInApi(exists=True, tags=["v0.9.0"], card_data=published_card(dim=64))
    build(push_options, api=api)
    assert ("v1.0.0", "abc123") in api.tags
