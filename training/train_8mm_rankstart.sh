#!/bin/bash
# Train an 8 mm target prior with the contrast-ranking term from its first step (session 14):
# the architecture, data and masking of train_8mm.sh, plus the ranking hinge (weight 1,
# temperature 0.01 bits/pixel) with half of the negatives from 8 adversarial maps, cosine
# over 2400 steps; each run resumes the last (training/README.md). Run with the app
# installed (blindharmony-train on the PATH).
#   HERE   the repository (the script's parent folder)
#   WORK   folder of the bundle, its checkpoint and the registered-slice cache (/work/train)
#   DATA   the IXI-HH BIDS dataset (../shared/data/ixi-hh)
#   STEPS  length of the cosine schedule (2400); MINUTES  per run (150)
set -euo pipefail
here=${HERE:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-/work/train}
DATA=${DATA:-$here/../shared/data/ixi-hh}
mkdir -p "$WORK"
cd "$WORK"
EX=$(python -c "import json; print(' '.join(json.load(open('$here/benchmarks/ixihh_split.json'))['test']))")
# the registered slices of the other priors, if they are here (the cache is content-keyed)
for cache in ixihh_slices.npz ixihh_8mm_target_slices.npz; do
  if [[ -f $cache && ! -e ixihh_8mm_rankstart_slices.npz ]]; then
    ln -s "$WORK/$cache" ixihh_8mm_rankstart_slices.npz
  fi
done
resume=""; [[ -f ixihh_8mm_rankstart.pt.ckpt ]] && resume="--resume"
# shellcheck disable=SC2086
OMP_NUM_THREADS=1 blindharmony-train "$DATA" ixihh_8mm_rankstart.pt --exclude-label $EX \
  --validation-fraction 0.08 --seed 0 --preset cpu-8mm --downsample 4 \
  --steps "${STEPS:-2400}" --batch-size 64 --nthreads 1 --max-minutes "${MINUTES:-150}" \
  --mask-augmentation 0.3 --mask-edges soft --contrast-ranking 1 --ranking-temperature 0.01 \
  --ranking-adversaries 8 --validate-every 100 --checkpoint-every 100 -w "$WORK" $resume 2>&1 \
  | tr '\r' '\n' | grep --line-buffered -v 'bpd=.*lr=.*]$' || true
