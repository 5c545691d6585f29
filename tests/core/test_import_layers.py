"""The package's layer order (docs/extending.md, "Where the code lives"): a module imports only from its
own layer or the layers below it — at module level or inside a function alike — and no two parts of
the package import each other."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mmie"

#: bottom to top; a part is a top-level module or subpackage of mmie
LAYERS = [
    {"__init__", "errors", "io", "environment", "logs", "numerics", "seeding", "failures", "forkserver"},
    {"lang"},
    {"data"},
    {"provenance"},
    {"model"},
    {"stats"},
    {"sae"},
    {"arms"},
    {"config", "preflight"},
    {"attacks"},
    {"report"},
    {"jobs"},
]
LEVEL = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every mmie module ``source`` (the text of ``module``) imports, anywhere in the file
    (``from a import b``: ``a`` and ``a.b``)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
    return {m for m in found if m == "mmie" or m.startswith("mmie.")}


def parts() -> set[str]:
    return {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
            if p.suffix == ".py" or (p / "__init__.py").is_file()}


def crossings(module: str, targets: set[str]) -> set[tuple[str, str]]:
    """(imported part, importing module) for each import of ``module`` from another part."""
    here, known = part_of(module), parts()
    return {(part_of(t), module) for t in targets if part_of(t) != here and part_of(t) in known}


def edges() -> dict[str, set[tuple[str, str]]]:
    """part -> {(imported part, importing module)} across parts."""
    out = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        out[part_of(module)] |= crossings(module, imports(path.read_text(encoding="utf-8"), module,
                                                          path.name == "__init__.py"))
    return out


def test_every_part_of_the_package_has_a_layer():
    assert parts() == set(LEVEL), f"add {sorted(parts() - set(LEVEL))} to LAYERS (and docs/extending.md)"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(f"{module} imports mmie.{there} ({here}, layer {LEVEL[here]} < {LEVEL[there]})"
                    for here, targets in edges().items() for there, module in targets if LEVEL[there] > LEVEL[here])
    assert not upward, "\n".join(upward)


def test_no_two_parts_import_each_other():
    graph = {here: {there for there, _ in targets} for here, targets in edges().items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, node, nxt])}")
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_the_check_sees_imports_inside_functions_and_relative_ones():
    """Most of mmie's heavy imports sit inside functions: the scan reads them, and relative ones."""
    source = "import json\nfrom . import translit\ndef f():\n    from mmie.jobs import cfg_of\n    from ..report import plots\n"
    found = crossings("mmie.lang.probe", imports(source, "mmie.lang.probe"))
    assert found == {("jobs", "mmie.lang.probe"), ("report", "mmie.lang.probe")}
    assert any(LEVEL[there] > LEVEL["lang"] for there, _ in found)
