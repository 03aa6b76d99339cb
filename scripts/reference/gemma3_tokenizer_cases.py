#!/usr/bin/env python3
"""Reference fixture for ftlab's SentencePiece (`tokenizer.ggml.model = "llama"`) GGUF tokenizer.

Writes, from the Gemma 3 270M GGUF's own metadata, as transformers reads it
(`AutoTokenizer.from_pretrained(dir, gguf_file=name)`, which builds a GemmaTokenizer: BPE with
byte fallback, merges rebuilt from the vocabulary in file order, `" "` -> `"\u2581"` normalizer):

    tests/fixtures/gemma3_tok/cases.json
        cases:   [{text, ids, ids_with_special, tokens, decoded, decoded_with_special_skipped,
                   round_trips}]
                 ids = encode(text, add_special_tokens=False)
                 ids_with_special = encode(text, add_special_tokens=True)   (BOS first)
                 decoded = decode(ids, skip_special_tokens=False)
                 decoded_with_special_skipped = decode(ids_with_special, skip_special_tokens=True)
                 round_trips = (decoded == text)
        special: bos/eos/pad/unk ids, the number of added tokens, and selected added tokens' ids
        provenance: versions, the GGUF's sha256, the backend tokenizer's pipeline (without vocab)

Usage (from the repository root; a venv with transformers 5.23, tokenizers 0.23, gguf, torch):

    /work/refvenv/bin/python scripts/reference/gemma3_tokenizer_cases.py

The GGUF path comes from FTLAB_GEMMA3_GGUF, default /work/gemma/gemma-3-270m-q4_k_m.gguf.
Deterministic: the same file and versions give the same JSON.

Cross-checks done before writing (the script fails if one does not hold):
  * ids_with_special == [bos] + ids for every case (add_bos_token is true, add_eos_token false);
  * decode(ids) == text for every case without a literal "\u2581" in it (the decoder turns every
    "\u2581" into a space, so text that contains one cannot come back unchanged);
  * every case listed as needing byte fallback is tokenized with at least one <0xNN> token.
"""

import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The file hash and package versions recorded in the provenance, as the SmolLM2 script records them.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tokenizer_cases import sha256, version  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "gemma3_tok"
SCRIPT = "scripts/reference/gemma3_tokenizer_cases.py"
GGUF = Path(os.environ.get("FTLAB_GEMMA3_GGUF", "/work/gemma/gemma-3-270m-q4_k_m.gguf"))

# Characters that are not in Gemma's vocabulary, so they are spelled with <0xNN> byte tokens.
BYTE_FALLBACK_TEXTS = [
    "Rare CJK: \u3400\u3401 and \U00020000\U00020bb7 (\U00029e3d)",
    "Hieroglyphs \U00013000\U00013001, runes \u16a0, Cyrillic \ua66e, math \U0001d518",
    "new emoji \U0001fae8\U0001f9cc",
]

