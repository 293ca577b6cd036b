#!/usr/bin/env bash
# AllTokens vs PyTorch on the same CPU, back to back: train step and inference images/s for the same architecture.
# usage: bench/compare.sh [MODEL...]   (default: lvvit_t t2t_vit_7)
# env: THREADS (2), BATCH (8), RES (224), STEPS (10), WARMUP (3), ROUNDS (3), TASK (auto: LV-ViT's token-label step; ce),
#      OUT_JSONL (keep the raw JSON lines in this file), BF16 (1: both sides in bf16 — ours --bf16, PyTorch's CPU autocast)
# Needs Debian's python3-torch (and libopenblas0-openmp for OpenBLAS); prints one line per round and the median ratios.
set -euo pipefail
THREADS=${THREADS:-2} BATCH=${BATCH:-8} RES=${RES:-224} STEPS=${STEPS:-10} WARMUP=${WARMUP:-3} ROUNDS=${ROUNDS:-3} TASK=${TASK:-auto} BF16=${BF16:-0}
source "$(dirname "$0")/common.sh"
need_torch
for m in "${models[@]}"; do
  for r in $(seq "$ROUNDS"); do
    ours() { run_ours "$m" --task "$TASK" $([[ $BF16 == 1 ]] && echo --bf16) | tee -a "$out"; }
    theirs() { run_theirs "$m" $([[ $TASK == ce ]] && echo --ce) $([[ $BF16 == 1 ]] && echo --bf16) | tee -a "$out"; }
    # Who goes first alternates between rounds, so a drift within a round does not always favour the same side.
    if (( r % 2 )); then ours; theirs; else theirs; ours; fi
  done
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for m in sorted({r["model"] for r in rows}):
    def med(impl, key):
        v = [r[key] for r in rows if r["model"] == m and r["impl"] == impl]
        return statistics.median(v) if v else float("nan")
    at, pt = med("alltokens", "train_images_per_s"), med("pytorch", "train_images_per_s")
    ai, pi = med("alltokens", "infer_images_per_s"), med("pytorch", "infer_images_per_s")
    am, pm = med("alltokens", "peak_rss_mb"), med("pytorch", "peak_rss_mb")
    def faults(impl):
        v = [r["page_faults_per_step"] for r in rows if r["model"] == m and r["impl"] == impl and r.get("page_faults_per_step") is not None]
        return f"{statistics.median(v) / 1000:.1f} k" if v else "?"
    ours = [r for r in rows if r["model"] == m and r["impl"] == "alltokens"]
    theirs = [r for r in rows if r["model"] == m and r["impl"] == "pytorch"]
    per_round = " ".join(f"{a['train_images_per_s'] / p['train_images_per_s']:.2f}/{a['infer_images_per_s'] / p['infer_images_per_s']:.2f}"
                         for a, p in zip(ours, theirs))
    print(f"{m}: train {at:.2f} vs {pt:.2f} img/s (×{at/pt:.2f}); inference {ai:.2f} vs {pi:.2f} img/s (×{ai/pi:.2f}); peak RSS {am:.0f} vs {pm:.0f} MiB"
          f"; page faults per train step {faults('alltokens')} vs {faults('pytorch')}; per round train/inference ratio: {per_round}")
PY
