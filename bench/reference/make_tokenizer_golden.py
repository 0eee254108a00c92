#!/usr/bin/env python3
"""Make the project's small Llama 3 style tokenizer and the tokenizer golden file.

Run from the repository root (needs `tokenizers` >= 0.19 and `transformers` >= 4.43):

    python3 bench/reference/make_tokenizer_golden.py

Writes
  data/sample/tokenizer/tokenizer.json         byte-level BPE in the exact Llama 3 layout
  data/sample/tokenizer/tokenizer_config.json  Llama 3.1 chat_template, bos/eos/pad tokens
  data/tokenizer_golden.json                   ids / decodes / chat renderings for data/tokenizer_test.ts

The tokenizer: trained on the bundled sample corpus (data/sample/bengali_empathetic_sample.csv,
all four columns) plus the English lines below; pre-tokenizer Split(Llama 3 regex, Isolated)
then ByteLevel(add_prefix_space=False, use_regex=False); BPE with ignore_merges=True; ByteLevel
decoder; a TemplateProcessing post-processor that prepends <|begin_of_text|>. The Llama 3
special tokens follow the learned vocabulary in Llama 3's order (id = V0 + k where the real
model has 128000 + k), and reserved tokens fill the vocabulary up to exactly 2048 ids.

Deterministic: fixed inputs in a fixed order, single-threaded training, no clock or randomness.
"""

import csv
import json
import os
import sys
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import tokenizers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CSV = ROOT / "data/sample/bengali_empathetic_sample.csv"
TEMPLATE = ROOT / "data/sample/llama31_chat_template.jinja"
OUT_DIR = ROOT / "data/sample/tokenizer"
GOLDEN = ROOT / "data/tokenizer_golden.json"

VOCAB_SIZE = 2048
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3 order; offset k here is id 128000 + k in the real tokenizer.
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
ENGLISH = [
    "I'm sorry you are going through this. It's okay to feel tired; you've carried a lot for a long time.",
    "They're worried about you, and we'll find a way. Don't give up: one small step today is enough.",
    "Hello! How are you feeling this morning? Tell me what happened at work yesterday.",
    "The exam is on Monday, 12 March, at 10:30. Bring two pens, your ID card and a bottle of water.",
    "If you feel unsafe, call the emergency number 999 or go to the nearest hospital right away.",
    "She said: \"I'll try again next year.\" He'd already left; it wasn't easy for anyone.",
    "Numbers like 1, 22, 333, 4444, 55555 and 1234567890 appear in text too.",
    "Sleep, water, a short walk and a kind word to yourself can change how a hard day feels.",
]
DATE_STRING = "26 Jul 2024"

HARD_STRINGS = [
    "ক্ষমা করো",
    "জ্ঞান বিজ্ঞান",
    "কৃষ্ণচূড়া ফুল ফুটেছে।",
    "আমি তোমাকে ভালোবাসি। তুমি কেমন আছ?",
    "র\u200d্যাব, র্\u200dয, য়, ড়, ঢ়, ৎ",
    "কি কী কু কূ কে কৈ কো কৌ কং কঃ কঁ",
    "ক\u09c7\u09be (decomposed o-kar) vs কো",
    "১২৩৪৫ টাকা, ৬৭৮৯০",
    "😀 👍🏽 👨\u200d👩\u200d👧\u200d👦 🇧🇩 ❤️",
    "Bengali আর English mixed, ok? হ্যাঁ OK.",
    "   leading spaces and trailing   ",
    "a\n\nb\n\n\n\nc",
    "line one\r\nline two\r\n",
    "\t\ttabs\tand spaces  \n",
    "      ",
    "\n",
    "1 12 123 1234 12345 123456 1234567 12345678",
    "I'M they're we'VE you'll he'd she's it'S",
    "don't DON'T o'clock",
    "<|begin_of_text|>hello<|eot_id|>",
    "text with <|start_header_id|>user<|end_header_id|> inside",
    "<|eot_id|><|eot_id|>",
    "।।। danda ।",
    "\u00a0no-break\u00a0space and\u2003em space",
    "zero\u200bwidth and\u200cnon-joiner",
    "a",
    "",
]


