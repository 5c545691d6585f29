"""What each LID voter adds: the ensemble's accuracy on the hand-labelled audit set (``data.lid_audit``,
271 generations) and the clean check set (``data.lid_check``) with every voter on, and with langid and
fastText each switched off, using a finished run's fitted romanized detector and lexicons.

    python benchmarks/lid_voters.py results/demo                # markdown table on stdout
    python benchmarks/lid_voters.py results/demo --config config.yaml

It reads the run's ``lid/romanized_detector.json`` and the config's data files; it changes nothing.
docs/method.md §4 ("Which detectors, and why") quotes its table for the demo.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import time
from pathlib import Path

from mmie import io
from mmie.config import load
from mmie.data.prepare import read_lid_audit
from mmie.lang.lid import confusion, load_lid

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"all voters (default)": {}, "without langid": {"langid": False},
            "without fastText": {"fasttext": {"enabled": False}},
            "without langid and fastText": {"langid": False, "fasttext": {"enabled": False}}}


def variant_config(lid_cfg: dict, change: dict) -> dict:
    out = copy.deepcopy(lid_cfg)
    for key, value in change.items():
        if isinstance(value, dict):
            out["voters"][key].update(value)
        else:
            out["voters"][key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished run: results/<experiment>")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    args = parser.parse_args()
    cfg = load(args.config)
    detector = args.run / "lid" / "romanized_detector.json"
    audit_path, check_path = cfg["data"]["lid_audit"], cfg["data"]["lid_check"]
    if not audit_path:
        raise SystemExit(f"{args.config}: data.lid_audit is not set; the audit set is what this compares on")
    rows = []
    for name, change in VARIANTS.items():
        lid = load_lid(variant_config(cfg["lid"], change), cfg["languages"], detector)
        audit = read_lid_audit(audit_path, lid.labels, cfg["data"]["max_line_bytes"])
        check = [it for it in io.read_jsonl(check_path) if it["label"] in lid.labels]
        t0 = time.perf_counter()
        a, c = confusion(lid, audit), confusion(lid, check)
        seconds = time.perf_counter() - t0
        correct = round(a["accuracy"] * a["n"])
        per = a["per_label_accuracy"]
        rows.append(f"| {name} | {correct}/{a['n']} ({a['accuracy']:.3f}) | {per.get('en', float('nan')):.3f} | "
                    f"{per.get('hi_rom', float('nan')):.3f} | {per.get('und', float('nan')):.3f} | "
                    f"{c['accuracy']:.3f} | {1000 * seconds / (a['n'] + c['n']):.2f} |")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"LID voters on {audit_path} and {check_path}, detector of {args.run} (commit {commit}):\n")
    print("| voters | audit correct | audit `en` recall | audit `hi_rom` recall | audit `und` recall | check accuracy | ms per text |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
