"""`xfer push RUN hf:<repo>`: a verified run folder uploaded to a Hugging Face model repository in one commit.

The repository gets every file the run's SHA256SUMS lists (weights or ONNX graph, spec, config, metrics, history,
transfer report, backbone/ of a text run), SHA256SUMS itself, so a downloaded copy verifies and loads like the
run, and the model card and HTML report when the run has them; the model card is also the repository's README.md,
the page the Hub shows.
"""

from __future__ import annotations

import re
from pathlib import Path

from xfer.errors import XferError
from xfer.network import is_network_error, require_hub
from xfer.runs.folder import MODEL_CARD, REPORT, SUMS, RunFolder

README = "README.md"  # the file the Hub renders as the repository's page
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def parse_repo(target: str) -> str:
    """The repository id of `hf:<user or org>/<name>` (the hf: prefix may be left out)."""
    repo = target[len("hf:"):] if target.startswith("hf:") else target
    if not _REPO_ID.fullmatch(repo) or ".." in repo or repo.endswith((".", "-")):
        raise XferError(f"{target!r} is not a Hugging Face repository; write hf:<user or organisation>/<name>, "
                        "e.g. hf:alice/mnist-mobilenet.")
    return repo


def push_files(run_dir: str | Path) -> list[tuple[Path, str]]:
    """(local file, path in the repository) of everything a push uploads, after verifying the run's checksums."""
    folder = RunFolder(Path(run_dir)).verify()
    names = set(folder.listed()) | {SUMS}
    names |= {n for n in (MODEL_CARD, REPORT) if (folder.path / n).is_file()}
    files = [(folder.path / n, n) for n in sorted(names)]
    if (folder.path / MODEL_CARD).is_file():
        files.append((folder.path / MODEL_CARD, README))
    return files


def push(run_dir: str | Path, target: str, *, private: bool = False, token: str | None = None,
         log=print) -> str:
    """Upload the run to the model repository `target` (created if needed); returns the repository's URL."""
    repo = parse_repo(target)
    files = push_files(run_dir)
    retry = f"Connect and run `xfer push {run_dir} hf:{repo}` again."
    require_hub(f"Pushing {run_dir} to hf:{repo}", retry)
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        log(f"uploading {len(files)} files to {url}")
        api.create_commit(repo, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                                 for path, name in files],
                          commit_message=f"xfer push {Path(run_dir).name}", repo_type="model")
    except Exception as e:
        if is_network_error(e):
            raise XferError(f"Pushing to hf:{repo} failed: the Hugging Face Hub cannot be reached "
                            f"({type(e).__name__}: {str(e)[:160]}). {retry}") from e
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise XferError(f"The Hub refused the upload to hf:{repo} ({status}): log in with `hf auth login` or "
                            "pass --token with a token that may write to that repository.") from e
        raise XferError(f"Pushing to hf:{repo} failed: {type(e).__name__}: {str(e)[:300]}") from e
    return str(url)
