#!/usr/bin/env bash
# Build the BlindHarmony image with podman and smoke-test it on tests/data/ixi-hh-mini.
#
#   docker/test-image.sh              # set up podman if needed, build, run the checks
#   docker/test-image.sh --no-build   # test an image that is already built
#
# Environment: IMAGE (default localhost/blindharmony:test), BASE_IMAGE (default
# localhost/debian:bookworm-min, made with mmdebstrap when missing), WHEELS (a local
# wheel folder mounted as /wheels; default: pip's configured find-links, if any),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt), DEBIAN_MIRROR, KEEP=1 to keep
# the output folders, NPROCS (default 2: the MultiProc scheduler), RUN_TIMEOUT (seconds
# per container run, default 900), PRIOR (a prior bundle file to pass with --prior
# instead of the one shipped in the image). Needs root (apt-get, rootful podman). Heavy steps run under
# `nice -n 19`. Prints one PASS/FAIL line per check and exits non-zero on any FAIL.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
IMAGE=${IMAGE:-localhost/blindharmony:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-min}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FIXTURE=$repo/tests/data/ixi-hh-mini
SUBJECT=IXI052
NPROCS=${NPROCS:-2}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
build=1
[[ "${1:-}" == "--no-build" ]] && build=0

log() { printf '[test-image] %s\n' "$*" >&2; }
# shellcheck source=/dev/null
. "$here/checks.sh"  # check NAME COMMAND...

# --- 1. podman -------------------------------------------------------------------------
if ! command -v podman > /dev/null; then
  log "installing podman (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive nice -n 19 apt-get install -y -qq --no-install-recommends \
    podman buildah skopeo runc mmdebstrap uidmap fuse-overlayfs slirp4netns > /dev/null
fi
if [[ ! -f /etc/containers/containers.conf ]]; then
  log "writing /etc/containers/containers.conf (runc, ulimits)"
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf << 'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
fi

# --- 2. local base image -----------------------------------------------------------------
if [[ "$BASE_IMAGE" == localhost/debian:bookworm-min ]] && ! podman image exists "$BASE_IMAGE"; then
  log "making $BASE_IMAGE with mmdebstrap ($DEBIAN_MIRROR)"
  tmp_base=$(mktemp -d)
  nice -n 19 mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm \
    "$tmp_base/rootfs.tar" "$DEBIAN_MIRROR"
  nice -n 19 podman import "$tmp_base/rootfs.tar" "$BASE_IMAGE" > /dev/null
  rm -rf "$tmp_base"
fi

# --- 3. build ----------------------------------------------------------------------------
if ((build)); then
  if [[ -z "${WHEELS:-}" ]]; then
    WHEELS=$(pip config get global.find-links 2> /dev/null || true)
  fi
  build_args=(--network=host --build-arg "BASE_IMAGE=$BASE_IMAGE"
    --build-arg "VCS_REF=$(git -C "$repo" rev-parse --short HEAD 2> /dev/null || echo unknown)"
    --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
  if [[ -f "$CA_BUNDLE" ]]; then
    build_args+=(-v "$CA_BUNDLE:/etc/ssl/certs/host-ca-bundle.crt:ro"
      --build-arg PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt)
  fi
  if [[ -n "$WHEELS" && -d "$WHEELS" ]]; then
    build_args+=(-v "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
  fi
  log "podman build ${build_args[*]} -t $IMAGE $repo"
  start=$(date +%s)
  nice -n 19 podman build "${build_args[@]}" -t "$IMAGE" "$repo"
  log "build took $(($(date +%s) - start)) s"
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB"

# --- 4. run ------------------------------------------------------------------------------
scratch=$(mktemp -d /tmp/blindharmony-test.XXXXXX)
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/out" "$scratch/work"
chmod 0777 "$scratch/out" "$scratch/work"  # the image runs as uid 1000
run=(podman run --rm --read-only --tmpfs /tmp --network=none --timeout "$RUN_TIMEOUT"
  -v "$FIXTURE:/data:ro" -v "$scratch/out:/out" -v "$scratch/work:/work")
prior_args=()
if [[ -n "${PRIOR:-}" ]]; then
  run+=(-v "$(realpath "$PRIOR"):/prior/$(basename "$PRIOR"):ro")
  prior_args=(--prior "/prior/$(basename "$PRIOR")")
fi

version=$("${run[@]}" --user 4321:4321 "$IMAGE" --version 2>&1) || true
echo "$version"
check "--version as an arbitrary uid, read-only ($version)" \
  grep -q "^blindharmony v$(podman run --rm --entrypoint cat "$IMAGE" /version)$" <<< "$version"

log "participant run (sub-$SUBJECT)"
start=$(date +%s)
participant_rc=0
nice -n 19 "${run[@]}" "$IMAGE" /data /out participant --participant-label "$SUBJECT" \
  -w /work --nprocs "$NPROCS" --omp-nthreads 1 "${prior_args[@]}" || participant_rc=$?
log "participant run: exit $participant_rc after $(($(date +%s) - start)) s"
check "participant run exits 0 (got $participant_rc)" test "$participant_rc" -eq 0
found() { [[ -n "$(find "$@" -print -quit 2> /dev/null)" ]]; }
check "sub-$SUBJECT harmonized T1w written" \
  found "$scratch/out/sub-$SUBJECT" -name "sub-${SUBJECT}*_desc-harmonized_T1w.nii.gz"
check "dataset_description.json written" test -s "$scratch/out/dataset_description.json"

log "group run"
group_rc=0
nice -n 19 "${run[@]}" "$IMAGE" /data /out group -w /work || group_rc=$?
check "group run exits 0 (got $group_rc)" test "$group_rc" -eq 0

echo "outputs:"
(cd "$scratch/out" && find . -maxdepth 4 | sort | head -40)
if ((failures)); then
  echo "FAIL: $failures check(s) failed"
  exit 1
fi
echo "PASS: all checks"
