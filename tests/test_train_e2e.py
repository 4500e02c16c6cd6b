"""End to end: tools/train_net.py trains, checkpoints and evaluates on the built-in dataset, in one
process and in two processes through Detectron2's launch (gloo on CPU)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.AUX_HEAD.CONVS_DIM", "8",
    "INPUT.CROP.SIZE", "[64,64]", "INPUT.IMG_SCALE", "[64,64]", "INPUT.TEST_IMG_SCALE", "[64,64]",
    "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
]


def run_train_net(tmp_path, *args, timeout=900):
    env = dict(os.environ, DETECTRON2_DATASETS=os.environ.get(
        "DETECTRON2_DATASETS", os.path.join(REPO, "datasets")), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"),
           "--config-file", os.path.join(REPO, "configs", "quickstart.yaml"), *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_and_evaluate_end_to_end(tmp_path):
    out = str(tmp_path / "run")
    run_train_net(tmp_path, *TINY, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
                  "TEST.EVAL_PERIOD", "6", "OUTPUT_DIR", out)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert os.path.isfile(os.path.join(out, "model_0000002.pth"))
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    rows = read_metrics(out)
    assert any("total_loss" in r and "loss_aux" in r for r in rows)
    evals = [r for r in rows if "sem_seg/mIoU" in r]
    assert evals and all(k in evals[-1] for k in ("sem_seg/fwIoU", "sem_seg/mACC", "sem_seg/pACC"))
    assert any(k.startswith("sem_seg/IoU-") for k in evals[-1])
    per_class = json.load(open(os.path.join(out, "inference", "d2seg_shapes_val", "sem_seg_per_class.json")))
    assert set(per_class["per_class"]) >= {"background", "disc"}
    # --eval-only on the written checkpoint gives the same numbers
    proc = run_train_net(tmp_path, "--eval-only", *TINY, "MODEL.WEIGHTS",
                         os.path.join(out, "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval"))
    assert "copypaste: mIoU" in proc.stdout + proc.stderr
    assert f"{evals[-1]['sem_seg/mIoU']:.4f}" in proc.stdout + proc.stderr


def test_two_process_launch_on_cpu(tmp_path):
    out = str(tmp_path / "ddp")
    run_train_net(tmp_path, "--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:29517", *TINY,
                  "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "MODEL.RESNETS.NORM", "SyncBN",
                  "MODEL.SEM_SEG_HEAD.NORM", "SyncBN", "OUTPUT_DIR", out)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    rows = read_metrics(out)
    assert max(r["iteration"] for r in rows) >= 2 and any("total_loss" in r for r in rows)
