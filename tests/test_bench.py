"""Every script in bench/ still runs: each in its smoke mode (tiny data, seconds), so none can rot unnoticed. The
numbers they print in smoke mode mean nothing; the documented ones come from their full runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# script -> a line its output must contain
PYTHON_SCRIPTS = {
    "step_overhead.py": "ratio mobilenet_v2=",
    "feature_cache.py": "cached features",
    "mnist_vs_hand.py": "time ratio xfer / hand-written",
    "text_vs_trainer.py": "ratio=",
    "seeds.py": "over 2 seeds",
    "cpu_choices.py": "MiniLM embedding tables",
    "tfidf_baseline.py": "TF-IDF (1-2-grams) + logistic regression",
    "serve_load.py": "requests/s",
    "gpu_check.py": "GPU check:",
}
SHELL_SCRIPTS = {
    "compare_strategies.sh": "Recommended:",
    "rank_sources.sh": "Kendall's tau",
    "search_bench.sh": "best configuration",
    "cross_modal.sh": "reuters_r8 scratch: test accuracy",
    "compress.sh": "written:",
    "robust.sh": "written:",
}

# Tables the scripts must leave behind (their printed paths may be wrapped by the console).
OUTPUTS = {"compress.sh": ("compress-mnist/compress.json", "compress-rt/compress.json"),
           "robust.sh": ("robust-plain/robust.json", "robust-adv/robust.json", "robust-noise/robust.json",
                         "robust-rt/robust.json")}


def test_every_bench_script_is_covered():
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    assert scripts == set(PYTHON_SCRIPTS) | set(SHELL_SCRIPTS) | {"compare_table.py"}  # run by compare_strategies.sh


def _env(tmp_path):
    return {**os.environ, "XFER_CACHE_DIR": str(tmp_path / "cache"), "RUNS": str(tmp_path / "runs"), "SMOKE": "1",
            "PYTHONUNBUFFERED": "1", "XFER": str(Path(sys.executable).parent / "xfer"), "PYTHON": sys.executable}


@pytest.mark.parametrize("script", sorted(PYTHON_SCRIPTS))
def test_python_bench_script_runs(script, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert PYTHON_SCRIPTS[script] in proc.stdout


@pytest.mark.parametrize("script", sorted(SHELL_SCRIPTS))
def test_shell_bench_script_runs(script, tmp_path):
    proc = subprocess.run(["bash", str(BENCH / script)], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert SHELL_SCRIPTS[script] in proc.stdout
    for name in OUTPUTS.get(script, ()):
        assert (tmp_path / "runs" / name).is_file(), name
