"""Print the folder-level import graph of ``protclip`` and fail (exit 1) on a cycle or a layering violation.

A "folder" is a subpackage (``data``, ``model``, ...); top-level modules (``config``, ``storage``, ...) form the
base layer. Every import counts, including imports inside functions, since a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "protclip"
#: allowed direction: a unit may import only units of a lower layer (siblings such as eval/finetune never)
LAYERS = {
    "base": 0,
    "data": 1,
    "model": 2,
    "train": 3,
    "pretrained": 4,
    "ray_session": 4,
    "eval": 5,
    "finetune": 5,
    "search": 6,
    "recipes": 7,
    "__main__": 8,
}


def unit_of(module: str) -> str:
    """``protclip.data.x`` -> ``data``; ``protclip.config`` -> ``base``; ``protclip.pretrained`` -> itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return "base"
    if (ROOT / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in LAYERS else "base"


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        src = unit_of(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "protclip":
                    dst = unit_of(name)
                    if dst != src:
                        edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    def reach(a: str) -> set[str]:
        seen, stack = set(), [a]
        while stack:
            for b in edges.get(stack.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        return seen

    return sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in reach(b)})


def main() -> int:
    edges = graph()
    for src in sorted(edges):
        print(f"{src:10s} -> {', '.join(sorted(edges[src]))}")
    bad = cycles(edges)
    upward = [(a, b) for a in edges for b in edges[a] if b != "base" and LAYERS.get(b, 0) >= LAYERS.get(a, 0)]
    for a, b in bad:
        print(f"cycle: {a} <-> {b}")
    for a, b in sorted(upward):
        print(f"layering: {a} imports {b} (same or higher layer)")
    print("ok: no folder-level cycle, imports run one way" if not (bad or upward) else "FAILED")
    return 1 if bad or upward else 0


if __name__ == "__main__":
    sys.exit(main())
