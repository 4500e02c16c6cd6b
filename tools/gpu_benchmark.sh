#!/usr/bin/env bash
# GPU figures of docs/benchmark.md (one short run, ~5-8 minutes on one recent GPU), after the
# GPU path checks (OUT_DIR/gpu_path.txt). Not run yet: no GPU was lent to the session that wrote it.
# FCN, PSPNet, DeepLabV3+ (R-50-D8) and OCRNet (HRNet-W18), Cityscapes 512x1024 configs:
#   - inference ms/img at 512x1024 (forward + resize + argmax + copy to host), 200 images after
#     5 warm-up, fp32 and AMP fp16 (autocast), cudnn.benchmark off (as MMSegmentation's table);
#   - training img/s at batch 2 (512x1024 crops, Detectron2's trainer step), 20 steps after 3,
#     fp32 and AMP fp16 (SegAMPTrainer);
#   - torch.cuda.max_memory_allocated() of each run.
# Usage: bash tools/gpu_benchmark.sh [OUT_DIR]   (writes OUT_DIR/*.json and OUT_DIR/gpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-output/gpu_benchmark}}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" || true

# GPU path checks first (seconds): uint8 images normalised on the GPU, DANet under fp16 autocast
# at 512x1024 (finite logits: fp32 attention), multi-scale + flip TTA on the GPU, one AMP step
"$PY" - > "$OUT/gpu_path.txt" 2>&1 <<'PYEOF' || echo "GPU path checks FAILED: see $OUT/gpu_path.txt"
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
import d2seg
from d2seg.engine import Trainer
from d2seg.engine.amp import SegAMPTrainer
from d2seg.modeling import SemanticSegmentorWithTTA

cfg = get_cfg()
d2seg.add_d2seg_config(cfg)
cfg.merge_from_file("configs/_base_/models/danet_r50-d8.yaml")
cfg.merge_from_list(["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE",
                     "float16", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                     "MODEL.AUX_HEAD.NORM", "BN", "TEST.AUG.RATIOS", [0.5, 1.0],
                     "TEST.AUG.FLIP", True, "INPUT.TEST_IMG_SCALE", [1024, 512]])
model = build_model(cfg).eval()
img = torch.randint(0, 256, (3, 512, 1024), dtype=torch.uint8).pin_memory()
mean, std = model.pixel_mean.cpu(), model.pixel_std.cpu()
print("uint8 normalised on the GPU == on the CPU:",
      torch.equal(model.normalize(img).cpu(), (img.float() - mean) / std))
with torch.no_grad():
    logits = model([{"image": img}])[0]["sem_seg"]
    tta = SemanticSegmentorWithTTA(cfg, model)
    probs = tta([{"image": img, "height": 512, "width": 1024}])[0]["sem_seg"]
print("DANet fp16 logits finite:", bool(torch.isfinite(logits).all()), tuple(logits.shape))
print("TTA probabilities finite:", bool(torch.isfinite(probs).all()),
      "mean sum over classes:", float(probs.sum(0).mean()))
model.train()
batch = [{"image": torch.randint(0, 256, (3, 512, 512), dtype=torch.uint8).pin_memory(),
          "sem_seg": torch.randint(0, 19, (512, 512)).pin_memory()} for _ in range(2)]
step = SegAMPTrainer(model, iter(lambda: batch, None), Trainer.build_optimizer(cfg, model),
                     log_grad_scaler=True)
with EventStorage() as storage:
    step.storage = storage
    step.run_step()
    print("AMP step total_loss:", storage.history("total_loss").latest(),
          "grad scale:", storage.history("[metric]grad_scaler").latest())
assert torch.isfinite(logits).all() and torch.isfinite(probs).all()
PYEOF
cat "$OUT/gpu_path.txt"

CONFIGS=(
  configs/fcn/fcn_r50-d8_512x1024_40k_cityscapes.yaml
  configs/pspnet/pspnet_r50-d8_512x1024_40k_cityscapes.yaml
  configs/deeplabv3plus/deeplabv3plus_r50-d8_512x1024_40k_cityscapes.yaml
  configs/ocrnet/ocrnet_hr18_512x1024_40k_cityscapes.yaml
)
for cfg in "${CONFIGS[@]}"; do
  name=$(basename "$cfg" .yaml)
  for amp in "" "--amp"; do
    tag=${amp:+_amp}
    # each run in its own process: max_memory_allocated is per run
    timeout 300 "$PY" tools/benchmark.py --config-file "$cfg" --task inference --device cuda \
      --num-iter 200 --warmup 5 --input-size 512 1024 $amp --json --no-progress \
      > "$OUT/${name}_inference${tag}.json" || echo "{\"config\": \"$cfg\", \"error\": \"inference$tag failed\"}" > "$OUT/${name}_inference${tag}.json"
    timeout 300 "$PY" tools/benchmark.py --config-file "$cfg" --task train --device cuda \
      --num-iter 20 --warmup 3 --batch-size 2 $amp --json --no-progress \
      > "$OUT/${name}_train${tag}.json" || echo "{\"config\": \"$cfg\", \"error\": \"train$tag failed\"}" > "$OUT/${name}_train${tag}.json"
  done
done

"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
rows, machine = {}, None
for f in sorted(glob.glob(os.path.join(out, "*.json"))):
    lines = open(f).read().strip().splitlines()
    r = json.loads(lines[-1]) if lines else {"error": "empty"}
    name = os.path.basename(f).split("_inference")[0].split("_train")[0]
    key = ("inference" if "_inference" in f else "train") + ("_amp" if f.endswith("_amp.json") else "")
    rows.setdefault(name, {})[key] = r
    machine = machine or r.get("machine")
def cell(r, field, fmt):
    return "error" if r is None or "error" in r else fmt.format(r[field])
lines = ["| config | inference ms/img fp32 / fp16 | inference mem MB fp32 / fp16 | "
         "train img/s (batch 2) fp32 / fp16 | train mem MB fp32 / fp16 |", "|---|---|---|---|---|"]
for name, r in rows.items():
    g = r.get
    lines.append(f"| {name} | {cell(g('inference'), 'ms_per_img', '{:.1f}')} / "
                 f"{cell(g('inference_amp'), 'ms_per_img', '{:.1f}')} | "
                 f"{cell(g('inference'), 'max_memory_mb', '{:.0f}')} / "
                 f"{cell(g('inference_amp'), 'max_memory_mb', '{:.0f}')} | "
                 f"{cell(g('train'), 'img_per_s', '{:.2f}')} / "
                 f"{cell(g('train_amp'), 'img_per_s', '{:.2f}')} | "
                 f"{cell(g('train'), 'max_memory_mb', '{:.0f}')} / "
                 f"{cell(g('train_amp'), 'max_memory_mb', '{:.0f}')} |")
if machine:
    lines += ["", f"GPU: {machine.get('gpu')}, CUDA {machine.get('cuda')}, cuDNN "
              f"{machine.get('cudnn')}, torch {machine.get('torch')}; CPU {machine.get('cpu')}."]
text = "\n".join(lines)
open(os.path.join(out, "gpu.md"), "w").write(text + "\n")
print(text)
EOF
