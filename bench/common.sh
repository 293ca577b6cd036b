# Shared start of the bench/*.sh scripts (sourced, not run): repository root as the working folder, the models
# from the arguments (default lvvit_t t2t_vit_7), the CLI built once outside the timings, and $out, the file the
# rounds' JSON lines go to: OUT_JSONL when set (emptied first, so an earlier run's lines never enter this run's
# medians), else a temporary file removed on exit.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
models=("$@"); [[ ${#models[@]} -eq 0 ]] && models=(lvvit_t t2t_vit_7)
./alltokens models >/dev/null
if [[ -n ${OUT_JSONL:-} ]]; then
  out=$OUT_JSONL
  : >"$out"
else
  out=$(mktemp)
  trap 'rm -f "$out"' EXIT
fi
# The PyTorch side (compare.sh, breakdown.sh) runs Debian's torch; say so up front rather than fail after our first run.
need_torch() {
  /usr/bin/python3 -c 'import torch' 2>/dev/null && return 0
  echo "$(basename "$0"): the PyTorch side needs Debian's python3-torch: sudo apt-get install python3-torch libopenblas0-openmp" >&2
  exit 1
}
# One benchmark run of either side for model $1 with the calling script's THREADS, BATCH, RES, STEPS and WARMUP; the
# remaining arguments are that side's own flags (ours: --task ce --bf16 ...; theirs: torch_bench.py's --ce --bf16 ...).
# Each prints its JSON line on stdout; the caller sends it to "$out".
run_ours() {
  local m=$1; shift
  ./alltokens bench --model "$m" --res "$RES" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" "$@" --json 2>/dev/null
}
run_theirs() {
  local m=$1; shift
  /usr/bin/python3 bench/torch_bench.py --model "$m" --res "$RES" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" "$@"
}
