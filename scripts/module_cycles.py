#!/usr/bin/env python3
"""Import cycles between the library's modules.

Reads every file under src/ (the library, and the binary's command modules under cli/), takes the
paths it names (`crate::a::b`, `super::b`, `super::super::b`, in `use` lines and inline),
and reports the cycles among modules (each file's module; a path through a re-export,
`pub use child::Name`, counts for the child that defines the name; a module and its own
submodules are not a cycle). Prints each cycle with the imports that close it; exits non-zero
when there is one. Usage: scripts/module_cycles.py [SRC]
"""
import re
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "src")
DEPTH = 16  # every file its own module
PATH = re.compile(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def expand(tree: str) -> list:
    """The paths of a `use` tree: `a::{b, c::{d, e}}` gives a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        return [tree]
    head, _, rest = tree.partition("{")
    inner = rest[: rest.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [head + path for part in parts if part for path in expand(part)]


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
    texts = {f: re.sub(r"//[^\n]*", "", f.read_text()) for f in files}
    # A module's re-exports (`pub use child::{Name, ..}` in its mod.rs): a path through the
    # module to Name depends on the child that defines it.
    reexports = {}
    for f, text in texts.items():
        if f.name != "mod.rs" and f.name != "lib.rs":
            continue
        here = module_of(f)
        for tree in re.findall(r"pub\s+use\s+([^;]+);", text):
            for path in expand(tree):
                segs = [x.split(" as ")[-1] for x in path.split("::")]
                if segs and segs[0] not in ("crate", "super", "self"):
                    reexports[("::".join(here), segs[-1])] = here + [segs[0]]
    edges = {}
    for f, text in texts.items():
        here = module_of(f)
        # A path before `::{` is a use tree's head: its expansions below say what it names.
        paths = [m.group(1) for m in PATH.finditer(text) if not text.startswith("::{", m.end())]
        for tree in re.findall(r"\buse\s+((?:crate|super)::[^;]*\{[^;]*);", text):
            paths += [p for p in expand(tree) if PATH.fullmatch(p)]
        for path in paths:
            target = resolve(here, path)
            # Through a re-export to the child module that defines the name.
            for depth in range(len(target) - 1, 0, -1):
                child = reexports.get(("::".join(target[:depth]), target[depth]))
                if child:
                    target = child + target[depth + 1 :]
                    break
            # The longest known module the path names.
            for depth in range(min(DEPTH, len(target)), 0, -1):
                name = "::".join(target[:depth])
                if name in modules:
                    break
            else:
                continue
            a = node(here)
            if name != a and not a.startswith(name + "::") and not name.startswith(a + "::"):
                edges.setdefault(a, {}).setdefault(name, f"{f.relative_to(SRC)}: {path}")
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
