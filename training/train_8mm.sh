#!/bin/bash
# Train the 8 mm target prior (24 x 28 slices: the 2 mm grid block-averaged by 4, preset
# cpu-8mm) by maximum likelihood, in runs of blindharmony-train that each resume the last
# (training/README.md). Run with the app installed (blindharmony-train on the PATH).
#   HERE   the repository (the script's parent folder)
#   WORK   folder of the bundle, its checkpoint and the registered-slice cache (/work/train)
#   DATA   the IXI-HH BIDS dataset (../shared/data/ixi-hh)
#   STEPS  length of the cosine schedule (4000); ROUNDS  runs (1); MINUTES  per run (110)
#   NAME   the bundle's stem (ixihh_8mm_target); EXTRA  more blindharmony-train options, e.g.
#          the rank-from-start run of session 14 (training/README.md):
#          NAME=ixihh_8mm_rankstart STEPS=2400 MINUTES=150 EXTRA="--contrast-ranking 1
#          --ranking-temperature 0.01 --ranking-adversaries 8"
set -euo pipefail
here=${HERE:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-/work/train}
DATA=${DATA:-$here/../shared/data/ixi-hh}
mkdir -p "$WORK"
cd "$WORK"
EX=$(python -c "import json; print(' '.join(json.load(open('$here/benchmarks/ixihh_split.json'))['test']))")
# the 4 mm priors' registered slices, if they are here (the cache is content-keyed)
name=${NAME:-ixihh_8mm_target}
for cache in ixihh_slices.npz ixihh_4mm_target_slices.npz ixihh_8mm_target_slices.npz; do
  if [[ -f $cache && ! -e ${name}_slices.npz ]]; then
    ln -s "$WORK/$cache" "${name}_slices.npz"
  fi
done
for round in $(seq 1 "${ROUNDS:-1}"); do
  resume=""; [[ -f $name.pt.ckpt ]] && resume="--resume"
  echo "=== round $round $(date)"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 blindharmony-train "$DATA" "$name.pt" --exclude-label $EX \
    --validation-fraction 0.08 --seed 0 --preset cpu-8mm --downsample 4 \
    --steps "${STEPS:-4000}" --batch-size 64 --nthreads 1 --max-minutes "${MINUTES:-110}" \
    --mask-augmentation 0.3 --mask-edges soft --validate-every 200 --checkpoint-every 200 \
    -w "$WORK" $resume ${EXTRA:-} 2>&1 | tr '\r' '\n' | grep --line-buffered -v 'bpd=.*lr=.*]$' || true
done
