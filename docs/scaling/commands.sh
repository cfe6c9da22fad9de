#!/usr/bin/env bash
# The commands behind docs/scaling/ (the CPU scaling study). Run from the repository root with
# ../shared beside it, on a 2-core machine, one torch thread per process.
set -euo pipefail
export OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu

# 1. The corpus: every structure of the corpus stand-in, both variants, the Matbench tasks
#    evaluated here excluded (3 min; the same corpus as the shipped checkpoint's).
[ -f runs/corpus-full/manifest.json ] || cloud corpus build ../shared/data/corpus/structures.jsonl.gz \
    --out runs/corpus-full --workers 2 --shard-size 5000 --variants cloud,canonical \
    --exclude ../shared/data/matbench/matbench_dielectric.json.gz \
              ../shared/data/matbench/matbench_phonons.json.gz

# 2. The grid, 5 sizes x 4 step counts, on both cores: two processes share one results.csv
#    (about 15 min of wall time).
cloud scaling sweep --config configs/scaling/cpu.yaml --part 1/2 --no-fit &
cloud scaling sweep --config configs/scaling/cpu.yaml --part 2/2 --no-fit
wait

# 3. The prediction (written to prediction.json before the held-out run starts) and the
#    held-out run, milli x 3000 steps (about 25 min), beside the downstream fine-tuning of
#    the grid's checkpoints on matbench_phonons; then the held-out checkpoint's fine-tuning.
cloud scaling sweep --config configs/scaling/cpu.yaml --no-downstream &
cloud scaling downstream --config configs/scaling/cpu.yaml
wait
cloud scaling downstream --config configs/scaling/cpu.yaml

# 4. The committed report: the CSVs and the prediction copied here, then fitted.
cp runs/scaling/cpu/{results.csv,prediction.json,downstream.csv} docs/scaling/
cloud scaling fit docs/scaling/results.csv --out docs/scaling
