#!/usr/bin/env bash
# The GPU numbers of docs/benchmarks.md in one run of at most ~8 minutes on one GPU, at the real sizes:
# a DeepLabv2-ResNet-101 ADVENT iteration (GTA5 720x1280 + Cityscapes 512x1024, batch 1) in fp32, bf16-mixed
# and 16-mixed (Lightning beside the official loop's order), an ADVENT iteration on MiT-B5 + DAFormer head
# beside DeepLabV2 (512x512 crops, batch 2, bf16-mixed), and the entropy ranking's throughput (ResNet-101,
# 1024x512). Peak memory is torch.cuda.max_memory_allocated. Everything lands in one JSON.
#
#   bash bench/gpu_check.sh [OUT_DIR]        (default: $OUT, else bench_out/)  ->  OUT_DIR/gpu_check.json
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench_out}}
mkdir -p "$out"
python=${PYTHON:-python}
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going if it fails
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" --json "$out/$name.json" 2>"$out/$name.err" || echo "$name failed or ran out of time (see $out/$name.err)"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
for precision in 32-true bf16-mixed 16-mixed; do
  step "advent_deeplabv2_${precision}" 90 "$python" bench/train_step.py --depth 101 --source 720 1280 --target 512 1024 \
    --iterations 5 --rounds 1 --precision "$precision"
done
step advent_mit_b5_vs_deeplabv2 150 "$python" bench/networks.py --size 512 512 --batch-size 2 --precision bf16-mixed --iterations 5 --rounds 1
step ranking 90 "$python" bench/rank.py --depth 101 --size 1024 512 --images 32 --batch-size 4
"$python" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
report = {"gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None}
for path in sorted(out.glob("*.json")):
    if path.name != "gpu_check.json":
        report[path.stem] = json.loads(path.read_text())
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(f"wrote {out / 'gpu_check.json'}")
PY
