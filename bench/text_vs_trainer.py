"""`xfer fit` with its defaults on Rotten Tomatoes vs Hugging Face Trainer fine-tuning all of MiniLM, side by side.

Same data split (xfer's seeded 9,808 / 1,000 / 2,000), same offline MiniLM weights. The Trainer reference follows
the common recipe: max length 64, dynamic padding, batch 32, lr 5e-5, 2 epochs, bf16 where the CPU supports it.
Prints each run's training time and test accuracy, and the time ratio (target: xfer reaches 84% in at most half of
the Trainer's bf16 time).

    .venv/bin/python bench/text_vs_trainer.py [--skip-trainer] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time



def trainer_reference(task, hf_dir, bf16: bool, epochs: int = 2) -> tuple[float, float]:
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir), num_labels=task.num_classes)

    class DS(torch.utils.data.Dataset):
        def __init__(self, split):
            self.enc = tok(list(split.items), truncation=True, max_length=64)
            self.labels = split.labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                    "labels": int(self.labels[i])}

    out = tempfile.mkdtemp()
    args = TrainingArguments(out, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-5,
                             num_train_epochs=epochs, bf16=bf16, use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", eval_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=DS(task.train),
                      data_collator=DataCollatorWithPadding(tok))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pred = trainer.predict(DS(task.test)).predictions.argmax(1)
    return seconds, float((pred == task.test.labels).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    os.environ.setdefault("XFER_CACHE_DIR", tempfile.mkdtemp())  # cold feature cache: the probe's pass is counted
    import xfer
    from xfer.data import load_task
    from xfer.data.task import few_shot
    from xfer.fitting.device import resolve_precision
    from xfer.sources import load_source, resolve_source

    smoke = dict(shots=8, epochs=1, lp_epochs=1, max_length=16, min_steps=0) if args.smoke else {}
    run = xfer.fit(data="builtin:rotten_tomatoes", out=tempfile.mkdtemp() + "/run", quiet=True, **smoke)
    xt, xa = run.metrics["train_seconds"], run.metrics["test"]["accuracy"]
    print(f"xfer fit (defaults: {run.spec['strategy']}): {xt:.0f}s training, test accuracy {xa:.4f}", flush=True)
    if args.skip_trainer:
        return
    task = load_task("builtin:rotten_tomatoes")
    if args.smoke:
        task = few_shot(task, 8)
        task = dataclasses.replace(task, test=task.test.subset(range(64)))
    bf16 = resolve_precision("auto") == "bf16"
    hf_dir = load_source(resolve_source("all-MiniLM-L6-v2")).hf_dir
    epochs = 1 if args.smoke else 2
    ht, ha = trainer_reference(task, hf_dir, bf16, epochs)
    print(f"HF Trainer (full FT, {epochs} epochs, {'bf16' if bf16 else 'fp32'}): {ht:.0f}s training, test accuracy {ha:.4f}")
    print(f"time ratio xfer / Trainer: {xt / ht:.2f} (target <= 0.5 at >= 84% accuracy)")


if __name__ == "__main__":
    main()
