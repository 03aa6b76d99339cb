#!/usr/bin/env python3
"""Reference fixtures for ftlab's GGUF tokenizer and chat-template tests.

Writes, from the SmolLM2 GGUF's own metadata, as transformers reads it:

    tests/fixtures/smollm2_tok/tokenizer_cases.json  [{text, ids}]            (add_special_tokens=False)
    tests/fixtures/smollm2_tok/chat_cases.json       [{messages, add_generation_prompt, rendered, ids}]
        plus extra_template_cases (templates exercising trim/lstrip blocks, Python methods, loop
        controls, namespace, tojson, {% generation %}) and one raise_exception case

Usage (from the repository root; the venv lives OUTSIDE the repo, torch is not needed):

    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers==5.23.0 tokenizers==0.23.3 gguf==0.19.0 numpy jinja2
    HF_HUB_OFFLINE=1 /tmp/tokvenv/bin/python scripts/reference/tokenizer_cases.py

The model path comes from FTLAB_SMOLLM2_GGUF, default
/root/.cache/ftlab/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf.

About torch: transformers 5.23's GGUF reader imports torch at module level although building a
tokenizer only reads metadata. When torch cannot be imported, this script puts a placeholder
module named `torch` in sys.modules (and tells transformers' GGUF loader that torch is there) so
that `AutoTokenizer.from_pretrained(dir, gguf_file=name)` runs its real tokenizer code. No tensor
is read. With a working torch installed the placeholder is not used. Which happened is recorded
in the fixtures' provenance.

Cross-checks done before writing (the script fails if one does not hold):
  * decode(encode(text)) == text for every case;
  * transformers' GGUF tokenizer uses GPT-2's ByteLevel pre-tokenizer for `tokenizer.ggml.pre` =
    "smollm", while SmolLM2's own tokenizer.json (and llama.cpp) split digits one by one first;
    the ids of both pre-tokenizers are computed and must agree on every case (the vocabulary has
    no multi-digit tokens, so they do).
"""

import hashlib
import importlib.metadata as md
import json
import os
import platform
import sys
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "smollm2_tok"
SCRIPT = "scripts/reference/tokenizer_cases.py"
GGUF = Path(os.environ.get(
    "FTLAB_SMOLLM2_GGUF",
    "/root/.cache/ftlab/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault, they'd say.",
    "3.14159 and 2026",
    "Hello world! 123 + 4567 = 4690; 1,000,000 people in 1999-12-31.",
    "def add(a, b):\n    return a + b\n\n\tif x:\n\t\tprint(\"tab\")\n",
    "   leading spaces",
    "trailing spaces   ",
    "multiple    spaces   between  words",
    "line one\nline two\n\n\nline five\r\nwindows line\n",
    "I love Rust \U0001F980\U0001F525 and \U0001F44D\U0001F3FD, family: "
    "\U0001F468\u200D\U0001F469\u200D\U0001F467",
    "Caf\u00e9 d\u00e9j\u00e0 vu, na\u00efve fa\u00e7ade, \u00c6r\u00f8sk\u00f8bing, "
    "S\u00e3o Paulo, \u0141\u00f3d\u017a, Stra\u00dfe, \u00bfQu\u00e9 tal?",
    "東京は日本の首都です。富士山の高さは3776メートルです。",
    "今日はRustでLLMをfine-tuningします (LoRA, rank=8)。Accuracyは92.5%でした！",
    "안녕하세요 세계, 你好世界, Привет, мир!",
    "I'M here, you're there; we've... 'quoted' \"double\" \u2014 em-dash \u2013 en-dash",
    "https://example.com/path?q=1&x=2 costs $1,234.56 (\u2248\u00a5180,000) <b>bold</b>",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<|endoftext|>",
    " \n\t ",
    "",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one word."},
        {"role": "user", "content": "What is the capital of Japan?"},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a joke about Rust."},
    ],
    [
        {"role": "system", "content": "日本語で答えてください。"},
        {"role": "user", "content": "富士山の高さは？"},
        {"role": "assistant", "content": "3776メートルです。"},
        {"role": "user", "content": "  Thanks!  \n"},
    ],
]


# Templates that exercise what HF chat templates rely on, rendered by transformers'
# apply_chat_template(..., chat_template=...) exactly as it renders a model's own template.
EXTRA_TEMPLATES = {
    # trim_blocks / lstrip_blocks: block tags on their own indented lines leave no trace.
    "whitespace_control": (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'system' %}\n"
        "System says: {{ message['content'] }}\n"
        "    {% else %}\n"
        "  {{ message['role'] }}: {{ message['content'] }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "assistant:\n"
        "{% endif %}\n"
    ),
    # Python string/dict methods, as pycompat provides them.
    "python_methods": (
        "{{ bos_token }}{% for m in messages %}"
        "{{ m['role'].upper() }}|{{ m['content'].strip() }}|{{ m['content'].lower().replace(' ', '_') }}"
        "|{% if m['content'].startswith('Hi') %}greets{% else %}plain{% endif %}"
        "|{{ m['content'].split(' ') | length }}"
        "|{% for k, v in m.items() %}{{ k }}={{ v | length }};{% endfor %}"
        "{% if not loop.last %}{{ '\n' }}{% endif %}{% endfor %}{{ eos_token }}"
    ),
    # {% break %} / {% continue %} (jinja2.ext.loopcontrols), loop variables, slicing.
    "loop_controls": (
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}"
        "[{{ loop.index }}/{{ loop.length }} {{ m['role'] }}{% if loop.first %} first{% endif %}"
        "{% if loop.last %} last{% endif %}]{% endfor %}"
        "|{% for m in messages[1:] %}{{ m['role'][0] }}{% endfor %}"
    ),
    # namespace(), inline if, selectattr, booleans and None printed the Python way.
    "namespace_and_tests": (
        "{% set ns = namespace(has_system=false, n=0) %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.has_system = true %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% endfor %}"
        "system={{ ns.has_system }} n={{ ns.n }} tools={{ tools }} "
        "users={{ messages | selectattr('role', 'equalto', 'user') | list | length }} "
        "first={{ messages[0]['content'] if messages[0]['role'] == 'system' else 'none' }}"
        "{% if tools is not none %} HAS_TOOLS{% endif %}"
        "{% if messages[0]['content'] is string %} str{% endif %}"
        "{% if add_generation_prompt %} agp{% endif %}"
    ),
    # transformers' own tojson: Python json.dumps spacing, no HTML escaping, key order kept.
    "tojson": (
        "{{ messages | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n"
        "{{ {'b': 1, 'a': [1, 2.5, none, true], 'c': '<tag> & \u00e9'} | tojson(sort_keys=true) }}"
    ),
    # {% generation %} (transformers' assistant-mask tag) leaves the text as it is.
    "generation_tag": (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
        "A: {{ m['content'] }}{% endgeneration %}{% else %}{{ m['role'][0] | upper }}: {{ m['content'] }}"
        "{% endif %}{{ '\n' }}{% endfor %}"
    ),
}

