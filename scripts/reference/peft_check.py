#!/usr/bin/env python3
"""Checks that an adapter ftlab trained loads in HF peft and scores a text as ftlab does.

Usage (venv of requirements.txt plus `pip install peft`):

    ftlab perplexity --model gemma3 --adapter RUN --file F --window 512 --stride 512
    /tmp/refvenv/bin/python scripts/reference/peft_check.py GGUF RUN/adapter F

Loads the base model from the GGUF with transformers (float32), applies the adapter with
`PeftModel.from_pretrained` (LoRA factors and `modules_to_save`, with HF's module names), and
prints the same JSON line as `ftlab perplexity` (one window: the text must fit in 512 tokens).
"""
import json
import math
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(2)
gguf, adapter, text_file = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
base = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
model = PeftModel.from_pretrained(base, adapter).eval()
ids = tok(Path(text_file).read_text(encoding="utf-8"))["input_ids"][:512]
with torch.no_grad():
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item()
print(json.dumps({"tokens": len(ids) - 1, "nll": nll, "ppl": math.exp(nll)}))
