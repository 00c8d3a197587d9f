#!/usr/bin/env python3
"""The proxy's modules point one way.

Reads every `crate::NAME` (and `super::` from a top-level module's files)
in proxy/src and builds the graph of its top-level modules (`live`,
`durable`, `http`, `metrics.rs`, ...). Fails when:

- a module of the domain (everything but `http`, `main.rs` and the
  command-line and doctor modules above it) uses `http`;
- two top-level modules use each other, directly or through others (an
  import cycle).

Prints the modules from the bottom up, each with what it uses.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proxy", "src")
# Above the domain: the front door and what starts it.
FRONT = {"http", "main", "app", "config", "doctor", "probe", "fuzzing"}
# Re-exported from walcast-core: leaves here.
CORE = {"query", "change"}


def top_of(path):
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def main():
    modules = set()
    uses = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            top = top_of(path)
            if top == "lib":
                continue
            modules.add(top)
            text = strip_comments(open(path, encoding="utf-8").read())
            # Test modules may reach anywhere.
            text = text.split("#[cfg(test)]")[0]
            found = set(re.findall(r"\bcrate::([a-z_]+)", text))
            # `use crate::{a, b::c}` groups.
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                found |= set(re.findall(r"(?:^|,)\s*([a-z_]+)", group))
            uses.setdefault(top, set()).update(found - {top})
    for m in modules:
        uses.setdefault(m, set())
        uses[m] &= modules

    problems = []
    for m in sorted(modules - FRONT):
        if "http" in uses[m]:
            problems.append(f"{m} uses http: the domain must not know the front door")

    # Strongly connected components (Tarjan).
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(uses[v]):
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
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for comp in sccs:
        if len(comp) > 1:
            comp = sorted(comp)
            edges = [f"{a} -> {b}" for a in comp for b in sorted(uses[a]) if b in comp]
            problems.append("import cycle: " + ", ".join(edges))

    # Tarjan yields components bottom-up.
    for comp in sccs:
        for m in sorted(comp):
            print(f"[layers] {m}: {', '.join(sorted(uses[m])) or '-'}")
    for p in problems:
        print(f"[layers] FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
