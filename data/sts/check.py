#!/usr/bin/env python3
"""Validate the ftlab STS pair dataset (data/sts) and the RAG document set (data/docs).

Standard library only. Usage:

    python3 data/sts/check.py               # validate everything, print counts
    python3 data/sts/check.py --print-table # print the README counts table only

Exits 0 when every check passes, 1 when any problem is found (problems are
listed on stderr). Checks:

  data/sts/{train,heldout}.jsonl
    * one JSON object per line with exactly sentence1, sentence2, label, lang
    * label is a number in [0, 5] with at most one decimal place
    * lang is "en" or "ja" and matches the script of both sentences
    * sentence length: en 5-25 words, ja 10-40 characters
    * no empty/identical sentences in a pair, no duplicate pair (either order)
      within or across splits
    * splits are disjoint: no sentence (NFKC, case and whitespace folded)
      occurs in both splits
    * train >= 500 pairs, heldout >= 120 pairs
    * each language holds 40-60 % of each split
    * each label band [0,1) [1,2) [2,3) [3,4) [4,5] holds >= 12 % of each split
    * the counts table in data/sts/README.md equals the computed one
  data/docs
    * 12-20 .txt files, UTF-8, >= 3 paragraphs, en 150-600 words,
      ja 300-1200 characters, English and Japanese counts differ by <= 1
  data/docs/questions.jsonl
    * keys question, answer, source, lang
    * >= 30 answerable questions: answer is a short string found verbatim in
      the named source file and in no other document; lang matches the source
    * >= 5 unanswerable questions: answer and source are null, lang set
    * no duplicate questions
"""
import json
import os
import re
import sys
import unicodedata
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.dirname(HERE)
DOCS = os.path.join(DATA, "docs")
SPLITS = ("train", "heldout")
MIN_PAIRS = {"train": 500, "heldout": 120}
BANDS = ("0-1", "1-2", "2-3", "3-4", "4-5")
MIN_BAND_SHARE = 0.12
LANGS = ("en", "ja")
KEYS = {"sentence1", "sentence2", "label", "lang"}
TABLE_BEGIN = "<!-- counts:begin -->"
TABLE_END = "<!-- counts:end -->"

JA_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
CJK_ANY_RE = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")

errors = []


def err(msg):
    errors.append(msg)


def norm(s):
    s = unicodedata.normalize("NFKC", s)
    return " ".join(s.split()).casefold()


def band(label):
    return BANDS[min(int(label), 4)]


def is_ja(text):
    return bool(JA_RE.search(text))


def ja_len(text):
    return sum(1 for ch in text if not ch.isspace())


def check_sentence(where, s, lang):
    if not isinstance(s, str) or not s.strip():
        err(f"{where}: empty or non-string sentence")
        return
    if s != s.strip():
        err(f"{where}: leading/trailing whitespace")
    if lang == "ja":
        if not is_ja(s):
            err(f"{where}: lang=ja but no Japanese characters: {s!r}")
        n = ja_len(s)
        if not 10 <= n <= 40:
            err(f"{where}: ja sentence has {n} characters (want 10-40): {s!r}")
    elif lang == "en":
        if CJK_ANY_RE.search(s):
            err(f"{where}: lang=en but contains CJK characters: {s!r}")
        n = len(s.split())
        if not 5 <= n <= 25:
            err(f"{where}: en sentence has {n} words (want 5-25): {s!r}")


def load_split(name):
    path = os.path.join(HERE, f"{name}.jsonl")
    rows = []
    if not os.path.exists(path):
        err(f"{path}: missing")
        return rows
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        err(f"{path}: not UTF-8 ({e})")
        return rows
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            if i != len(text.split("\n")):
                err(f"{name}:{i}: blank line")
            continue
        where = f"{name}:{i}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            err(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(obj, dict) or set(obj) != KEYS:
            err(f"{where}: keys must be exactly {sorted(KEYS)}")
            continue
        lab = obj["label"]
        if isinstance(lab, bool) or not isinstance(lab, (int, float)):
            err(f"{where}: label is not a number")
            continue
        if not 0 <= lab <= 5:
            err(f"{where}: label {lab} outside [0, 5]")
        if abs(lab * 10 - round(lab * 10)) > 1e-9:
            err(f"{where}: label {lab} has more than one decimal")
        lang = obj["lang"]
        if lang not in LANGS:
            err(f"{where}: lang {lang!r} not in {LANGS}")
            continue
        check_sentence(where + ":sentence1", obj["sentence1"], lang)
        check_sentence(where + ":sentence2", obj["sentence2"], lang)
        if isinstance(obj["sentence1"], str) and isinstance(obj["sentence2"], str):
            if norm(obj["sentence1"]) == norm(obj["sentence2"]):
                err(f"{where}: sentence1 and sentence2 are identical")
            rows.append((where, obj))
    return rows


