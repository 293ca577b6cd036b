#!/usr/bin/env bash
# Where the train step's time goes, AllTokens vs PyTorch, part by part (stem or T2T module, every block, head, optimizer):
# each part alone, forward + backward, on the input it gets in the model (bench --breakdown / torch_bench.py --breakdown).
# usage: bench/breakdown.sh [MODEL...]   (default: lvvit_t t2t_vit_7)
# env: THREADS (2), BATCH (8), RES (224), STEPS (8), WARMUP (2), ROUNDS (3), OUT_JSONL (keep the raw JSON lines)
set -euo pipefail
THREADS=${THREADS:-2} BATCH=${BATCH:-8} RES=${RES:-224} STEPS=${STEPS:-8} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3}
source "$(dirname "$0")/common.sh"
need_torch
for m in "${models[@]}"; do
  for r in $(seq "$ROUNDS"); do
    # Cross-entropy on both sides, so the parts (not the loss) are what differs.
    ours() { run_ours "$m" --task ce --breakdown >>"$out"; }
    theirs() { run_theirs "$m" --ce --breakdown >>"$out"; }
    if (( r % 2 )); then ours; theirs; else theirs; ours; fi # alternate who goes first
    echo "breakdown: $m round $r of $ROUNDS done" >&2
  done
done
/usr/bin/python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for m in dict.fromkeys(r["model"] for r in rows):
    def parts(impl):
        acc = {}
        for r in rows:
            if r["model"] == m and r["impl"] == impl:
                for p in r.get("breakdown", []):
                    acc.setdefault(p["part"], []).append(p["median_s"] * 1000)
        return {k: statistics.median(v) for k, v in acc.items()}
    ours, theirs = parts("alltokens"), parts("pytorch")
    print(f"{m}: forward + backward per part, median ms over rounds (AllTokens vs PyTorch; ratio > 1: AllTokens faster)")
    for name in list(dict.fromkeys(list(ours) + list(theirs))):
        a, p = ours.get(name), theirs.get(name)
        ratio = f"×{p / a:.2f}" if a and p else ""
        fa = f"{a:9.1f}" if a is not None else "        —"
        fp = f"{p:9.1f}" if p is not None else "        —"
        print(f"  {name:24s} {fa} {fp}  {ratio}")
    sa, sp = sum(ours.values()), sum(theirs.values())
    print(f"  {'sum of parts':24s} {sa:9.1f} {sp:9.1f}  ×{sp / sa:.2f}")
    runs = [r for r in rows if r["model"] == m]
    sums = lambda impl: [sum(p["median_s"] for p in r["breakdown"]) for r in runs if r["impl"] == impl]
    print("  per round, sum of parts ratio: " + " ".join(f"{p / a:.2f}" for a, p in zip(sums("alltokens"), sums("pytorch"))))
PY
