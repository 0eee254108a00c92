#!/usr/bin/env python3
"""Make data/metric_golden.json: sacreBLEU corpus BLEU on fixed Bengali and English pairs.

Run from the repository root (needs `sacrebleu` >= 2.0):

    python3 bench/reference/make_metric_golden.py

For each tokenizer (13a, intl) and smoothing method, the file records sacreBLEU's corpus BLEU
of the whole set, of a few subsets, and of every single pair as a one-segment corpus: score,
precisions, bp, sys_len, ref_len, counts, totals and the signature string. data/metrics_test.ts
checks data/metrics.ts against it. Deterministic: fixed inputs, no randomness.
"""

import json
import os
import sys
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import BLEU

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "data/metric_golden.json"

# (hypothesis, reference): the danda and double danda, ASCII and Unicode punctuation, numbers
# with separators, mixed scripts, HTML entities, an empty hypothesis, identical pairs.
PAIRS = [
    ("আমি তোমার কষ্ট বুঝতে পারছি।", "আমি তোমার কষ্ট বুঝতে পারছি।"),
    ("চিন্তা করবেন না, সব ঠিক হয়ে যাবে।", "চিন্তা করো না, সবকিছু ঠিক হয়ে যাবে।"),
    ("আপনার মন খারাপ হওয়াটা স্বাভাবিক।", "মন খারাপ হওয়া খুবই স্বাভাবিক একটি বিষয়।"),
    ("", "আমি আপনার পাশে আছি।"),
    ("ডাক্তারের সাথে কথা বলুন; তিনি সাহায্য করবেন।", "একজন ডাক্তারের সাথে কথা বলুন, তিনি আপনাকে সাহায্য করতে পারবেন।"),
    ("আপনি কি ঠিক আছেন? আমাকে বলুন!", "আপনি কেমন আছেন? আমাকে খুলে বলুন।"),
    ("প্রতিদিন ৩০ মিনিট হাঁটুন, ৮ ঘণ্টা ঘুমান।", "প্রতিদিন ৩০ মিনিট হাঁটা এবং ৮ ঘণ্টা ঘুম দরকার।"),
    ("১,২০০ টাকা খরচ হবে (প্রায়)।", "খরচ প্রায় ১,২০০ টাকা।"),
    ("I understand how you feel.", "I understand how you feel."),
    ("Don't worry, it'll be fine - I promise.", "Do not worry; it will be fine, I promise!"),
    ("The price is $3.50, i.e. 3,000 won.", "It costs $3.50 (about 3,000 won)."),
    ("Call 999-1234 at 5:30pm.", "Please call 999-1234 at 5:30 pm."),
    ("Stress at work & home &amp; school.", "Stress at work &amp; home and school."),
    ("আপনার stress কমাতে yoga করুন।", "Stress কমাতে নিয়মিত yoga করুন।"),
    ("“ভালো থাকুন” — এটাই আমার কামনা॥", "ভালো থাকুন, এটাই কামনা।"),
    ("সময় লাগবে... ধৈর্য ধরুন।", "একটু সময় লাগবে, ধৈর্য ধরুন।"),
    ("You are not alone :) we are here.", "You're not alone. We're here for you."),
    ("তুমি একা নও। আমরা আছি।", "তুমি একা নও। আমরা আছি।"),
    ("এটা ১০০% সত্যি, বিশ্বাস করো।", "এটা ১০০% সত্য।"),
    ("Room 12B, floor 3.", "Room 12B, 3rd floor."),
    ("   ঠিক আছে  ", "ঠিক আছে"),
    ("ok\nthanks-\nfor listening", "OK thanks for listening"),
]

SUBSETS = {
    "all": list(range(len(PAIRS))),
    "bengali": [0, 1, 2, 3, 4, 5, 6, 7, 13, 14, 15, 17, 18, 20],
    "english": [8, 9, 10, 11, 12, 16, 19, 21],
    "no_match": [3],
}

CONFIGS = [
    {"tokenize": "13a", "smooth_method": "exp", "lowercase": False},
    {"tokenize": "intl", "smooth_method": "exp", "lowercase": False},
    {"tokenize": "13a", "smooth_method": "exp", "lowercase": True},
    {"tokenize": "intl", "smooth_method": "none", "lowercase": False},
    {"tokenize": "intl", "smooth_method": "floor", "lowercase": False},
    {"tokenize": "13a", "smooth_method": "add-k", "lowercase": False},
]


def score(config, idx):
    bleu = BLEU(**config)
    hyps = [PAIRS[i][0] for i in idx]
    refs = [PAIRS[i][1] for i in idx]
    s = bleu.corpus_score(hyps, [refs])
    return {
        "score": s.score,
        "precisions": list(s.precisions),
        "bp": s.bp,
        "sys_len": s.sys_len,
        "ref_len": s.ref_len,
        "counts": list(s.counts),
        "totals": list(s.totals),
        "signature": str(bleu.get_signature()),
    }


def main():
    cases = []
    for config in CONFIGS:
        for name, idx in SUBSETS.items():
            cases.append({"config": config, "subset": name, "indices": idx, **score(config, idx)})
        if config["smooth_method"] == "exp" and not config["lowercase"]:
            for i in range(len(PAIRS)):
                cases.append({"config": config, "subset": f"pair{i}", "indices": [i], **score(config, [i])})
    tokens = {
        tok: [BLEU(tokenize=tok).tokenizer(h.rstrip()) for h, _ in PAIRS]
        for tok in ("13a", "intl")
    }
    out = {
        "sacrebleu_version": sacrebleu.__version__,
        "pairs": [{"hypothesis": h, "reference": r} for h, r in PAIRS],
        "tokens": tokens,
        "cases": cases,
    }
    tmp = GOLDEN.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, GOLDEN)
    print(f"wrote {GOLDEN} ({len(cases)} cases, sacrebleu {sacrebleu.__version__})", file=sys.stderr)


if __name__ == "__main__":
    main()
