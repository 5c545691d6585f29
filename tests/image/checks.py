"""Checks of `make test-image` (tests/image/test.sh), importable by tests/workflow/test_container.py.

    python tests/image/checks.py lock FREEZE            the image's `pip freeze` equals the venv's lock
    python tests/image/checks.py metrics A B REL...     metrics.json under two run dirs are equal
    python tests/image/checks.py provenance IMAGE FILE  a job's provenance names the image

Each prints what it compared and exits 1 with the differences (file, package, key) when they differ."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where tests/image/test.sh binds the run directory inside the image (the working tree: /mmie).
CONTAINER_RUN = "/mmie-run"
# What the image may have beyond the lock: the CUDA build of torch pulls CUDA in as pip packages.
CUDA_EXTRA = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
SITE_PACKAGES = re.compile(r"^/\S*/site-packages/")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines) -> dict[str, str]:
    """`name==version` lines (comments, blanks skipped) -> {normalised name: version}; anything else
    (a URL, `@ file://`, a range) is an error naming the line."""
    pins = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)", line)
        if not m:
            raise ValueError(f"not an exact pin: {raw.rstrip()!r} (expected name==version)")
        pins[_name(m.group(1))] = m.group(3)
    return pins


def lock_problems(freeze: list[str], lock: dict[str, str], extra: dict[str, str]) -> list[str]:
    """Differences between an image's `pip freeze` and the lock (constraints.txt) plus the pins
    installed on top of it (requirements-nodeps.txt). Allowed: torch's local
    version (+cpu in the venv, none in the image) and the CUDA packages torch's CUDA wheel needs."""
    try:
        image = parse_pins(freeze)
    except ValueError as err:
        return [f"image pip freeze: {err}"]
    image = {k: (v.split("+", 1)[0] if k == "torch" else v) for k, v in image.items()}
    wanted = {**lock, **extra}
    problems = []
    for name, version in sorted(wanted.items()):
        if name not in image:
            problems.append(f"{name}=={version} is pinned but not installed in the image")
        elif image[name] != version:
            problems.append(f"{name}: image has {image[name]}, the pins say {version}")
    for name, version in sorted(image.items()):
        if name not in wanted and not CUDA_EXTRA.match(name):
            problems.append(f"{name}=={version} is in the image but in no pin file (constraints.txt, "
                            "requirements-nodeps.txt); add it to the lock (make lock)")
    return problems


def repo_pins() -> tuple[dict[str, str], dict[str, str]]:
    lock = parse_pins((ROOT / "constraints.txt").read_text().splitlines())
    lock = {k: v.split("+", 1)[0] for k, v in lock.items()}
    extra = {}
    for name in ("requirements-nodeps.txt",):
        extra.update(parse_pins((ROOT / name).read_text().splitlines()))
    return lock, extra


def _strip(obj, roots: dict[str, str]):
    """The JSON without its provenance; a path under a run-specific root (or a site-packages dir) starts
    with a placeholder instead."""
    if isinstance(obj, dict):
        return {k: _strip(v, roots) for k, v in obj.items() if k not in ("provenance", "_provenance")}
    if isinstance(obj, list):
        return [_strip(v, roots) for v in obj]
    if isinstance(obj, str):
        if SITE_PACKAGES.match(obj):   # installed files first: the venv may sit inside the project root
            return SITE_PACKAGES.sub("<site-packages>/", obj)   # the venv's vs the image's installed files
        for root, name in roots.items():
            if obj == root or obj.startswith(root + "/"):
                return name + obj[len(root):]
        return obj
    return obj


def json_differences(a, b, where: str = "") -> list[str]:
    """Every key path where two JSON values differ (exact equality, floats included)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'the first' if key in a else 'the second'}")
            else:
                out.extend(json_differences(a[key], b[key], f"{where}/{key}"))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in json_differences(x, y, f"{where}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{where or '/'}: {a!r} != {b!r}"]


def metrics_problems(run_a: Path, run_b: Path, rels: list[str], roots_a: dict, roots_b: dict) -> list[str]:
    problems = []
    for rel in rels:
        fa, fb = run_a / rel, run_b / rel
        missing = [str(f) for f in (fa, fb) if not f.is_file()]
        if missing:
            problems.append(f"{rel}: missing {missing}")
            continue
        a = _strip(json.loads(fa.read_text()), roots_a)
        b = _strip(json.loads(fb.read_text()), roots_b)
        problems.extend(f"{rel}: {d}" for d in json_differences(a, b))
    return problems


def find_container(obj):
    """The provenance's `container` record, wherever it sits in a job's JSON output."""
    if isinstance(obj, dict):
        if isinstance(obj.get("container"), dict) and "image" in obj["container"]:
            return obj["container"]
        for v in obj.values():
            found = find_container(v)
            if found is not None:
                return found
    if isinstance(obj, list):
        for v in obj:
            found = find_container(v)
            if found is not None:
                return found
    return None


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "lock":
        lock, extra = repo_pins()
        freeze = Path(args[0]).read_text().splitlines()
        problems = lock_problems(freeze, lock, extra)
        print(f"lock: {len(parse_pins(freeze))} packages in the image, {len(lock)} in constraints.txt, "
              f"{len(extra)} in requirements-nodeps/-gpu.txt")
    elif cmd == "metrics":
        run_a, run_b, rels = Path(args[0]), Path(args[1]), args[2:]
        problems = metrics_problems(run_a, run_b, rels, {str(run_a): "<RUN>", str(ROOT): "<ROOT>"},
                                    {CONTAINER_RUN: "<RUN>", "/mmie": "<ROOT>"})
        print(f"metrics: compared {len(rels)} metrics.json files (provenance left out), exact equality")
    elif cmd == "provenance":
        image, path = args
        found = find_container(json.loads(Path(path).read_text()))
        problems = [] if found and found.get("image") == image else \
            [f"{path}: provenance container is {found!r}, expected image {image!r} (MMIE_CONTAINER_IMAGE)"]
        print(f"provenance: {path}: container {found}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print("  DIFFERS:", p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
