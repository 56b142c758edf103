#!/bin/bash
# Alternate 15-minute runs of the 4 mm target prior and its contrast-agnostic companion
# (training/README.md). Run with the app installed (blindharmony-train on the PATH).
#   WORK   folder of the bundles, checkpoints and the registered-slice cache (/work/train)
#   DATA   the IXI-HH BIDS dataset (../shared/data/ixi-hh)
#   STEPS  length of the cosine schedule (3000); ROUNDS  pairs of runs (8)
#   KINDS  which priors to train ("target agnostic"; "target" for the target prior alone)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/work/train}
DATA=${DATA:-$here/../shared/data/ixi-hh}
mkdir -p "$WORK"
cd "$WORK"
EX=$(python -c "import json; print(' '.join(json.load(open('$here/benchmarks/ixihh_split.json'))['test']))")
COMMON="--exclude-label $EX --validation-fraction 0.08 --seed 0 --preset cpu-4mm --downsample 2
 --steps ${STEPS:-3000} --batch-size 32 --nthreads 1 --max-minutes 15 --mask-augmentation 0.2
 -w $WORK"
for round in $(seq 1 "${ROUNDS:-8}"); do
  for kind in ${KINDS:-target agnostic}; do
    extra=""; [[ $kind == agnostic ]] && extra="--contrast-augmentation"
    resume=""; [[ -f ixihh_4mm_$kind.pt.ckpt ]] && resume="--resume"
    # one registered-slice cache for both (the same images)
    if [[ -f ixihh_4mm_target_slices.npz && ! -e ixihh_4mm_agnostic_slices.npz ]]; then
      ln -s ixihh_4mm_target_slices.npz ixihh_4mm_agnostic_slices.npz
    fi
    echo "=== round $round $kind $(date)"
    # shellcheck disable=SC2086
    blindharmony-train "$DATA" "ixihh_4mm_$kind.pt" $COMMON $extra $resume 2>&1 \
      | tr '\r' '\n' | grep --line-buffered -v 'bpd=.*lr=.*]$' || true
  done
done
