#!/bin/bash
# Alternate 15-minute chunks of the 4 mm target prior and its contrast-agnostic companion.
. /work/main/.venv/bin/activate
cd /work/train
EX="IXI052 IXI094 IXI146 IXI150 IXI180 IXI212 IXI263 IXI267 IXI280 IXI282 IXI302 IXI329 IXI334 IXI338 IXI383 IXI384 IXI482 IXI511 IXI515 IXI518 IXI559 IXI577 IXI612 IXI614"
COMMON="--exclude-label $EX --validation-fraction 0.08 --seed 0 --preset cpu-4mm --downsample 2 --steps ${STEPS:-3000} --batch-size 32 --nthreads 1 --max-minutes 15 --mask-augmentation 0.2 -w /work/train"
for round in $(seq 1 ${ROUNDS:-8}); do
  for kind in target agnostic; do
    extra=""; [[ $kind == agnostic ]] && extra="--contrast-augmentation"
    resume=""; [[ -f ixihh_4mm_$kind.pt.ckpt ]] && resume="--resume"
    [[ -f ixihh_4mm_${kind}_slices.npz ]] || ln -s ixihh_slices.npz ixihh_4mm_${kind}_slices.npz
    echo "=== round $round $kind $(date)"
    blindharmony-train /work/shared/data/ixi-hh ixihh_4mm_$kind.pt $COMMON $extra $resume 2>&1 | tr '\r' '\n' | grep -v "it/s\]$\|step/s\]$" 
  done
done
