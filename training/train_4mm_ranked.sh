#!/bin/bash
# Fine-tune the 4 mm target prior with the contrast-ranking hinge (bids_app/flow/ranking.py):
# 20-minute runs of blindharmony-train, each resuming the last (training/README.md).
# Run with the app installed (blindharmony-train on the PATH).
#   HERE   the repository (the script's parent folder)
#   WORK   folder of the bundles, checkpoints and the registered-slice cache (/work/train)
#   DATA   the IXI-HH BIDS dataset (../shared/data/ixi-hh)
#   INIT   the maximum-likelihood prior it starts from ($WORK/ixihh_4mm_target.pt.ckpt, the
#          end of train_4mm.sh's target runs)
#   STEPS  length of the cosine schedule (1200); ROUNDS  runs (6)
#   ADVERSARIES  size of the bank of adversarial maps (8; 0: random negatives only)
#   WEIGHT  weight of the ranking hinge (1)
set -euo pipefail
here=${HERE:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-/work/train}
DATA=${DATA:-$here/../shared/data/ixi-hh}
INIT=${INIT:-$WORK/ixihh_4mm_target.pt.ckpt}
mkdir -p "$WORK"
cd "$WORK"
EX=$(python -c "import json; print(' '.join(json.load(open('$here/benchmarks/ixihh_split.json'))['test']))")
# the same registered slices as the maximum-likelihood prior
if [[ -f ixihh_4mm_target_slices.npz && ! -e ixihh_4mm_ranked_slices.npz ]]; then
  ln -s ixihh_4mm_target_slices.npz ixihh_4mm_ranked_slices.npz
fi
for round in $(seq 1 "${ROUNDS:-6}"); do
  echo "=== round $round $(date)"
  # shellcheck disable=SC2086
  blindharmony-train "$DATA" ixihh_4mm_ranked.pt --exclude-label $EX \
    --validation-fraction 0.08 --seed 0 --preset cpu-4mm --downsample 2 \
    --steps "${STEPS:-1200}" --batch-size 32 --lr 1e-4 --nthreads 1 --max-minutes 20 \
    --mask-augmentation 0.3 --mask-edges soft --contrast-ranking "${WEIGHT:-1}" \
    --ranking-temperature 0.01 --ranking-adversaries "${ADVERSARIES:-8}" --init-from "$INIT" --resume \
    --validate-every 100 --checkpoint-every 100 -w "$WORK" 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v 'bpd=.*lr=.*]$' || true
done
