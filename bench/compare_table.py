"""Print the markdown table of one or more `xfer compare` results (compare.json), as used in docs/strategies.md.

    python bench/compare_table.py runs/compare-mnist-all runs/compare-mnist-10shot
"""

import json
import sys
from pathlib import Path


def table(folder: Path) -> str:
    r = json.loads((folder / "compare.json").read_text())
    seeds = len(r["seeds"])
    head = ("| strategy | test acc % | macro-F1 % | val acc % | trainable params | train s | peak RSS MiB |\n"
            "|---|---|---|---|---|---|---|")
    lines = [head]
    for s in r["strategies"]:
        if s["test_accuracy"] is None:
            lines.append(f"| {s['strategy']} | failed: {s.get('error', '')} | | | | | |")
            continue
        sd = f" ± {100 * s['test_accuracy_std']:.2f}" if seeds > 1 else ""
        lines.append(f"| {s['strategy']} | {100 * s['test_accuracy']:.2f}{sd} | {100 * s['test_macro_f1']:.2f} | "
                     f"{100 * s['val_accuracy']:.2f} | {s['trainable_params']:,} | {s['train_seconds']:.0f} | "
                     f"{s['peak_memory_mb']:.0f} |")
    rec = r["recommendation"]
    lines.append(f"\nRecommended: **{rec['strategy']}** ({rec['reason']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"### {arg}\n")
        print(table(Path(arg)))
        print()