def read_sample_rows():
    with open(SAMPLE_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    need = ["Topics", "Question-Title", "Questions", "Answers"]
    if header != need:
        sys.exit(f"{SAMPLE_CSV}: header is {header}, expected {need}")
    return body


def train_tokenizer(rows):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIALS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    texts = [field for row in rows for field in row] + ENGLISH
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    learned = tok.get_vocab_size(with_added_tokens=False)
    names = list(SPECIALS) + [f"<|reserved_special_token_{k}|>" for k in range(3, 3 + VOCAB_SIZE - learned - len(SPECIALS))]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    bos = "<|begin_of_text|>"
    bos_id = tok.token_to_id(bos)
    assert bos_id == learned, (bos_id, learned)
    assert tok.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A",
                pair=f"{bos} $A {bos}:1 $B:1",
                special_tokens=[(bos, bos_id)],
            ),
        ]
    )
    return tok


def write_tokenizer(tok):
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tok.save(str(OUT_DIR / "tokenizer.json"), pretty=True)
    # The saved model must carry ignore_merges (older tokenizers versions drop it).
    saved = json.loads((OUT_DIR / "tokenizer.json").read_text(encoding="utf-8"))
    if saved["model"].get("ignore_merges") is not True:
        sys.exit("tokenizers did not save model.ignore_merges=true; install tokenizers >= 0.19")
    added = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in saved["added_tokens"]
    }
    config = {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": TEMPLATE.read_text(encoding="utf-8"),
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (OUT_DIR / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def chat_cases(rows):
    r0, r1, r2 = rows[0], rows[1], rows[2]

    def user(r):
        return f"{r[1]}\n{r[2]}"

    system = "তুমি একজন সহানুভূতিশীল সহকারী। বিষয়: " + r0[0]
    return [
        ([{"role": "user", "content": user(r0)}, {"role": "assistant", "content": r0[3]}], False),
        ([{"role": "user", "content": user(r0)}], True),
        (
            [
                {"role": "system", "content": system},
                {"role": "user", "content": user(r1)},
                {"role": "assistant", "content": r1[3]},
            ],
            False,
        ),
        ([{"role": "system", "content": "  padded system  "}, {"role": "user", "content": "  hi  \n"}], True),
        (
            [
                {"role": "system", "content": system},
                {"role": "user", "content": user(r1)},
                {"role": "assistant", "content": r1[3]},
                {"role": "user", "content": user(r2)},
                {"role": "assistant", "content": r2[3]},
            ],
            False,
        ),
        (
            [
                {"role": "user", "content": "I'M fine, they're 12345678 — ক্ষ 👨\u200d👩\u200d👧"},
                {"role": "assistant", "content": "\n\nভালো।\r\nOK  "},
                {"role": "user", "content": "আবার?"},
            ],
            True,
        ),
    ]


def main():
    import transformers
    from transformers import AutoTokenizer

    rows = read_sample_rows()
    tok = train_tokenizer(rows)
    write_tokenizer(tok)
    rust = Tokenizer.from_file(str(OUT_DIR / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(OUT_DIR))

    texts = list(HARD_STRINGS)
    for r in rows[:40]:
        texts += [f"{r[1]}\n{r[2]}", r[3]]
    encode = []
    for s in texts:
        ids = rust.encode(s, add_special_tokens=False).ids
        ids_sp = rust.encode(s, add_special_tokens=True).ids
        # transformers must agree with the Rust tokenizer it wraps.
        assert hf(s, add_special_tokens=False)["input_ids"] == ids, s
        assert hf(s, add_special_tokens=True)["input_ids"] == ids_sp, s
        encode.append({"text": s, "ids": ids, "ids_with_special": ids_sp, "decoded": rust.decode(ids, skip_special_tokens=False)})

    chat = []
    for messages, gen in chat_cases(rows):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen, date_string=DATE_STRING)
        ids = rust.encode(text, add_special_tokens=False).ids
        got = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, date_string=DATE_STRING)
        if not isinstance(got, list):  # newer transformers return a BatchEncoding
            got = got["input_ids"]
        assert list(got) == ids, "apply_chat_template(tokenize=True) must not add a second BOS"
        chat.append({"messages": messages, "add_generation_prompt": gen, "date_string": DATE_STRING, "text": text, "ids": ids})

    golden = {
        "tokenizer_dir": "data/sample/tokenizer",
        "versions": {"tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "encode": encode,
        "chat": chat,
    }
    GOLDEN.write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(
        f"wrote {OUT_DIR / 'tokenizer.json'} (vocab {rust.get_vocab_size()}), tokenizer_config.json, "
        f"{GOLDEN} ({len(encode)} strings, {len(chat)} chats)"
    )


if __name__ == "__main__":
    main()
