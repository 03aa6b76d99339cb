#!/usr/bin/env python3
"""Reference numbers for the real Gemma 3 270M GGUF (tests/fixtures/gemma3_ref/).

Usage (from the repository root, with the venv of requirements.txt):

    /tmp/refvenv/bin/python scripts/reference/gemma3_reference.py

HF transformers loads the GGUF (dequantised to float32, Gemma3ForCausalLM, eager attention)
and its tokenizer from the same file. For the English and the Japanese fixture text it writes
the token ids (BOS + text), the summed negative log-likelihood of every token after BOS
and the perplexity, in float32 (what ftlab computes in); and the first 20 greedy tokens of a
Japanese prompt. Deterministic; re-runnable. GGUF path: env FTLAB_GEMMA3_GGUF, default
~/.cache/ftlab/models/gemma3/gemma-3-270m-q4_k_m.gguf.
"""
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "gemma3_ref"
GGUF = Path(os.environ.get("FTLAB_GEMMA3_GGUF",
                           Path.home() / ".cache/ftlab/models/gemma3/gemma-3-270m-q4_k_m.gguf"))
TEXTS = {
    "en": REPO / "tests" / "fixtures" / "smollm2_ref" / "ppl_text_en.txt",
    "ja": OUT / "ppl_text_ja.txt",
}
PROMPT = "機械学習とは、"
GREEDY_TOKENS = 20


def main():
    tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(
        GGUF.parent, gguf_file=GGUF.name, dtype=torch.float32, attn_implementation="eager").eval()
    ppl = {"source": f"scripts/reference/gemma3_reference.py; transformers {transformers.__version__}, "
                     f"torch {torch.__version__}; float32; GGUF {GGUF.name}", "texts": {}}
    for name, path in TEXTS.items():
        text = path.read_text(encoding="utf-8")
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert ids[0] == tok.bos_token_id, ids[:3]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
        n = len(ids) - 1
        ppl["texts"][name] = {"file": str(path.relative_to(REPO)), "ids": ids, "scored_tokens": n,
                              "total_nll": nll, "perplexity": math.exp(nll / n)}
        print(name, n, nll, math.exp(nll / n))
    (OUT / "ppl.json").write_text(json.dumps(ppl, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                             min_new_tokens=GREEDY_TOKENS)
    new = out[0, len(ids):].tolist()
    greedy = {"source": ppl["source"], "prompt": PROMPT, "prompt_ids": ids, "greedy_ids": new,
              "greedy_text": tok.decode(new)}
    print(greedy)
    (OUT / "greedy.json").write_text(json.dumps(greedy, ensure_ascii=False, indent=1) + "\n",
                                     encoding="utf-8")


if __name__ == "__main__":
    main()
