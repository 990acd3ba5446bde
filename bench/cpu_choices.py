"""The CPU speed choices behind xfer's defaults, each timed as training samples/s of the same step with and without
it (forward, backward, fused AdamW step), on this machine:

- precision: fp32 vs bf16 autocast, for MobileNet-V2 (depthwise convolutions) at 64 and 96 px and for MiniLM;
  `precision: auto` keeps depthwise CNNs in fp32 on the CPU because of this row;
- MiniLM: eager attention vs SDPA (with dropout 0), encoder dropout 0 vs 0.1, frozen vs trainable embedding tables.

    .venv/bin/python bench/cpu_choices.py [--steps 10] [--smoke]

Timings alternate the two settings of a pair (median of --rounds), so drift in machine speed hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def cpu_name() -> str:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "CPU")
    isa = "AMX-BF16" if "amx_bf16" in text else "AVX512-BF16" if "avx512_bf16" in text else "no bf16 instructions"
    return f"{model} ({isa}, {torch.get_num_threads()} threads)"


def step_rate(model, batch, labels, bf16: bool, steps: int, trainable=None) -> float:
    """Training samples per second of `steps` full steps (after 2 warm-up steps)."""
    params = [p for n, p in model.named_parameters() if trainable is None or n in trainable]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable is None or n in trainable)
    opt = torch.optim.AdamW(params, 1e-4, fused=True)
    model.train()

    def one():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(batch).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * len(labels) / (time.perf_counter() - start)


def pair(name: str, a: tuple[str, callable], b: tuple[str, callable], rounds: int) -> None:
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(a[1]())
        rb.append(b[1]())
    ma, mb = statistics.median(ra), statistics.median(rb)
    print(f"{name}: {a[0]} {ma:.0f} samples/s, {b[0]} {mb:.0f} samples/s ({mb / ma:.2f}x)", flush=True)


def text_model(hf_dir, attention: str = "eager", dropout: float = 0.0):
    from transformers import AutoConfig, AutoModel

    from xfer.models import TransferModel

    config = AutoConfig.from_pretrained(str(hf_dir))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    backbone = AutoModel.from_config(config, attn_implementation=attention, add_pooling_layer=False)
    return TransferModel(backbone, config.hidden_size, 2, "text", 0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run on tiny inputs (checks the script works)")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.rounds = 1, 1
    from xfer.data import load_task
    from xfer.data.loaders import TextBatches, TextPrep, load_tokenizer
    from xfer.fitting.strategies import embedding_tables
    from xfer.models import build_image_model
    from xfer.sources import load_source, resolve_source

    print(cpu_name())
    torch.manual_seed(0)
    sizes, image_batch, text_batch = ((32,), 8, 8) if args.smoke else ((64, 96), 64, 32)
    for size in sizes:
        model = build_image_model("mobilenetv2_100", 10, in_chans=1).to(memory_format=torch.channels_last)
        x = torch.randn(image_batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (image_batch,))
        pair(f"MobileNet-V2 {size} px, batch {image_batch}, channels_last",
             ("fp32", lambda: step_rate(model, x, y, False, args.steps)),
             ("bf16", lambda: step_rate(model, x, y, True, args.steps)), args.rounds)

    src = load_source(resolve_source("all-MiniLM-L6-v2"))
    tok = load_tokenizer(src.hf_dir)
    texts = load_task("builtin:rotten_tomatoes").train.subset(range(text_batch))
    inputs, labels, _ = TextBatches(texts, tok, TextPrep(128))[range(text_batch)]
    base = text_model(src.hf_dir)
    from xfer.fitting.device import cpu_supports_bf16

    bf16 = cpu_supports_bf16()  # the rest in the precision `auto` picks for MiniLM on this CPU
    mode = "bf16" if bf16 else "fp32"
    pair(f"MiniLM, batch {text_batch} (rotten tomatoes)", ("fp32", lambda: step_rate(base, inputs, labels, False,
                                                                                   args.steps)),
         ("bf16", lambda: step_rate(base, inputs, labels, True, args.steps)), args.rounds)
    sdpa = text_model(src.hf_dir, "sdpa")
    pair(f"MiniLM attention ({mode}, dropout 0)", ("sdpa", lambda: step_rate(sdpa, inputs, labels, bf16, args.steps)),
         ("eager", lambda: step_rate(base, inputs, labels, bf16, args.steps)), args.rounds)
    dropout = text_model(src.hf_dir, "eager", 0.1)
    pair(f"MiniLM encoder dropout ({mode}, eager)",
         ("0.1", lambda: step_rate(dropout, inputs, labels, bf16, args.steps)),
         ("0", lambda: step_rate(base, inputs, labels, bf16, args.steps)), args.rounds)
    frozen = {n for n, _ in base.named_parameters()} - embedding_tables(base)
    pair(f"MiniLM embedding tables ({mode}, eager, dropout 0)",
         ("trainable", lambda: step_rate(base, inputs, labels, bf16, args.steps)),
         ("frozen", lambda: step_rate(base, inputs, labels, bf16, args.steps, frozen)), args.rounds)


if __name__ == "__main__":
    main()
