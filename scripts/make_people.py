#!/usr/bin/env python3
"""Writes a facts file of fictional people for `memlayers demo --facts` and `teach --facts`:
PEOPLE distinct made-up names, each with 3 relations whose objects are drawn uniformly from
pools of 16 (4 bits a fact), deterministic from SEED. Different relations and names from the
demo's built-in facts, so that it tests the demo on data it was not tuned on.

    python3 scripts/make_people.py 1500 7 > people-4500.tsv   # 4,500 facts
"""
import random
import sys

RELATIONS = {
    "was born in": ["Lisbon", "Nairobi", "Osaka", "Quebec", "Tunis", "Bergen", "Cusco", "Dublin",
                    "Hobart", "Izmir", "Jaipur", "Kobe", "Leeds", "Malmo", "Nantes", "Porto"],
    "studied": ["law", "music", "botany", "physics", "history", "geology", "dance", "poetry",
                "surgery", "finance", "weaving", "pottery", "drawing", "chess", "rowing", "ethics"],
    "plays the": ["harp", "flute", "drums", "cello", "oboe", "lute", "organ", "banjo", "tuba",
                  "violin", "sitar", "piano", "horn", "bugle", "gong", "zither"],
}
ONSETS = ["br", "c", "dr", "f", "gl", "h", "j", "kr", "l", "m", "n", "pl", "qu", "r", "st", "tr",
          "v", "w", "y", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "n", "r", "s", "l"]


def name(rng):
    syllables = rng.choice([2, 3, 3, 4])
    s = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS)
    return s.capitalize()


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    people, seed = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    names, seen = [], set()
    while len(names) < people:
        n = name(rng)
        if n not in seen:
            seen.add(n)
            names.append(n)
    out = sys.stdout
    for n in names:
        for relation, pool in RELATIONS.items():
            out.write(f"{n}\t{relation}\t{rng.choice(pool)}\n")


if __name__ == "__main__":
    main()
