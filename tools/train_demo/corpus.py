"""Synthetic grade-school arithmetic word problems (gsm8k-style: one "x+y=z" line per step, then "#### N").

Invariants: every intermediate value lies in [0, 999]; a problem's answer equals its last step's result; the
training and held-out sets share no template (phrasing tuple) and no number tuple, both split by a stable hash,
so held-out problems are new combinations of phrasings the model saw, with numbers it never saw together.
Pure Python (no torch): `python3 corpus.py` checks these invariants; `python3 corpus.py --split heldout` prints
models/arith-heldout.jsonl, `--split train --n 64 --seed 1 --calib` models/arith-calibration.jsonl.
"""
import random
import re
import zlib

NAMES = ["Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kira", "Leo",
         "Maya", "Nico", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["apples", "stickers", "marbles", "books", "coins", "shells", "cards", "pencils", "cookies", "stamps",
         "beads", "toys"]

START = ["{n} has {a} {it}.",
         "{n} starts the day with {a} {it}.",
         "There are {a} {it} in {n}'s box.",
         "{n} collected {a} {it} last week.",
         "{n} owns {a} {it}."]
OPS = {
    "+": ["Then {n} buys {b} more {it}.",
          "A friend gives {n} {b} more {it}.",
          "{n} finds {b} more {it}.",
          "{n} wins {b} {it} in a game.",
          "Later {n} gets {b} more."],
    "-": ["{n} gives away {b} {it}.",
          "Then {n} loses {b} {it}.",
          "{n} sells {b} of them.",
          "{n} uses {b} of the {it}.",
          "Later {n} gives {b} {it} to a friend."],
    "*": ["Then the number of {it} becomes {b} times as large.",
          "{n} ends up with {b} times as many {it}.",
          "The pile of {it} grows to {b} times its size.",
          "Now {n} has {b} times as many {it} as before.",
          "The collection becomes {b} times bigger."],
}
QUESTION = ["How many {it} does {n} have now?",
            "How many {it} are there at the end?",
            "How many {it} does {n} have in the end?",
            "What is the final number of {it}?",
            "How many {it} are left?"]

MAX_VALUE = 999
MULTIPLIERS = range(2, 6)  # "times as many" stays learnable: one small factor
HELDOUT_BUCKETS = 4        # a quarter of the templates and of the number tuples are held out


def chat_prompt(question):
    """The ChatML prompt the model answers (the bundled chat template renders the same text)."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def parse_answer(text):
    """The integer after the first "####", or None (an invalid answer)."""
    m = re.search(r"####\s*(-?\d+)", text)
    return int(m.group(1)) if m else None


def _is_heldout(key):
    return zlib.crc32(repr(key).encode()) % HELDOUT_BUCKETS == 0


def _number(rng, lo, hi):
    """A number in [lo, hi] whose digit count is uniform over the counts the range allows."""
    counts = [d for d in (1, 2, 3) if max(lo, 10 ** (d - 1)) <= min(hi, 10 ** d - 1)]
    d = rng.choice(counts)
    return rng.randint(max(lo, 10 ** (d - 1)), min(hi, 10 ** d - 1))


def _problem(rng):
    """(template key, number tuple, question, solution, answer) of one random 2- or 3-step problem."""
    n, it = rng.choice(NAMES), rng.choice(ITEMS)
    value = _number(rng, 1, MAX_VALUE)
    numbers, steps, template = [value], [], [rng.randrange(len(START))]
    for _ in range(rng.choice((2, 3))):
        allowed = [op for op, ok in (("+", value < MAX_VALUE), ("-", value > 0), ("*", value * 2 <= MAX_VALUE)) if ok]
        op = rng.choice(allowed)
        if op == "+":
            b = _number(rng, 1, MAX_VALUE - value)
            result = value + b
        elif op == "-":
            b = _number(rng, 1, value)
            result = value - b
        else:
            b = rng.choice([k for k in MULTIPLIERS if value * k <= MAX_VALUE])
            result = value * b
        phrasing = rng.randrange(len(OPS[op]))
        template.append((op, phrasing))
        steps.append((OPS[op][phrasing].format(n=n, b=b, it=it), f"{value}{op}{b}={result}"))
        numbers.append(b)
        value = result
    template.append(rng.randrange(len(QUESTION)))
    question = " ".join([START[template[0]].format(n=n, a=numbers[0], it=it)] + [s for s, _ in steps]
                        + [QUESTION[template[-1]].format(n=n, it=it)])
    solution = "\n".join([eq for _, eq in steps] + [f"#### {value}"])
    return tuple(template), tuple(numbers), question, solution, value


def make_split(count, heldout, seed):
    """`count` distinct problems of one split as dicts {question, solution, answer}, deterministic in `seed`."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < count:
        template, numbers, question, solution, answer = _problem(rng)
        if _is_heldout(template) != heldout or _is_heldout(numbers) != heldout or question in seen:
            continue
        seen.add(question)
        out.append({"question": question, "solution": solution, "answer": answer})
    return out


def _self_check():
    train, heldout = make_split(20000, False, 1), make_split(500, True, 2)
    for p in train + heldout:
        value = None
        for line in p["solution"].split("\n")[:-1]:
            m = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", line)
            assert m, line
            x, op, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
            assert value is None or x == value, p
            assert z == {"+": x + y, "-": x - y, "*": x * y}[op] and 0 <= z <= MAX_VALUE, p
            value = z
        assert parse_answer(p["solution"]) == value == p["answer"], p
    assert not {p["question"] for p in train} & {p["question"] for p in heldout}
    ops = "".join(re.sub(r"[^-+*]", "", p["solution"]) for p in heldout)
    assert all(ops.count(op) > len(heldout) / 4 for op in "+-*"), "every operation appears in the held-out set"
    print("corpus self-check ok;", train[0]["question"], "|", train[0]["solution"].replace("\n", " | "))


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description="Check the corpus invariants, or print one split as JSONL.")
    ap.add_argument("--split", choices=["train", "heldout"])
    ap.add_argument("--calib", action="store_true",
                    help="print whole chat turns as JSON strings (fp4serve quantize --calib-prompts FILE.jsonl)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=2027)  # train.py's held-out seed: its --seed (2026) + 1
    args = ap.parse_args()
    if args.split is None:
        _self_check()
    for p in make_split(args.n, args.split == "heldout", args.seed) if args.split else []:
        print(json.dumps(chat_prompt(p["question"]) + p["solution"] + "<|im_end|>" if args.calib else p))
