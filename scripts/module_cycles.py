#!/usr/bin/env python3
"""Import cycles between the library's modules.

Reads every file under src/ (the library, and the binary's command modules under cli/), takes the
paths it names (`crate::a::b`, `super::b`, `super::super::b`, in `use` lines and inline),
and reports the cycles among modules two levels deep (`model::blocks`, `model::gpu`,
`kernels::linear`, ...), a module's own submodules folded into it. Prints each cycle with one
import that closes it; exits non-zero when there is one. Usage: scripts/module_cycles.py [SRC]
"""
import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src")
DEPTH = 2
PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def module_of(file: Path) -> list:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def node(parts: list) -> str:
    return "::".join(parts[:DEPTH]) or "crate"


def resolve(current: list, path: str) -> list:
    segments = path.split("::")
    base = list(current)
    if segments[0] == "crate":
        base, segments = [], segments[1:]
    while segments and segments[0] == "super":
        base, segments = base[:-1], segments[1:]
    return base + segments


def main() -> int:
    # The library, and the binary's command modules (`cli::*`), each a crate of its own.
    files = [f for f in SRC.rglob("*.rs") if f.relative_to(SRC).parts[0] != "main.rs"]
    modules = {node(module_of(f)) for f in files}
    edges = {}
    for f in files:
        here = module_of(f)
        # A file that is a module's mod.rs resolves `super` from the module itself.
        current = here if f.name != "mod.rs" else here
        text = re.sub(r"//[^\n]*", "", f.read_text())
        for m in PATH.finditer(text):
            target = resolve(current if f.name == "mod.rs" else here, m.group(1))
            # The longest known module the path names.
            for depth in range(min(DEPTH, len(target)), 0, -1):
                name = "::".join(target[:depth])
                if name in modules:
                    break
            else:
                continue
            a = node(here)
            if name != a and not a.startswith(name + "::") and not name.startswith(a + "::"):
                edges.setdefault(a, {}).setdefault(name, f"{f.relative_to(SRC)}: {m.group(1)}")
    # Tarjan's strongly connected components.
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for comp in comps:
        print("cycle:", " <-> ".join(comp))
        for a in comp:
            for b, why in sorted(edges.get(a, {}).items()):
                if b in comp:
                    print(f"  {a} -> {b}  ({why})")
    print(f"{len(modules)} modules, {sum(len(e) for e in edges.values())} dependencies, {len(comps)} cycles")
    return 1 if comps else 0


if __name__ == "__main__":
    sys.exit(main())