def counts_table(data):
    """Markdown table: rows = split x lang (+ split total), cols = bands."""
    lines = ["| split | lang | pairs | " + " | ".join(f"[{b})" if b != "4-5" else "[4-5]" for b in BANDS) + " |",
             "|---|---|---:|" + "---:|" * len(BANDS)]
    for split in SPLITS:
        rows = [o for _, o in data[split]]
        for lang in LANGS + ("all",):
            sub = [o for o in rows if lang == "all" or o["lang"] == lang]
            c = Counter(band(o["label"]) for o in sub)
            cells = []
            for b in BANDS:
                share = 100.0 * c[b] / len(sub) if sub else 0.0
                cells.append(f"{c[b]} ({share:.1f}%)")
            lines.append(f"| {split} | {lang} | {len(sub)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_sts():
    data = {s: load_split(s) for s in SPLITS}
    seen_pairs = {}
    split_sents = {}
    for split in SPLITS:
        rows = data[split]
        if len(rows) < MIN_PAIRS[split]:
            err(f"{split}: {len(rows)} pairs, need >= {MIN_PAIRS[split]}")
        sents = Counter()
        for where, o in rows:
            key = frozenset((norm(o["sentence1"]), norm(o["sentence2"])))
            if key in seen_pairs:
                err(f"{where}: duplicate pair (also at {seen_pairs[key]})")
            else:
                seen_pairs[key] = where
            sents[norm(o["sentence1"])] += 1
            sents[norm(o["sentence2"])] += 1
        split_sents[split] = sents
        if rows:
            lc = Counter(o["lang"] for _, o in rows)
            for lang in LANGS:
                share = lc[lang] / len(rows)
                if not 0.40 <= share <= 0.60:
                    err(f"{split}: lang {lang} is {share:.1%} of pairs (want 40-60%)")
            bc = Counter(band(o["label"]) for _, o in rows)
            for b in BANDS:
                share = bc[b] / len(rows)
                if share < MIN_BAND_SHARE:
                    err(f"{split}: band {b} holds {share:.1%} (want >= {MIN_BAND_SHARE:.0%})")
    shared = set(split_sents["train"]) & set(split_sents["heldout"])
    for s in sorted(shared):
        err(f"sentence occurs in both train and heldout: {s!r}")

    table = counts_table(data)
    readme = os.path.join(HERE, "README.md")
    if os.path.exists(readme):
        text = open(readme, encoding="utf-8").read()
        m = re.search(re.escape(TABLE_BEGIN) + r"\n(.*?)\n" + re.escape(TABLE_END), text, re.S)
        if not m:
            err(f"README.md: no table between {TABLE_BEGIN} and {TABLE_END}")
        elif m.group(1).strip() != table.strip():
            err("README.md: counts table is stale; regenerate with --print-table")
    else:
        err("data/sts/README.md missing")
    return data, table, split_sents


def doc_lang(text):
    letters = [ch for ch in text if not ch.isspace()]
    ja = sum(1 for ch in letters if JA_RE.match(ch))
    return "ja" if letters and ja / len(letters) > 0.3 else "en"


def check_docs():
    docs = {}
    if not os.path.isdir(DOCS):
        err("data/docs missing")
        return docs
    names = sorted(n for n in os.listdir(DOCS) if n.endswith(".txt"))
    if not 12 <= len(names) <= 20:
        err(f"data/docs: {len(names)} .txt files (want 12-20)")
    for n in names:
        try:
            text = open(os.path.join(DOCS, n), encoding="utf-8").read()
        except UnicodeDecodeError as e:
            err(f"docs/{n}: not UTF-8 ({e})")
            continue
        lang = doc_lang(text)
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if len(paras) < 3:
            err(f"docs/{n}: {len(paras)} paragraphs (want >= 3)")
        if lang == "en":
            size = len(text.split())
            if not 150 <= size <= 600:
                err(f"docs/{n}: {size} words (want 150-600)")
        else:
            size = ja_len(text)
            if not 300 <= size <= 1200:
                err(f"docs/{n}: {size} characters (want 300-1200)")
        docs[n] = {"text": text, "lang": lang, "size": size, "paras": len(paras)}
    lc = Counter(d["lang"] for d in docs.values())
    if abs(lc["en"] - lc["ja"]) > 1:
        err(f"data/docs: {lc['en']} English vs {lc['ja']} Japanese files (want about half each)")
    return docs


def check_questions(docs):
    path = os.path.join(DOCS, "questions.jsonl")
    stats = Counter()
    if not os.path.exists(path):
        err("data/docs/questions.jsonl missing")
        return stats
    seen = set()
    for i, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        where = f"questions:{i}"
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            err(f"{where}: invalid JSON ({e})")
            continue
        if not isinstance(q, dict) or set(q) != {"question", "answer", "source", "lang"}:
            err(f"{where}: keys must be exactly answer, lang, question, source")
            continue
        if not isinstance(q["question"], str) or not q["question"].strip():
            err(f"{where}: empty question")
            continue
        if norm(q["question"]) in seen:
            err(f"{where}: duplicate question")
        seen.add(norm(q["question"]))
        if q["lang"] not in LANGS:
            err(f"{where}: lang {q['lang']!r} not in {LANGS}")
        if (q["lang"] == "ja") != is_ja(q["question"]):
            err(f"{where}: question script does not match lang {q['lang']}")
        ans, src = q["answer"], q["source"]
        if ans is None:
            stats["null"] += 1
            stats[f"null_{q['lang']}"] += 1
            if src is not None:
                err(f"{where}: unanswerable question must have source null")
            continue
        if not isinstance(ans, str) or not ans.strip():
            err(f"{where}: answer must be a non-empty string or null")
            continue
        if len(ans) > 80:
            err(f"{where}: answer longer than 80 characters")
        if src not in docs:
            err(f"{where}: source {src!r} is not a document in data/docs")
            continue
        if ans not in docs[src]["text"]:
            err(f"{where}: answer {ans!r} not found verbatim in {src}")
        others = [n for n, d in docs.items() if n != src and ans in d["text"]]
        if others:
            err(f"{where}: answer {ans!r} also occurs in {others}")
        if docs[src]["lang"] != q["lang"]:
            err(f"{where}: lang {q['lang']} but {src} is {docs[src]['lang']}")
        stats["answered"] += 1
        stats[f"answered_{q['lang']}"] += 1
        stats[f"src:{src}"] += 1
    if stats["answered"] < 30:
        err(f"questions: {stats['answered']} answerable (want >= 30)")
    if stats["null"] < 5:
        err(f"questions: {stats['null']} unanswerable (want >= 5)")
    return stats


def main():
    data, table, split_sents = check_sts()
    if "--print-table" in sys.argv[1:]:
        print(table)
        return 0
    docs = check_docs()
    qstats = check_questions(docs)

    print("== data/sts ==")
    print(table)
    for split in SPLITS:
        labels = [o["label"] for _, o in data[split]]
        if labels:
            mean = sum(labels) / len(labels)
            print(f"{split}: {len(labels)} pairs, {len(split_sents[split])} distinct sentences, "
                  f"mean label {mean:.2f}")
    print("== data/docs ==")
    for n, d in sorted(docs.items()):
        unit = "words" if d["lang"] == "en" else "chars"
        print(f"{n}: {d['lang']} {d['size']} {unit}, {d['paras']} paragraphs, "
              f"{qstats.get('src:' + n, 0)} questions")
    print(f"questions: {qstats['answered']} answerable "
          f"(en {qstats['answered_en']}, ja {qstats['answered_ja']}), "
          f"{qstats['null']} unanswerable (en {qstats['null_en']}, ja {qstats['null_ja']})")
    if errors:
        print(f"\n{len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print("\nOK: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
