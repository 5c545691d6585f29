#!/usr/bin/env bash
# `make image`: build the Dockerfile with buildah (no daemon) into local container storage.
#   BASE   the base image; default: a local Debian 12 (bookworm) root file system made with
#          debootstrap (registries are unreachable here); a user with Docker Hub access passes
#          BASE=debian:12-slim (the Dockerfile's default) and gets the same release.
#   IMAGE  the tag (default mmie:0.1.0, stored as localhost/mmie:0.1.0); it is also the image name
#          recorded in every job's provenance (MMIE_CONTAINER_IMAGE).
#   TORCH_INDEX_URL, TORCH_VERSION  another torch build (the Dockerfile's build arguments; unset: torch
#          2.13.0 from PyPI, the CUDA 13.0 build), e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# The machine's CA bundle is mounted read-only for the build (never copied into the image); pip in
# the build sees no pip configuration of this machine and uses PyPI only (the Dockerfile's
# PIP_INDEX_URL). Build time, size and digest go to $MMIE_IMAGE_WORK/build.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-mmie:0.1.0}
WORK=${MMIE_IMAGE_WORK:-/var/tmp/mmie-image}
LOCAL_BASE=localhost/debian-bookworm-debootstrap:12
mkdir -p "$WORK"

need=()
command -v buildah >/dev/null || need+=(buildah)
if [ -z "${BASE:-}" ]; then
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v podman >/dev/null || need+=(podman)
fi
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "tests/image/build.sh: ${need[*]} missing; install them (apt-get install ${need[*]}) or run as root" >&2; exit 1; }
  echo "installing ${need[*]} with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

start=$(date +%s)
if [ -z "${BASE:-}" ]; then
  BASE=$LOCAL_BASE
  if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "making the base image $BASE with debootstrap (Debian 12, Python 3.11)"
    root="$WORK/rootfs"
    rm -rf "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" http://deb.debian.org/debian
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import - "$BASE"
    rm -rf "$root"
  fi
fi
base_done=$(date +%s)

commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
ca=/etc/ssl/certs/ca-certificates.crt
buildah bud --isolation chroot --layers \
  --build-arg BASE="$BASE" --build-arg GIT_COMMIT="$commit" --build-arg IMAGE="$IMAGE" \
  ${TORCH_INDEX_URL:+--build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL"} ${TORCH_VERSION:+--build-arg TORCH_VERSION="$TORCH_VERSION"} \
  --build-arg PIP_CERT=/run/build-ca.crt -v "$ca:/run/build-ca.crt:ro" \
  -t "$IMAGE" -f Dockerfile .
end=$(date +%s)

# the layer cache (intermediate images) stays for the next build; free it with: buildah rmi --prune
size=$(buildah images --noheading --format '{{.Size}}' "$IMAGE")
digest=$(buildah images --noheading --digests --format '{{.Digest}}' "$IMAGE")
id=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
python3 - "$WORK/build.json" "$IMAGE" "$BASE" "$commit" "$id" "$digest" "$size" $((base_done - start)) $((end - base_done)) <<'PY'
import json, sys
out, image, base, commit, image_id, digest, size, base_s, build_s = sys.argv[1:]
rec = {"image": image, "base": base, "git_commit": commit, "image_id": image_id, "digest": digest, "size": size,
       "base_seconds": int(base_s), "build_seconds": int(build_s)}
open(out, "w").write(json.dumps(rec, indent=1) + "\n")
print(json.dumps(rec))
PY
