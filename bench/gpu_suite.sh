#!/usr/bin/env bash
# The GPU benchmarks of issue 15 in one go (< 8 minutes on one H100/H200), one JSON + one Markdown table.
#
#   bash bench/gpu_suite.sh [--rehearse] [OUT_DIR]
#
# Rows, most important first (a time budget skips the rest, never the table): training images/s in bfloat16 of
# configs/full.py with the PyTorch reference's decoder (the anchor's model) and with the paper's, batch 256 and
# 64, peak GPU memory; the reference decoder at 256 with model.remat_decoders; embedding images/s at batch 1024
# and 4096; the input pipeline from disk with 0 and 16 worker processes and augmentation (crops/s).
# Each row is its own process (its own peak memory) with its own timeout; a failing row is listed as failed.
#
# --rehearse (or REHEARSE=1): the same commands with configs/demo.py and tiny batches on the CPU, so that the GPU
# run cannot fail on a typo. OUT_DIR defaults to $OUT (the device machine's) or bench/results/gpu_suite.
#
# On the lent GPU machine, whose Python lacks grain and ml_collections: carry .whl (see bench/README.md, "GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=${REHEARSE:-0}
if [[ "${1:-}" == "--rehearse" ]]; then REHEARSE=1; shift; fi
DEST=${1:-${OUT:-bench/results/gpu_suite}}
mkdir -p "$DEST"
RECORDS=$(mktemp -d)
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ -d .whl ]] && ! "$PY" -c "import grain, ml_collections" 2>/dev/null; then
  # the wheels matching this Python, chosen by pip among those carried
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site --find-links .whl \
    grain array-record portpicker ml-collections importlib-resources || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "import jax, grain, ml_collections; print('jax', jax.__version__, jax.devices())" || exit 1

if [[ "$REHEARSE" == 1 ]]; then
  CONFIG=configs/demo.py; BIG=16; SMALL=8; EMBED=32; EMBED_BIG=64; STEPS=(--steps 1 --warmup 0)
  PIPE=(--crops 256 --size 32 --batch 32 --batches 4 --workers 0 2); ROW_TIMEOUT=900; BUDGET=${SUITE_BUDGET_S:-3600}
else
  CONFIG=configs/full.py; BIG=256; SMALL=64; EMBED=1024; EMBED_BIG=4096; STEPS=(--steps 10 --warmup 2)
  PIPE=(--crops 4096 --batch 256 --batches 60 --workers 0 16); ROW_TIMEOUT=240; BUDGET=${SUITE_BUDGET_S:-430}
fi
REF=(--set "model.decoder='pytorch_reference'")
START=$SECONDS
ROWS=()

row() {  # row NAME COMMAND...: run one benchmark into $RECORDS/NAME.json unless the time budget is spent
  local name=$1; shift
  ROWS+=("$name")
  if (( SECONDS - START > BUDGET )); then
    echo "skipped: the suite's time budget (${BUDGET} s) is spent" > "$RECORDS/$name.log"; return
  fi
  echo "== $name: $*"
  timeout -s KILL "$ROW_TIMEOUT" "$PY" "$@" --out "$RECORDS/$name.json" > "$RECORDS/$name.log" 2>&1
  local code=$?
  tail -n 4 "$RECORDS/$name.log"
  if (( code != 0 )); then  # the log's last line is what the table shows
    echo "exit status $code$( (( code == 137 )) && echo ", killed at the row timeout (${ROW_TIMEOUT} s)")" >> "$RECORDS/$name.log"
    echo "   $name failed (exit $code)"
  fi
}

row train_reference_b${BIG} bench/train_step.py --config $CONFIG --batch $BIG --dtype bfloat16 "${STEPS[@]}" "${REF[@]}"
row embed_b${EMBED} bench/embed.py --config $CONFIG --batch $EMBED --dtype bfloat16 "${STEPS[@]}"
row train_paper_b${BIG} bench/train_step.py --config $CONFIG --batch $BIG --dtype bfloat16 "${STEPS[@]}"
row input_pipeline bench/input_pipeline.py "${PIPE[@]}"
row train_reference_b${SMALL} bench/train_step.py --config $CONFIG --batch $SMALL --dtype bfloat16 "${STEPS[@]}" "${REF[@]}"
row train_paper_b${SMALL} bench/train_step.py --config $CONFIG --batch $SMALL --dtype bfloat16 "${STEPS[@]}"
row train_reference_b${BIG}_remat bench/train_step.py --config $CONFIG --batch $BIG --dtype bfloat16 "${STEPS[@]}" \
  --set "model.decoder='pytorch_reference'" model.remat_decoders=True
row embed_b${EMBED_BIG} bench/embed.py --config $CONFIG --batch $EMBED_BIG --dtype bfloat16 "${STEPS[@]}"

"$PY" bench/suite_table.py "$RECORDS" --rows "${ROWS[@]}" --json "$DEST/gpu_suite.json" --md "$DEST/gpu_suite.md"
cat "$RECORDS"/*.log > "$DEST/gpu_suite.log"
echo "suite: $((SECONDS - START)) s; $DEST/gpu_suite.json, $DEST/gpu_suite.md"
