#!/usr/bin/env python3
"""Validate the ftlab SFT dataset (train.jsonl / heldout.jsonl).

Usage: python3 data/sft/check.py [DIR]   (DIR defaults to this script's folder)
Prints counts per split / lang / category and exits 1 on any problem.
Standard library only.
"""
import json
import os
import re
import sys
from collections import Counter

SPLITS = ("train", "heldout")
LANGS = {"en", "ja"}
CATEGORIES = {"closed_qa", "unanswerable", "open_qa", "summarization",
              "classification", "brainstorming", "rewrite", "extraction"}
FIELDS = ("instruction", "context", "response", "lang", "category", "short_answer")
REFUSAL = {"en": "The context does not say.", "ja": "文脈には記載がありません。"}
MIN_COUNTS = {"train": 400, "heldout": 80}
MAX_EN_WORDS = 130   # instruction + context + response
MAX_JA_CHARS = 260


def norm(s):
    return re.sub(r"\s+", " ", s).strip().lower()


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    problems = []
    seen = {}  # (instruction, context) -> "split:line"
    counts = {}
    total = Counter()
    for split in SPLITS:
        path = os.path.join(root, split + ".jsonl")
        c = Counter()
        counts[split] = c
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                where = f"{split}.jsonl:{n}"
                if not line.strip():
                    problems.append(f"{where}: empty line")
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.append(f"{where}: bad JSON ({e})")
                    continue
                if not isinstance(r, dict):
                    problems.append(f"{where}: not an object")
                    continue
                extra = set(r) - set(FIELDS)
                if extra:
                    problems.append(f"{where}: unexpected fields {sorted(extra)}")
                bad = False
                for k in FIELDS:
                    v = r.get(k)
                    if not isinstance(v, str):
                        problems.append(f"{where}: field {k!r} missing or not a string")
                        bad = True
                    elif k != "context" and not v.strip():
                        problems.append(f"{where}: field {k!r} is empty")
                        bad = True
                if bad:
                    continue
                lang, cat = r["lang"], r["category"]
                if lang not in LANGS:
                    problems.append(f"{where}: bad lang {lang!r}")
                    continue
                if cat not in CATEGORIES:
                    problems.append(f"{where}: bad category {cat!r}")
                    continue
                if r["short_answer"] not in r["response"]:
                    problems.append(f"{where}: short_answer {r['short_answer']!r} not in response")
                if cat == "unanswerable":
                    if not r["context"].strip():
                        problems.append(f"{where}: unanswerable example has empty context")
                    if r["short_answer"] != REFUSAL[lang]:
                        problems.append(f"{where}: unanswerable short_answer must be {REFUSAL[lang]!r}")
                    if not r["response"].startswith(REFUSAL[lang]):
                        problems.append(f"{where}: unanswerable response must start with {REFUSAL[lang]!r}")
                else:
                    for phrase in REFUSAL.values():
                        if phrase in r["response"]:
                            problems.append(f"{where}: refusal phrase used outside 'unanswerable'")
                if cat in ("closed_qa", "summarization", "extraction") and not r["context"].strip():
                    problems.append(f"{where}: {cat} example has empty context")
                text = r["instruction"] + " " + r["context"] + " " + r["response"]
                if lang == "en" and len(text.split()) > MAX_EN_WORDS:
                    problems.append(f"{where}: too long ({len(text.split())} words)")
                if lang == "ja" and len(re.sub(r"\s", "", text)) > MAX_JA_CHARS:
                    problems.append(f"{where}: too long ({len(re.sub(chr(92) + 's', '', text))} chars)")
                key = (norm(r["instruction"]), norm(r["context"]))
                if key in seen:
                    problems.append(f"{where}: duplicate (instruction, context) of {seen[key]}")
                else:
                    seen[key] = where
                c[(lang, cat)] += 1
                total[(lang, cat)] += 1

    # Contexts must not be shared between splits (heldout is disjoint from train).
    ctx_split = {}
    for (ins, ctx), where in seen.items():
        if ctx:
            ctx_split.setdefault(ctx, set()).add(where.split(".")[0])
    for ctx, splits in ctx_split.items():
        if len(splits) > 1:
            problems.append(f"context appears in both splits: {ctx[:60]!r}...")

    def table(title, c):
        n = sum(c.values())
        print(f"== {title}: {n} examples")
        if not n:
            return
        for lang in sorted(LANGS):
            ln = sum(v for (l, _), v in c.items() if l == lang)
            print(f"  lang {lang}: {ln} ({100 * ln / n:.1f}%)")
        for cat in sorted(CATEGORIES):
            cn = sum(v for (_, k), v in c.items() if k == cat)
            en = c[("en", cat)]
            ja = c[("ja", cat)]
            print(f"  {cat:<15} {cn:>4} ({100 * cn / n:5.1f}%)  en {en:>3}  ja {ja:>3}")

    for split in SPLITS:
        table(split, counts[split])
        if sum(counts[split].values()) < MIN_COUNTS[split]:
            problems.append(f"{split}: fewer than {MIN_COUNTS[split]} examples")
    table("all", total)
    n = sum(total.values()) or 1
    closed = sum(v for (_, k), v in total.items() if k == "closed_qa")
    unans = sum(v for (_, k), v in total.items() if k == "unanswerable")
    if closed / n < 0.40:
        problems.append(f"closed_qa share {closed / n:.1%} < 40%")
    if unans / n < 0.20:
        problems.append(f"unanswerable share {unans / n:.1%} < 20%")

    if problems:
        print(f"\n{len(problems)} problem(s):")
        for p in problems:
            print("  " + p)
        sys.exit(1)
    print("\nOK")


if __name__ == "__main__":
    main()
