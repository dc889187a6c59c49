"""The package's layout rules: small modules, no import circle, every "algorithm §N" reference resolves inside the
repository (docs/algorithm.md), and no reference to files outside it or to internal notes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "mrq_lightning"
MAX_LINES = 450
# Where a user reads: code, docs, configs, notebooks, examples, benchmarks, tests.
TEXT_FILES = sorted(
    p for pattern in ("*.md", "*.py", "*.yaml", "*.ipynb", "*.toml")
    for p in REPO.rglob(pattern) if not {".venv", ".git", "build"} & set(p.relative_to(REPO).parts)
    and ".egg-info" not in str(p)
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules that ``path`` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    # A module's own parent packages are imported before it anyway (not an edge of its own making).
    return {name for name in found if name in modules and name != own and not own.startswith(name + ".")}


def test_no_module_over_the_size_limit():
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 30
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"modules over {MAX_LINES} lines: {too_big}"


def test_no_import_circle():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(files)) for name, path in files.items()}
    assert "mrq_lightning.envs.names" in graph["mrq_lightning.envs.dmc_suite"]  # the scan sees real edges
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif state[nxt] == 0:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert not cycles, f"import circles: {cycles}"


def algorithm_sections() -> set[str]:
    """Section numbers of docs/algorithm.md ("9", "2.1") and quirk / difference labels ("16 Q3", "15 D2")."""
    text = (REPO / "docs" / "algorithm.md").read_text()
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
    labels = {f"16 {q}" for q in re.findall(r"\*\*(Q\d+)\.?\*\*", text)}
    labels |= {f"15 {d}" for d in re.findall(r"\*\*(D\d+)\.?\*\*", text)}
    return sections | labels


def test_every_algorithm_reference_resolves():
    sections = algorithm_sections()
    assert {"2.1", "9", "11", "16", "16 Q3", "16 Q9", "15 D2", "18"} <= sections
    # "algorithm §5", "algorithm §5-§7", "algorithm §4-8", "algorithm §16 Q10" (notebooks escape § as \u00a7)
    pattern = re.compile(r"algorithm (?:§|\\u00a7)(\d+(?:\.\d+)?)(?: (Q\d+|D\d+))?(?:-§?(\d+))?", re.I)
    unresolved, count = [], 0
    for path in TEXT_FILES:
        for match in pattern.finditer(path.read_text()):
            count += 1
            first, label, last = match.groups()
            wanted = [f"{first} {label}" if label else first] + ([last] if last else [])
            unresolved += [f"{path.relative_to(REPO)}: {match.group(0)}" for w in wanted if w not in sections]
    assert count > 150  # the code really cites it
    assert not unresolved, unresolved


def test_no_reference_outside_the_repository():
    forbidden = re.compile(r"\.\./shared|/work/shared|\bspec §|\bissue \d+|\bbrief §|notes/[a-z-]+\.md", re.I)
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in TEXT_FILES if p.name != "test_layout.py"
            for n, line in enumerate(p.read_text().splitlines(), 1) if forbidden.search(line)]  # fmt: skip
    assert not hits, hits
