#!/usr/bin/env bash
# The CamVid deployment table of docs/deployment.md: for each configs/camvid/<NAME>.yaml given, train
# it from scratch, evaluate it on CamVid test in PyTorch (fp32), export it to ONNX (fp32 + INT8,
# calibrated on 100 CamVid train images; and INT8 by the OpenVINO route), evaluate the exports
# with ONNX Runtime / OpenVINO through the same evaluator, and time PyTorch at the test size.
# Then `python dev/camvid_deployment_table.py` prints the tables from what this wrote under $OUT.
#   DETECTRON2_DATASETS=/path/with/CamVid bash dev/camvid_deployment.sh fast_scnn_camvid stdc1_camvid
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-output/camvid}
THREADS=${THREADS:-2}
for name in "$@"; do
  cfg=configs/camvid/$name.yaml
  dir=$OUT/$name
  mkdir -p "$dir"
  if [ ! -f "$dir/model_final.pth" ]; then
    $PY tools/train_net.py --config-file "$cfg" OUTPUT_DIR "$dir" 2>&1 | tee "$dir/train.log" | grep -E "eta|Traceback|Error" | tail -n 3
  fi
  w=$dir/model_final.pth
  $PY tools/train_net.py --config-file "$cfg" --eval-only MODEL.WEIGHTS "$w" \
      DATASETS.TEST "('camvid_sem_seg_test',)" OUTPUT_DIR "$dir/eval_pytorch" > "$dir/eval_pytorch.log" 2>&1
  # LR-ASPP: the export's second (3/4-size) check must stay >= 392 px, its pooling's least input
  export_size=$(grep -q lraspp <<< "$name" && echo "--height 523 --width 700" || echo "")
  $PY tools/export_model.py --config-file "$cfg" --format onnx --dynamic --output "$dir/onnx" $export_size \
      --int8 --calib-dataset camvid_sem_seg_train --calib-images 100 --int8-latency 15 \
      MODEL.WEIGHTS "$w" > "$dir/export.log" 2>&1
  # the OpenVINO route (NNCF into an OpenVINO IR): pip install 'd2seg[openvino]'
  $PY tools/export_model.py --config-file "$cfg" --format onnx --dynamic --output "$dir/openvino" $export_size \
      --int8 --int8-backend openvino --calib-dataset camvid_sem_seg_train --calib-images 100 \
      MODEL.WEIGHTS "$w" > "$dir/export_openvino.log" 2>&1
  $PY tools/evaluate_deployed.py --config-file "$cfg" --model "$dir/openvino/model_int8.xml" \
      --dataset camvid_sem_seg_test --threads "$THREADS" --output "$dir/eval_openvino_int8" > "$dir/eval_openvino_int8.log" 2>&1
  for f in model model_int8; do
    $PY tools/evaluate_deployed.py --config-file "$cfg" --model "$dir/onnx/$f.onnx" \
        --dataset camvid_sem_seg_test --threads "$THREADS" --output "$dir/eval_$f" > "$dir/eval_$f.log" 2>&1
  done
  size=$(grep -q lraspp <<< "$name" && echo "392 523" || echo "360 480")
  $PY tools/benchmark.py --config-file "$cfg" --task inference --format pytorch --input-size $size \
      --threads "$THREADS" --num-iter 30 --json --no-progress MODEL.WEIGHTS "$w" > "$dir/bench_pytorch.json" 2> "$dir/bench_pytorch.log"
  echo "[$name] done"
done
