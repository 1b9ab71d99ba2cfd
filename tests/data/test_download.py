"""`exgra download` against a stand-in hub on loopback: registry, resume, errors, offline mode."""

from __future__ import annotations

import hashlib
import os

import pytest

from exgra.data.download import REGISTRY, download, resolve_entry
from exgra.errors import ExgraError
from tests.data.hub_server import StandInHub

# larger than huggingface_hub's 10 MB read chunk, so a cut after 10.5 MB leaves a resumable partial file
BIG = 11 * 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_error_line(stderr: str) -> bool:
    # huggingface_hub's own progress bar also writes to stderr; the error itself is one line
    return "Traceback" not in stderr and sum(line.startswith("error:") for line in stderr.splitlines()) == 1


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants
    import huggingface_hub.file_download

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.file_download.time, "sleep", lambda seconds: None)
    with StandInHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_registry_names_and_suggestions():
    repos = {entry.repo_id for entry in REGISTRY.values()}
    for name in ("llava-med-10", "llava-med-40", "exgra-med-10", "exgra-med-40", "exgra-med", "exgra-med-dci",
                 "exgra-med-dci-vqa-rad", "exgra-med-dci-slake", "exgra-med-dci-pathvqa"):  # fmt: skip
        assert f"MERGE-Group/{name}" in repos
        assert REGISTRY[name].license == "CC BY-NC 4.0" and REGISTRY[name].description
    for repo in ("VQA-RAD", "SLAKE", "PATH-VQA", "Extended-Caption-GPT"):
        assert any(e.repo_id == f"MERGE-Group/{repo}" and e.repo_type == "dataset" for e in REGISTRY.values())
    assert resolve_entry("openai/clip-vit-large-patch14").name == "clip-vit-large-patch14"
    with pytest.raises(ExgraError, match="did you mean exgra-med-dci-slake"):
        resolve_entry("exgra-med-dci-slak")


def test_list_prints_the_table(run_exgra):
    result = run_exgra("download", "--list")
    assert result.exit_code == 0
    assert "exgra-med-dci-pathvqa" in result.stdout and "CC BY-NC 4.0" in result.stdout


def test_download_checkpoint_and_dataset(hub, tmp_path, run_exgra):
    files = {"config.json": b'{"model_type": "llava"}', "model.safetensors": os.urandom(4096)}
    hub.add_repo("MERGE-Group/exgra-med-dci", files)
    hub.add_repo("MERGE-Group/SLAKE", {"train.json": b"[]", "test.json": b"[1]"}, repo_type="dataset")
    result = run_exgra("download", "exgra-med-dci", "slake", "--dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    for name, data in files.items():
        assert (tmp_path / "exgra-med-dci" / name).read_bytes() == data
    assert (tmp_path / "slake" / "test.json").read_bytes() == b"[1]"


def test_vision_tower_skips_pickle_weights(hub, tmp_path):
    hub.add_repo(
        "openai/clip-vit-large-patch14",
        {
            "config.json": b"{}",
            "model.safetensors": b"st",
            "pytorch_model.bin": b"pickle",
            "flax_model.msgpack": b"f",
        },
    )
    path = download("clip-vit-large-patch14", tmp_path)
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model.safetensors",
    ]


def test_dropped_connection_resumes_with_correct_content(hub, tmp_path):
    big = os.urandom(BIG)
    hub.add_repo("MERGE-Group/exgra-med-10", {"model.safetensors": big, "config.json": b"{}"})
    hub.drop_after = 10 * 1024 * 1024 + 512 * 1024
    hub.drop_once.add("model.safetensors")
    path = download("exgra-med-10", tmp_path)
    assert sha256((path / "model.safetensors").read_bytes()) == sha256(big)
    assert hub.range_requests == ["model.safetensors bytes=10485760-"]  # resumed, not restarted


def test_interrupted_download_resumes_on_rerun(hub, tmp_path, run_exgra):
    big = os.urandom(BIG)
    hub.add_repo("MERGE-Group/exgra-med-40", {"model.safetensors": big, "config.json": b"{}"})
    hub.drop_after = 10 * 1024 * 1024 + 512 * 1024
    hub.drop_always.add("model.safetensors")
    failed = run_exgra("download", "exgra-med-40", "--dir", tmp_path)
    assert failed.exit_code == 1
    assert "network error" in failed.stderr and "rerun to resume" in failed.stderr
    assert one_error_line(failed.stderr)
    assert hub.range_requests  # within the run, huggingface_hub resumed with Range before giving up
    assert (tmp_path / "exgra-med-40" / "config.json").exists()
    hub.drop_always.clear()
    hub.file_gets.clear()
    again = run_exgra("download", "exgra-med-40", "--dir", tmp_path)
    assert again.exit_code == 0, again.stderr
    assert sha256((tmp_path / "exgra-med-40" / "model.safetensors").read_bytes()) == sha256(big)
    # the rerun fetches only what is missing; huggingface_hub 2.4 leaves no partial files behind
    assert hub.file_gets == ["model.safetensors"]
    assert not list((tmp_path / "exgra-med-40").rglob("*.incomplete"))


def test_hub_errors_are_one_line(hub, tmp_path, run_exgra):
    hub.add_repo("MERGE-Group/exgra-med", {"config.json": b"{}"})
    missing = run_exgra("download", "llava-med-10", "--dir", tmp_path)
    assert missing.exit_code == 1 and "was not found on the hub" in missing.stderr
    revision = run_exgra("download", "exgra-med", "--dir", tmp_path, "--revision", "v9")
    assert revision.exit_code == 1 and "revision 'v9' does not exist" in revision.stderr
    unknown = run_exgra("download", "exgra-medd", "--dir", tmp_path)
    assert unknown.exit_code == 1 and "did you mean" in unknown.stderr
    for result in (missing, revision, unknown):
        assert one_error_line(result.stderr)


def test_offline_mode_is_explained(hub, tmp_path, run_exgra, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = run_exgra("download", "exgra-med", "--dir", tmp_path)
    assert result.exit_code == 1 and "offline mode" in result.stderr


def test_disk_error_is_one_error(hub, tmp_path):
    # The CLI refuses a file as --output up front; the library turns the OSError into one sentence.
    hub.add_repo("MERGE-Group/exgra-med", {"config.json": b"{}"})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExgraError, match="cannot write exgra-med"):
        download("exgra-med", blocker)


def test_list_is_readable_at_80_columns_and_output_must_be_a_folder(tmp_path, run_exgra) -> None:
    import io

    from rich.console import Console

    from exgra.cli.download import registry_table

    for width in (80, 120):
        console = Console(file=io.StringIO(), width=width, color_system=None)
        console.print(registry_table())
        text = console.file.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width
        for entry in REGISTRY.values():
            assert f"│ {entry.name} " in text  # every name whole on one line, ready to copy
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_exgra("download", "vqa-rad", "--output", blocker)
    assert result.exit_code == 1 and one_error_line(result.stderr) and "is a file" in result.stderr
