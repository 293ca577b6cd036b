#!/usr/bin/env bash
# bf16 (--bf16: bf16 compute, fp32 master weights and optimizer) vs fp32 train/inference throughput of our bench,
# alternating the two so that machine load drifts hit both alike; prints each pair and the median ratios.
# usage: bench/bf16.sh [MODEL...]   (default: lvvit_t t2t_vit_7)
# env: THREADS (2), BATCH (8), RES (224), STEPS (6), WARMUP (2), ROUNDS (3), TASK (ce), OUT_JSONL (keep the raw JSON lines),
#      IMPL (alltokens; pytorch: the same pairs with Debian's PyTorch, its CPU autocast to bf16, bench/torch_bench.py)
set -euo pipefail
THREADS=${THREADS:-2} BATCH=${BATCH:-8} RES=${RES:-224} STEPS=${STEPS:-6} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3} TASK=${TASK:-ce} IMPL=${IMPL:-alltokens}
grep -qw avx512_bf16 /proc/cpuinfo || echo "bf16.sh: this CPU lacks avx512_bf16; bf16 will be emulated and slow" >&2
source "$(dirname "$0")/common.sh"
case $IMPL in
  alltokens) ;;
  pytorch) need_torch ;;
  *) echo "bf16.sh: IMPL is alltokens or pytorch, not '$IMPL'" >&2; exit 2 ;;
esac
for m in "${models[@]}"; do
  for r in $(seq "$ROUNDS"); do
    flags=("" --bf16); (( r % 2 )) || flags=(--bf16 "") # alternate which precision goes first
    for flag in "${flags[@]}"; do
      if [[ $IMPL == pytorch ]]; then run_theirs "$m" $([[ $TASK == ce ]] && echo --ce) $flag
      else run_ours "$m" --task "$TASK" $flag; fi | tee -a "$out"
    done
  done
done
/usr/bin/env python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for m in sorted({r["model"] for r in rows}):
    fp = [r for r in rows if r["model"] == m and not r["bf16"]]
    bf = [r for r in rows if r["model"] == m and r["bf16"]]
    tr = [b["train_images_per_s"] / f["train_images_per_s"] for f, b in zip(fp, bf)]
    inf = [b["infer_images_per_s"] / f["infer_images_per_s"] for f, b in zip(fp, bf)]
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    print(f"{m} ({rows[0]['impl']}): bf16 train {med(bf, 'train_images_per_s'):.2f} vs fp32 {med(fp, 'train_images_per_s'):.2f} img/s, paired ratio median ×{statistics.median(tr):.2f} "
          f"(rounds {' '.join(f'{x:.2f}' for x in tr)}); inference ×{statistics.median(inf):.2f}; peak RSS {med(bf, 'peak_rss_mb'):.0f} vs {med(fp, 'peak_rss_mb'):.0f} MiB")
PY