RAISING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}{{ m['content'] }}{% endfor %}"
)


def load_tokenizer():
    """AutoTokenizer from the GGUF; see the module docstring about the torch placeholder."""
    from transformers import AutoTokenizer

    torch_shim = False
    try:
        import torch  # noqa: F401
    except Exception:
        torch_shim = True

        class _Any:
            def __init__(self, name):
                self._name = name

            def __getattr__(self, k):
                return _Any(f"{self._name}.{k}")

            def __call__(self, *a, **k):
                if len(a) == 1 and callable(a[0]) and not k:
                    return a[0]
                return _Any(self._name + "()")

            def __or__(self, o):
                return self

            def __ror__(self, o):
                return self

            def __repr__(self):
                return f"<torch placeholder {self._name}>"

        class _Shim(types.ModuleType):
            def __getattr__(self, k):
                return _Any("torch." + k)

        sys.modules["torch"] = _Shim("torch")
        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_utils.is_torch_available = lambda: True

    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    return tok, torch_shim


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def main():
    from tokenizers import Tokenizer, pre_tokenizers

    tok, torch_shim = load_tokenizer()
    backend = tok.backend_tokenizer
    backend_json = json.loads(backend.to_str())

    # The original SmolLM2 tokenizer.json's pre-tokenizer, for the cross-check.
    original = Tokenizer.from_str(backend.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])

    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        alt = original.encode(text, add_special_tokens=False).ids
        if ids != alt:
            sys.exit(f"pre-tokenizers disagree on {text!r}: {ids} vs {alt}")
        back = tok.decode(ids, skip_special_tokens=False)
        if back != text:
            sys.exit(f"round trip failed for {text!r}: {back!r}")
        cases.append({
            "text": text,
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
        })

    chats = []
    for messages in CHATS:
        for agp in (True, False):
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
            chats.append({
                "messages": messages,
                "add_generation_prompt": agp,
                "rendered": rendered,
                "ids": tok.encode(rendered, add_special_tokens=False),
            })

    extra = []
    for name, template in EXTRA_TEMPLATES.items():
        for messages in CHATS:
            for agp in (True, False):
                extra.append({
                    "name": name,
                    "template": template,
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "rendered": tok.apply_chat_template(
                        messages, chat_template=template, tokenize=False, add_generation_prompt=agp),
                })
    raising_messages = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]
    try:
        tok.apply_chat_template(raising_messages, chat_template=RAISING_TEMPLATE, tokenize=False)
        sys.exit("the raising template did not raise")
    except Exception as e:  # jinja2.exceptions.TemplateError
        raised = {"template": RAISING_TEMPLATE, "messages": raising_messages,
                  "error_type": type(e).__name__, "message": str(e)}

    special = {
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "added_tokens": {t["content"]: t["id"] for t in backend_json["added_tokens"]},
    }

    provenance = {
        "generated_by": SCRIPT,
        "source": "AutoTokenizer.from_pretrained(dir, gguf_file=name) on the GGUF's own metadata",
        "gguf_file": GGUF.name,
        "gguf_sha256": sha256(GGUF),
        "python": platform.python_version(),
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
        "gguf": version("gguf"),
        "jinja2": version("jinja2"),
        "torch": None if torch_shim else version("torch"),
        "torch_placeholder_used": torch_shim,
        "transformers_pre_tokenizer": backend_json["pre_tokenizer"],
        "cross_checks": [
            "decode(encode(text), skip_special_tokens=False) == text for every text",
            "ids equal those of Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]"
            " (the pre-tokenizer of SmolLM2's own tokenizer.json) for every text",
        ],
        "encode": "add_special_tokens=False",
        "chat": "apply_chat_template(messages, tokenize=False, add_generation_prompt=...)",
    }

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "tokenizer_cases.json", "w", encoding="utf-8") as f:
        json.dump({"provenance": provenance, "special": special, "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(OUT / "chat_cases.json", "w", encoding="utf-8") as f:
        json.dump({"provenance": provenance, "chat_template": tok.chat_template,
                   "bos_token": tok.bos_token, "eos_token": tok.eos_token, "cases": chats,
                   "extra_template_cases": extra, "raise_exception_case": raised},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} tokenizer cases, {len(chats)} chat cases and "
          f"{len(extra)} extra template cases to {OUT}")


if __name__ == "__main__":
    main()
