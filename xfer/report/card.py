"""The model card (MODEL_CARD.md) of a run, in the layout of Hugging Face model cards: YAML front matter, then what
the model is, what it was made from and with, how it measured, and what was not measured."""

from __future__ import annotations

from pathlib import Path

import yaml

from xfer.report.html import environment

ONLINE_LICENCE = "unknown (see the source's own model page)"


def source_facts(spec: dict, source_spec=None) -> dict:
    """Name, architecture, origin, sha256, description and licence of the source a run was transferred from."""
    from xfer.sources import CATALOGUE

    src = dict(spec.get("source") or {})
    name = src.get("name", "unknown")
    known = source_spec or CATALOGUE.get(name) or CATALOGUE.get(name.removeprefix("random:"))
    random = name.startswith("random:") or src.get("origin") == "random"
    licence = getattr(known, "license", "") or ""
    arch = spec.get("arch", "unknown")
    return {"name": name, "arch": f"transformers encoder of {name}" if arch == "hf" else arch, "origin": src.get("origin", "unknown"),
            "sha256": src.get("sha256") or "not recorded",
            "description": getattr(known, "description", "") or "",
            "license": "none (randomly initialised weights)" if random else (licence or ONLINE_LICENCE),
            "license_id": "" if random else licence, "random": random}


def model_card(docs: dict, source_spec=None) -> str:
    """MODEL_CARD.md from a run's spec, config, metrics and history (`docs`: the dictionaries a run folder holds)."""
    spec, cfg, metrics = docs["spec"], docs.get("config") or {}, docs.get("metrics") or {}
    source = source_facts(spec, source_spec)
    modality = "text-as-image" if spec.get("render") else spec["modality"]
    task_tag = "image-classification" if modality == "image" else "text-classification"
    data = str(cfg.get("data") or "unknown")
    data = data.removeprefix("builtin:") if data.startswith("builtin:") else Path(data).name or data
    front = {"library_name": "xfer", "tags": ["xfer", "transfer-learning", task_tag, f"strategy-{spec.get('strategy')}",
                                             f"source-{source['name']}"],
             "datasets": [data], "metrics": ["accuracy", "f1"], "base_model": source["name"]}
    if source["license_id"]:  # the fine-tuned weights derive from the source's
        front = {"license": source["license_id"].lower(), **front}
    test = metrics.get("test") or {}
    if test:
        front["model-index"] = [{"name": f"{source['name']}-{data}", "results": [{
            "task": {"type": task_tag}, "dataset": {"name": data, "type": data, "split": "test"},
            "metrics": [{"type": "accuracy", "value": round(test["accuracy"], 4)},
                        {"type": "f1", "name": "macro-F1", "value": round(test["macro_f1"], 4)}]}]}]
    history = docs.get("history") or []
    phases: dict[str, int] = {}
    for r in history:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    return environment().get_template("model_card.md.j2").render(
        front=yaml.safe_dump(front, sort_keys=False).strip(), spec=spec, cfg=cfg, m=metrics, source=source,
        modality=modality, data=cfg.get("data") or "unknown", phases=phases, run_name=docs.get("name"),
        splits={s: (metrics.get("split_sizes") or {}).get(s, (metrics.get(s) or {}).get("n"))
                for s in ("train", "val", "test")},
        robust_training=[k for k in ("noise_sigma", "adversarial") if cfg.get(k)])
