"""`xfer push`: what a push uploads (a real tiny run), the offline error, bad repository names, altered runs."""

from __future__ import annotations

import socket

import pytest

import xfer
from xfer.errors import XferError
from xfer.runs.folder import write_checksums
from xfer.tools.push import parse_repo, push, push_files

from helpers import TINY_IMAGE_FIT, run_main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, image_folder):
    out = tmp_path_factory.mktemp("push") / "run"
    xfer.fit(data=str(image_folder), out=str(out), **TINY_IMAGE_FIT)
    return out


def test_files_of_a_push(tiny_run):
    names = [name for _, name in push_files(tiny_run)]
    core = ["SHA256SUMS", "config.yaml", "history.json", "metrics.json", "model.safetensors", "spec.json",
            "transfer_report.json"]
    assert all(n in names for n in core) and len(names) == len(set(names))
    # every checksummed file goes, so a downloaded copy verifies; nothing unlisted but the card and report
    listed = (tiny_run / "SHA256SUMS").read_text().split()[1::2]
    assert set(names) - set(listed) <= {"SHA256SUMS", "MODEL_CARD.md", "report.html", "README.md"}
    files = dict((name, path) for path, name in push_files(tiny_run))
    if "MODEL_CARD.md" in files:  # the card is also the repository's page
        assert files["README.md"] == tiny_run / "MODEL_CARD.md"


def test_model_card_goes_as_readme(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "MODEL_CARD.md").write_text("# tiny\n")
    (copy / "report.html").write_text("<html></html>")
    write_checksums(copy)
    (copy / "notes.txt").write_text("mine")  # a user's file beside the run: not listed, never uploaded
    files = dict((name, path) for path, name in push_files(copy))
    assert files["README.md"] == copy / "MODEL_CARD.md" and files["MODEL_CARD.md"] == copy / "MODEL_CARD.md"
    assert files["report.html"] == copy / "report.html" and "notes.txt" not in files


def test_a_text_run_pushes_its_backbone(tmp_path):
    from xfer.runs.folder import write_run

    def backbone(folder):
        (folder / "config.json").write_text("{}")
        (folder / "tokenizer.json").write_text("{}")

    out = write_run(tmp_path / "text", spec={"format": 1, "modality": "text"}, weights={}, config={}, metrics={},
                    history=[], transfer_report={}, backbone=backbone)
    names = [n for _, n in push_files(out)]
    assert "backbone/config.json" in names and "backbone/tokenizer.json" in names


def test_altered_run_is_refused(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "metrics.json").write_text("{}")
    with pytest.raises(XferError, match="modified after it was written"):
        push_files(copy)


@pytest.mark.parametrize("offline", [True, False])
def test_offline_push_fails_at_once(tiny_run, monkeypatch, capsys, offline):
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(XferError, match=r"needs the Hugging Face Hub.*(HF_HUB_OFFLINE|offline).*xfer push"):
        push(tiny_run, "hf:someone/tiny")
    code, _, err = run_main(monkeypatch, capsys, "push", str(tiny_run), "hf:someone/tiny", "--private")
    assert code == 2 and "Hugging Face Hub" in err and "Traceback" not in err


def test_repository_names():
    assert parse_repo("hf:alice/mnist-mobilenet") == "alice/mnist-mobilenet"
    assert parse_repo("alice/run_1.v2") == "alice/run_1.v2"
    for bad in ("hf:", "hf:a/b/c", "hf:alice/..", "hf:alice/x y", "hf:/x"):
        with pytest.raises(XferError, match="not a Hugging Face repository"):
            parse_repo(bad)
