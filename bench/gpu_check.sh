#!/usr/bin/env bash
# The device check: one command for a lent GPU, run from a checkout carried there.
#
#   bench/gpu_check.sh [--device cuda|cpu] [--budget SECONDS] [--small] [--data DIR] [--out DIR] [--steps A,B]
#
# Five steps, each time-boxed with `timeout`, each writing its figures as JSON under the output folder
# ($OUT on the device machine; else --out, default /tmp/dcn-gpu-check); a step that fails or runs out of
# time is recorded as such in its JSON and the next step still runs:
#   1. correctness     the DCN, a U-Net (and a 2.5D model when model.context exists) learn; checkpoints
#                      round-trip; predict on the device = predict on the CPU within 1/255; bf16 validation
#                      within 0.002 IoU of fp32                                  (bench/gpu_correctness.py)
#   2. gpu_train       the training step, width 64, 512 x 512: fp32, bf16, + channels_last, + torch.compile,
#                      TFLOP/s against the bf16 matmul rate measured in the same run (bench/gpu_train.py)
#   3. packing         images/s with 1, 2, 4 trials per GPU through real local sweeps (bench/packing.py --sweep)
#   4. predict_volume  OME-Zarr volume prediction against the bare forward, memory (bench/predict_volume.py)
#   5. table1          with the time left: 4 Table 1 configurations x 2 seeds at full width through a real sweep,
#                      for jobs/table1.yaml's step budget                        (bench/gpu_check.py)
# Files back (7 of the device tool's 8): summary.json, the five step JSONs, gpu_check.log.
#
# Before a device run, here: the bundle (Ray, MLflow, zarr, ome-zarr: the GPU machine lacks them) and the
# ISBI slices, in folders git ignores (.gitignore has both):
#   bench/make_devbundle.sh        (.devbundle without the S3 clients, and .devdata with the ISBI slices)
# then the device tool's run with carry [".devbundle", ".devdata"], timeout_s 560 and the command
#   bench/gpu_check.sh
# Here on the CPU, in a few minutes:  bench/gpu_check.sh --device cpu --small --budget 600 --data .devdata
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -f .devbundle/activate ]; then
  # shellcheck disable=SC1091
  source .devbundle/activate
fi
device=cuda budget=480 small="" data=.devdata out="${OUT:-/tmp/dcn-gpu-check}" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --small) small="--small"; shift ;;
    --data) data="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --steps) only=",$2,"; shift 2 ;;
    *) echo "gpu_check.sh: error: unknown argument $1" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$out"
work="$(mktemp -d "${TMPDIR:-/tmp}/dcn-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$out/gpu_check.log"
: > "$log"
start=$(date +%s)
deadline=$((start + budget))
common=(--out "$out" --data "$data" --device "$device" $small)

# Each step's share of the budget (percent); the last step run (table1 unless --steps says otherwise) takes
# whatever is left. A step ending early leaves its time to the later ones; each later step keeps at least 20 s.
steps=(correctness gpu_train packing predict_volume table1)
shares=(15 15 35 8 0)
"$python" bench/gpu_check.py env "${common[@]}" --budget "$budget" >> "$log" 2>&1 ||
  echo "gpu_check.sh: the environment could not be read (see the log)" >> "$log"
chosen=()
for i in "${!steps[@]}"; do
  if [ -z "$only" ] || [[ "$only" == *",${steps[$i]},"* ]]; then chosen+=("$i"); fi
done
for n in "${!chosen[@]}"; do
  i="${chosen[$n]}"
  step="${steps[$i]}"
  now=$(date +%s)
  later=$(( (${#chosen[@]} - n - 1) * 20 ))
  left=$((deadline - now - later - 5))
  if [ "${shares[$i]}" -gt 0 ] && [ "$later" -gt 0 ]; then  # the last step chosen takes what is left
    want=$((budget * shares[i] / 100))
    limit=$(( want < left ? want : left ))
  else
    limit=$left
  fi
  [ "$limit" -lt 10 ] && limit=10
  steplog="$work/$step.log"
  echo "=== $step: up to $limit s ($(date -u +%H:%M:%S) UTC)" | tee -a "$log"
  began=$(date +%s)
  mkdir -p "$work/$step"
  timeout -k 10 "$limit" "$python" bench/gpu_check.py "$step" "${common[@]}" --work "$work/$step" --budget "$limit" \
    > "$steplog" 2>&1
  rc=$?
  took=$(( $(date +%s) - began ))
  cat "$steplog" >> "$log"
  echo "=== $step: exit $rc after $took s" | tee -a "$log"
  "$python" bench/gpu_check.py finish "$step" "${common[@]}" --rc "$rc" --seconds "$took" --budget "$limit" \
    --log "$steplog" >> "$log" 2>&1 ||
    printf '{"step": "%s", "status": "failed", "rc": %d, "seconds": %d}\n' "$step" "$rc" "$took" > "$out/$step.json"
done
"$python" bench/gpu_check.py summary "${common[@]}" 2>> "$log" | tee -a "$log"
echo "gpu_check: $(( $(date +%s) - start )) s in all; figures in $out"
