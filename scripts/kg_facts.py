#!/usr/bin/env python3
"""A real knowledge graph as facts for `memlayers demo --facts` and `memlayers teach`.

The graphs are the small benchmark graphs that the PyPI package pykeen (MIT) ships inside its
wheel: Kinships (Alyawarra kinship terms, Denham 1973), UMLS (the Unified Medical Language
System's semantic network) and Nations (Rummel's Dimensionality of Nations), as prepared by
Kok & Domingos, "Statistical Predicate Invention" (ICML 2007). They are not vendored here: this
script downloads the wheel with pip (no dependencies, nothing installed) and reads the triples
from it.

Writes to --out:
  known.tsv  the triples of every question but the held-out ones (train on these with demo)
  new.tsv    every triple of --held-out questions drawn at random (teach these)
A question is a (subject, relation) pair; many-valued relations give it several answers, and
memlayers counts a question as recalled when the model's greedy answer is any of them.

    python3 scripts/kg_facts.py --graph kinships --out runs/kinships
"""

import argparse
import collections
import pathlib
import random
import subprocess
import sys
import tempfile
import zipfile

PYKEEN = "pykeen==1.11.1"
GRAPHS = ("kinships", "umls", "nations")


def triples_from_wheel(graph):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "-d", tmp, PYKEEN],
            check=True,
        )
        wheel = next(pathlib.Path(tmp).glob("pykeen-*.whl"))
        triples = []
        with zipfile.ZipFile(wheel) as z:
            for split in ("train", "valid", "test"):
                text = z.read(f"pykeen/datasets/{graph}/{split}.txt").decode()
                triples += [tuple(line.split("\t")) for line in text.splitlines() if line.strip()]
    # Underscores joined words in the source files; spaces read better in the sentences.
    return sorted({tuple(field.replace("_", " ") for field in t) for t in triples})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graph", choices=GRAPHS, default="kinships")
    p.add_argument("--held-out", type=int, default=100, help="questions held out for teach")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, required=True)
    a = p.parse_args()

    triples = triples_from_wheel(a.graph)
    questions = collections.defaultdict(list)
    for s, r, o in triples:
        questions[(s, r)].append(o)
    keys = sorted(questions)
    held = set(random.Random(a.seed).sample(keys, a.held_out))

    a.out.mkdir(parents=True, exist_ok=True)
    header = (f"# {a.graph} from {PYKEEN} (Kok & Domingos 2007); subject, relation, object; "
              f"written by scripts/kg_facts.py --graph {a.graph} --held-out {a.held_out} --seed {a.seed}\n")
    for name, chosen in (("known.tsv", [k for k in keys if k not in held]), ("new.tsv", sorted(held))):
        lines = [f"{s}\t{r}\t{o}\n" for s, r in chosen for o in questions[(s, r)]]
        (a.out / name).write_text(header + "".join(lines))
        print(f"{a.out / name}: {len(lines)} triples, {len(chosen)} questions")


if __name__ == "__main__":
    main()
