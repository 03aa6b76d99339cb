#!/usr/bin/env python3
"""Greedy generation speed of llama.cpp (llama-cpp-python) on a GGUF, as `ftlab generate`
measures it.

Usage: llama_speed.py GGUF THREADS MAX_NEW PROMPT_FILE [--chat] [--bos]
Prints one JSON line: prompt_tokens, prompt_secs, new_tokens, decode_tokens_per_sec.

With --chat the prompt is one user turn rendered with the GGUF's own chat template (as
`ftlab generate --chat` does); otherwise the file's text is the prompt, after the BOS token
with --bos (as `ftlab generate` starts a Gemma prompt). Prompt processing is
timed apart from decoding (a first call generating one token); decoding's rate counts the
tokens after the first.
"""
import json
import sys
import time

from llama_cpp import Llama


def main():
    gguf, threads, max_new, prompt_file = sys.argv[1:5]
    chat = "--chat" in sys.argv[5:]
    bos = "--bos" in sys.argv[5:]
    threads, max_new = int(threads), int(max_new)
    text = open(prompt_file, encoding="utf-8").read()
    llm = Llama(
        model_path=gguf,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=4096,
        n_batch=512,
        verbose=False,
        seed=0,
    )
    if chat:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        tmpl = llm.metadata["tokenizer.chat_template"]
        eos = llm.detokenize([llm.token_eos()]).decode()
        bos = llm.detokenize([llm.token_bos()]).decode()
        fmt = Jinja2ChatFormatter(template=tmpl, eos_token=eos, bos_token=bos)
        prompt = fmt(messages=[{"role": "user", "content": text}]).prompt
    else:
        prompt = text
    ids = llm.tokenize(prompt.encode(), add_bos=bos and not chat, special=True)
    greedy = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    # Prompt processing: the prompt and one token.
    llm.reset()
    t0 = time.perf_counter()
    next(llm.generate(ids, reset=True, **greedy))
    prompt_secs = time.perf_counter() - t0
    # The whole generation, then decoding's share.
    llm.reset()
    n = 0
    t0 = time.perf_counter()
    first = None
    for tok in llm.generate(ids, reset=True, **greedy):
        n += 1
        if first is None:
            first = time.perf_counter()
        if tok == llm.token_eos() or n >= max_new:
            break
    end = time.perf_counter()
    print(
        json.dumps(
            {
                "prompt_tokens": len(ids),
                "prompt_secs": prompt_secs,
                "new_tokens": n,
                "decode_tokens_per_sec": (n - 1) / (end - first) if n > 1 else 0.0,
                "threads": threads,
            }
        )
    )


if __name__ == "__main__":
    main()
