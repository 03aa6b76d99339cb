#!/usr/bin/env python3
"""Training speed of HF transformers (+ peft) on the same model and shape as `ftlab bench`.

Usage: hf_train.py GGUF TECHNIQUE BATCH SEQ STEPS THREADS DATA_JSONL
TECHNIQUE: full | grad-ckpt | lora. Prints one JSON line: technique, tokens_per_sec, step_secs.

The model is SmolLM2 read from ftlab's GGUF by transformers (dequantised to float32), rows are
packed from the SFT data's text (BATCH × SEQ tokens per step, every token a target), AdamW as
ftlab's presets use it, LoRA r=8 alpha 16 on all linear layers, dropout 0. One warm-up step,
then STEPS timed steps.
"""
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def rows(tok, data: Path, batch: int, seq: int, count: int):
    ids = []
    for line in data.read_text().splitlines():
        ex = json.loads(line)
        text = " ".join(str(v) for v in ex.values() if isinstance(v, str))
        ids.extend(tok(text)["input_ids"])
        if len(ids) >= batch * seq * count:
            break
    need = batch * seq * count
    while len(ids) < need:
        ids = ids + ids
    t = torch.tensor(ids[:need]).view(count, batch, seq)
    return [t[i] for i in range(count)]


def main():
    gguf, technique, batch, seq, steps, threads, data = sys.argv[1:8]
    batch, seq, steps, threads = int(batch), int(seq), int(steps), int(threads)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = Path(gguf)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32
    )
    if technique == "grad-ckpt":
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if technique == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
        )
    elif technique not in ("full", "grad-ckpt"):
        sys.exit(f"unknown technique {technique}")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = 2e-4 if technique == "lora" else 2e-5
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = rows(tok, Path(data), batch, seq, steps + 1)

    def step(x):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for x in batches[1:]:
        step(x)
    secs = (time.perf_counter() - t0) / steps
    print(
        json.dumps(
            {
                "technique": technique,
                "batch_size": batch,
                "seq_len": seq,
                "step_secs": secs,
                "tokens_per_sec": batch * seq / secs,
                "threads": threads,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
