#!/usr/bin/env bash
# `make test-image`: checks of the image built by `make image` (tests/image/build.sh), run with
# `buildah run --isolation chroot` (no daemon) and the working tree bound over /mmie:
#   1. pins: the image's `pip freeze` equals the venv's lock (tests/image/checks.py lock)
#   2. the image's torch is the CUDA build; the fastText LID model is there
#   3. the jobs import the working tree's mmie/, not the image's copy (a probe line added to a copy
#      of the working tree is seen inside; without the bind the image's copy answers)
#   4. the reduced workflow (tests/conftest.py reduced_config, a smaller demo model, base and lora) runs inside the image,
#      its metrics.json equal those of the same run in the venv, and provenance names the image.
# Timings go to $MMIE_IMAGE_WORK/test.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
IMAGE=${IMAGE:-mmie:0.1.0}
PY=${PYTHON:-.venv/bin/python}
WORK=${MMIE_IMAGE_WORK:-/var/tmp/mmie-image}
CORES=${CORES:-2}
T=$WORK/test
TARGETS=(results/t/base/seed0/forget/metrics.json results/t/base/seed0/retain/metrics.json
         results/t/lora/seed0/forget/metrics.json results/t/lora/seed0/retain/metrics.json)

buildah inspect --type image "$IMAGE" >/dev/null 2>&1 || { echo "no image $IMAGE: run make image first" >&2; exit 1; }
rm -rf "$T"; mkdir -p "$T"
ctr=$(buildah from --pull-never "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null' EXIT
inside() { buildah run --isolation chroot "$@"; }

echo "== 1. pins"
inside "$ctr" -- pip freeze --disable-pip-version-check > "$T/freeze.txt"
"$PY" tests/image/checks.py lock "$T/freeze.txt"

echo "== 2. torch and the fastText model"
inside "$ctr" -- python -c "import torch, mmie.lang.lid as l; p = l.bundled_fasttext_model(); assert p.is_file(), p; \
assert torch.version.cuda, 'CPU torch'; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuda available:', torch.cuda.is_available()); print('fastText:', p)"

echo "== 3. the working tree's code runs, not the image's copy"
probe="$T/tree"; token="probe-$(date +%s%N)"
mkdir -p "$probe"
git ls-files -z | tar --null -T - -c | tar -C "$probe" -x
echo "IMAGE_PROBE = \"$token\"" >> "$probe/mmie/__init__.py"
got=$(inside -v "$probe:/mmie:ro" "$ctr" -- python -c "import mmie; print(mmie.__file__, getattr(mmie, 'IMAGE_PROBE', None))")
echo "bound: $got"
[ "$got" = "/mmie/mmie/__init__.py $token" ] || { echo "FAIL: the jobs do not import the bound working tree" >&2; exit 1; }
baked=$(inside "$ctr" -- python -c "import mmie; print(mmie.__file__, getattr(mmie, 'IMAGE_PROBE', None))")
echo "unbound (the image's copy): $baked"
[ "$baked" = "/mmie/mmie/__init__.py None" ] || { echo "FAIL: unexpected image copy: $baked" >&2; exit 1; }

echo "== 4. the reduced workflow, in the image and in the venv"
# tests/conftest.py's reduced config with a smaller demo model (its 600 training steps take most of the
# run's time; the comparison needs the same numbers on both sides, not a good model)
mkconfig='import sys, yaml; from pathlib import Path; sys.path.insert(0, sys.argv[1] + "/tests"); import conftest
p = conftest.reduced_config(Path(sys.argv[2])); cfg = yaml.safe_load(p.read_text())
cfg["demo_model"] = dict(vocab_size=400, hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64,
                         max_steps=30, batch_size=8, warmup_steps=5, eval_every=10, check={"enabled": False})
p.write_text(yaml.safe_dump(cfg, allow_unicode=True))'
mkdir -p "$T/venv" "$T/image"
"$PY" -c "$mkconfig" "$REPO" "$T/venv"
inside -v "$REPO:/mmie:ro" -v "$T/image:/mmie-run" "$ctr" -- python -c "$mkconfig" /mmie /mmie-run
t0=$(date +%s)
( PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m snakemake -s "$REPO/Snakefile" -d "$T/venv" --configfile "$T/venv/config.yaml" --cores "$CORES" \
    "${TARGETS[@]}" > "$T/venv.log" 2>&1; echo $? > "$T/venv.rc"; date +%s > "$T/venv.end" ) &
venv_pid=$!
rc=0
inside -v "$REPO:/mmie:ro" -v "$T/image:/mmie-run" "$ctr" -- \
  snakemake -s /mmie/Snakefile -d /mmie-run --configfile /mmie-run/config.yaml --cores "$CORES" "${TARGETS[@]}" \
  > "$T/image.log" 2>&1 || rc=$?
t1=$(date +%s)
wait "$venv_pid"
[ "$rc" = 0 ] || { tail -40 "$T/image.log" >&2; echo "FAIL: the workflow in the image (log: $T/image.log)" >&2; exit 1; }
[ "$(cat "$T/venv.rc")" = 0 ] || { tail -40 "$T/venv.log" >&2; echo "FAIL: the workflow in the venv (log: $T/venv.log)" >&2; exit 1; }
"$PY" tests/image/checks.py metrics "$T/venv" "$T/image" "${TARGETS[@]}"
"$PY" tests/image/checks.py provenance "$IMAGE" "$T/image/results/t/base/seed0/evaluate.json"
"$PY" - "$WORK/test.json" "$IMAGE" $((t1 - t0)) $(($(cat "$T/venv.end") - t0)) "$CORES" <<'PY'
import json, sys
out, image, image_s, venv_s, cores = sys.argv[1:]
rec = {"image": image, "targets": "base+lora seed0 forget/retain (demo model: 30 steps)", "cores": int(cores),
       "image_run_seconds": int(image_s), "venv_run_seconds": int(venv_s), "concurrent": True}
open(out, "w").write(json.dumps(rec, indent=1) + "\n")
print(json.dumps(rec))
PY
echo "test-image: OK"
