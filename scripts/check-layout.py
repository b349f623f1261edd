#!/usr/bin/env python3
"""The core's shape: no import cycle among the modules of src/, and no file
of src/ over 400 lines of non-test code. Prints what breaks either rule and
exits 1."""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_LINES = 400
TEST_ONLY = {"tests.rs", "testing.rs"}


def code_of(path: Path) -> list:
    """Lines before the first `#[cfg(test)]`, without comments."""
    lines = path.read_text().split("\n#[cfg(test)]")[0].splitlines()
    return [l for l in lines if not l.strip().startswith("//")]


def top_module(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".rs")


def main() -> int:
    problems = []
    deps = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name in TEST_ONLY or path.name == "lib.rs":
            continue
        code = code_of(path)
        if len(code) > MAX_LINES:
            problems.append(f"{path.relative_to(SRC.parent)}: {len(code)} lines of code (at most {MAX_LINES}); split it by concern")
        module = top_module(path)
        used = set(re.findall(r"crate::(\w+)", "\n".join(code)))
        deps.setdefault(module, set()).update(used - {module})
    modules = set(deps)
    graph = {m: deps[m] & modules for m in modules}

    # Tarjan's strongly connected components: any with two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    for cycle in cycles:
        problems.append("import cycle among src/ modules: " + " <-> ".join(cycle) + "; move what they share into a leaf module")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"src/: {len(modules)} modules, no import cycle, every file within {MAX_LINES} lines of code")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
