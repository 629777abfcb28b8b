#!/usr/bin/env python3
"""Checks the labelled set (recall_set.json) is what it says: 20 facts a user, every question's answer
in range, no 'reworded' question sharing a content word with its fact, every 'exact' question
sharing one, no duplicate message in a user's memory. Exits 1 and lists the offenders otherwise.

    python bench/semantic/check_set.py [recall_set.json]

Words are compared three ways, stopwords dropped: as they are, after a crude suffix stemmer
("teaches" / "teach"), and by their first four letters ("allergies" / "allergic").
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run from a source tree without installing

from agentcast.store._fusion import STOPWORDS  # noqa: E402

_WORD = re.compile(r"[^\W_]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "edly", "ies", "ied", "ers", "er", "ed", "es", "ly", "s")


def content(text: str) -> set[str]:
    words = _WORD.findall(text.casefold().replace("’", "").replace("'", ""))
    stop = STOPWORDS | {w.replace("'", "") for w in STOPWORDS}
    return {w for w in words if w not in stop}


def stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def overlap(question: str, fact: str) -> set:
    q, f = content(question), content(fact)
    shared = q & f
    shared |= {stem(a) for a in q} & {stem(b) for b in f}
    shared |= {a[:4] for a in q if len(a) >= 4} & {b[:4] for b in f if len(b) >= 4}
    return shared


def problems(data: dict) -> list[str]:
    found = []
    for user in data["users"]:
        facts = user["facts"]
        if len(facts) != 20:
            found.append(f"{user['user']}: {len(facts)} facts, not 20")
        memory = facts + user["near_misses"] + data["chatter"]
        if len(set(memory)) != len(memory):
            found.append(f"{user['user']}: a message is in the memory twice")
        for q in user["questions"]:
            if not 0 <= q["fact"] < len(facts):
                found.append(f"{user['user']}: {q['q']!r} points at fact {q['fact']}")
                continue
            shared = overlap(q["q"], facts[q["fact"]])
            if q["kind"] == "reworded" and shared:
                found.append(f"{user['user']}: reworded {q['q']!r} shares {sorted(shared)} with {facts[q['fact']]!r}")
            elif q["kind"] == "exact" and not content(q["q"]) & content(facts[q["fact"]]):
                found.append(f"{user['user']}: exact {q['q']!r} shares no word with {facts[q['fact']]!r}")
            elif q["kind"] not in ("reworded", "exact"):
                found.append(f"{user['user']}: {q['q']!r} has kind {q['kind']!r}")
    return found


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "recall_set.json"
    data = json.loads(path.read_text())
    found = problems(data)
    for line in found:
        print(line)
    questions = [q for u in data["users"] for q in u["questions"]]
    kinds = {k: sum(q["kind"] == k for q in questions) for k in ("reworded", "exact")}
    print(f"{len(data['users'])} users, {sum(len(u['facts']) for u in data['users'])} facts, "
          f"{sum(len(u['near_misses']) for u in data['users'])} near misses, {len(data['chatter'])} chatter lines; "
          f"questions: {kinds['reworded']} reworded, {kinds['exact']} exact; {len(found)} problem(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
