"""One `xfer fit` configuration over several seeds: test accuracy and training time per seed, then the mean and the
range. The README's three-seed rows come from this script.

    .venv/bin/python bench/seeds.py --seeds 0,1,2 --data builtin:mnist5k --source mobilenet_v2
    .venv/bin/python bench/seeds.py --seeds 0,1,2 --data builtin:rotten_tomatoes --epochs 1
    .venv/bin/python bench/seeds.py --smoke

Any further `--option value` pair is a fit option (as on `xfer fit`); each seed also draws its own data split.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile


def parse_options(pairs: list[str]) -> dict:
    """`--image-size 64 --strategy full` -> {"image_size": "64", "strategy": "full"} (FitConfig converts types)."""
    if len(pairs) % 2:
        raise SystemExit(f"fit options come in --name value pairs, got {pairs}")
    out = {}
    for name, value in zip(pairs[::2], pairs[1::2]):
        if not name.startswith("--"):
            raise SystemExit(f"expected an option name, got {name!r}")
        out[name[2:].replace("-", "_")] = value
    return out


def typed(options: dict) -> dict:
    """Option values as FitConfig's field types (ints, floats, booleans)."""
    from dataclasses import fields

    from xfer.config import FitConfig

    kinds = {f.name: str(f.type) for f in fields(FitConfig)}
    out = {}
    for k, v in options.items():
        kind = kinds.get(k, "str")
        out[k] = (v.lower() in ("1", "true", "yes") if "bool" in kind else int(v) if "int" in kind
                  else float(v) if "float" in kind else v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args, rest = ap.parse_known_args()
    options = typed(parse_options(rest))
    options.setdefault("data", "builtin:mnist5k")
    if args.smoke:
        options.update(shots=4, image_size=32, max_length=16, epochs=1, lp_epochs=1, min_steps=0)
        args.seeds = "0,1"
    os.environ.setdefault("XFER_CACHE_DIR", tempfile.mkdtemp())
    import xfer

    accs, secs = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = xfer.fit(seed=seed, save=False, quiet=True, **options)
        accs.append(run.metrics["test"]["accuracy"])
        secs.append(run.metrics["train_seconds"])
        print(f"seed {seed}: test accuracy {accs[-1]:.4f}, {secs[-1]:.0f}s training", flush=True)
    described = " ".join(f"{k}={v}" for k, v in options.items())
    print(f"{described}: test accuracy mean {100 * statistics.fmean(accs):.2f}% (range {100 * min(accs):.2f}-"
          f"{100 * max(accs):.2f}) over {len(accs)} seeds; training {min(secs):.0f}-{max(secs):.0f}s")


if __name__ == "__main__":
    main()