TEXTS = [
    # Japanese
    "機械学習とは、",
    "東京は日本の首都です。富士山の高さは3776メートルです。",
    "今日はRustでLLMをfine-tuningします (LoRA, rank=8)。Accuracyは92.5%でした！",
    "吾輩は猫である。名前はまだ無い。\nどこで生れたかとんと見当がつかぬ。",
    "日本語の文章と English words が混ざった text です。",
    "ひらがな カタカナ ｶﾀｶﾅ 漢字 全角ＡＢＣ１２３ 半角ABC123",
    "電話番号は03-1234-5678、郵便番号は〒100-0001です。",
    "\u3000全角スペース\u3000です\u3000",
    "「こんにちは」と彼は言った。『本当に？』……そうですね！",
    # other scripts
    "안녕하세요 세계, 你好世界, Привет, мир! مرحبا بالعالم שלום नमस्ते",
    "Café déjà vu, naïve façade, Ærøskøbing, São Paulo, Łódź, Straße, ¿Qué tal?",
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault, they'd say.",
    "∑_{i=1}^{n} x_i² ≥ 0, α+β=γ, ∀ε>0 ∃δ",
    "https://example.com/path?q=1&x=2 costs $1,234.56 (\u2248\u00a5180,000)",
    # spaces, newlines, tabs
    "   leading spaces",
    "trailing spaces   ",
    " one leading space",
    "multiple    spaces   between  words",
    "a" + " " * 40 + "b",
    "line one\nline two\n\n\nline five\r\nwindows line\n",
    "\n" * 35,
    "\r\n\r\n",
    "def add(a, b):\n\treturn a + b\n\t\tif x:\n\t\t\tprint(\"tab\")\n",
    " \n\t ",
    "\t" * 33 + "x",
    # digits
    "3.14159 and 2026",
    "12345678901234567890 and 1,000,000,000 and 0.000001 and 1e-12",
    # emoji
    "I love Rust \U0001F980\U0001F525 and \U0001F44D\U0001F3FD",
    "family: \U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466, flags \U0001F1EF\U0001F1F5"
    "\U0001F1FA\U0001F1F8, \U0001F3F3\uFE0F\u200D\U0001F308",
    # control and invisible characters
    "a\x00b\x01c\x07d\x1be\x7ff",
    "bell\x07 vertical\x0btab formfeed\x0c unit\x1fsep",
    "\ufeffBOM and zero\u200bwidth\u200cnon\u200djoiner",
    # Gemma's turn format and other added tokens
    "<start_of_turn>user\n機械学習とは何ですか？<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nHi<end_of_turn>\n",
    "<bos><start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<eos>",
    "<end_of_turn>",
    "<table><tr><td>cell</td></tr></table> <b>bold</b> <s>strike</s>",
    "<unused0> [multimodal] <start_of_image>",
    # a literal metaspace character, which the decoder turns into a space
    "\u2581 literal metaspace \u2581\u2581",
    "",
] + BYTE_FALLBACK_TEXTS


def main():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    backend_json = json.loads(tok.backend_tokenizer.to_str())
    bos = tok.bos_token_id

    cases = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        with_special = tok.encode(text, add_special_tokens=True)
        if with_special != [bos] + ids:
            sys.exit(f"add_special_tokens=True is not BOS + ids for {text!r}: {with_special}")
        tokens = tok.convert_ids_to_tokens(ids)
        decoded = tok.decode(ids, skip_special_tokens=False)
        if "\u2581" not in text and decoded != text:
            sys.exit(f"round trip failed for {text!r}: {decoded!r}")
        if text in BYTE_FALLBACK_TEXTS and not any(t.startswith("<0x") for t in tokens):
            sys.exit(f"{text!r} was expected to need byte fallback: {tokens}")
        cases.append({
            "text": text,
            "ids": ids,
            "ids_with_special": with_special,
            "tokens": tokens,
            "decoded": decoded,
            "decoded_with_special_skipped": tok.decode(with_special, skip_special_tokens=True),
            "round_trips": decoded == text,
        })

    added = {t["content"]: t["id"] for t in backend_json["added_tokens"]}
    special = {
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "vocab_size": len(tok),
        "added_token_count": len(added),
        "added_special_count": sum(1 for t in backend_json["added_tokens"] if t["special"]),
        "selected_added_tokens": {
            name: added[name]
            for name in ["<start_of_turn>", "<end_of_turn>", "<mask>", "[multimodal]", "\n",
                         "\n\n", "\t", "<table>", "<s>", "</s>", "<start_of_image>"]
        },
    }

    pipeline = {k: backend_json[k] for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}
    model = {k: v for k, v in backend_json["model"].items() if k not in ("vocab", "merges")}
    model["vocab_len"] = len(backend_json["model"]["vocab"])
    model["merges_len"] = len(backend_json["model"]["merges"])
    provenance = {
        "generated_by": SCRIPT,
        "source": "AutoTokenizer.from_pretrained(dir, gguf_file=name) on the GGUF's own metadata",
        "tokenizer_class": type(tok).__name__,
        "gguf_file": GGUF.name,
        "gguf_sha256": sha256(GGUF),
        "python": platform.python_version(),
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
        "gguf": version("gguf"),
        "backend_pipeline": pipeline,
        "backend_model": model,
        "cross_checks": [
            "encode(text, add_special_tokens=True) == [bos] + encode(text, add_special_tokens=False)",
            "decode(ids) == text for every text without a literal U+2581",
            "the byte-fallback texts are tokenized with <0xNN> tokens",
        ],
    }

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "cases.json", "w", encoding="utf-8") as f:
        json.dump({"provenance": provenance, "special": special, "cases": cases},
                  f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} tokenizer cases to {OUT / 'cases.json'}")


if __name__ == "__main__":
    main()
