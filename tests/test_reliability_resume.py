"""Interrupted training loses nothing, and runs are deterministic (docs/reliability.md).

tools/train_net.py runs the tiny quickstart model on CPU with a checkpoint every 2 iterations; a
run is SIGKILLed at three points (as soon as the 1st checkpoint appears, as soon as the 2nd one
appears, at a random moment), resumed with --resume each time, and its final model and optimizer
must be bit-identical to an uninterrupted run of the same SEED. After every kill,
``last_checkpoint`` must name a loadable file and every ``model_*.pth`` must load.
"""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_train_e2e import REPO, TINY

MAX_ITER = 8
OPTS = [*TINY, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(MAX_ITER),
        "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
        "SEED", "3"]


def _cmd(out, *extra):
    return [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
            os.path.join(REPO, "configs", "quickstart.yaml"), *extra, *OPTS, "OUTPUT_DIR", out]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=os.environ.get(
        "DETECTRON2_DATASETS", os.path.join(REPO, "datasets")))


def _train(cwd, out, *extra):
    proc = subprocess.run(_cmd(out, *extra), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return os.path.join(out, "model_final.pth")


def _train_and_kill(cwd, out, until, *extra):
    """Starts a run and SIGKILLs it once ``until()`` is true; returns whether it was killed."""
    log = open(os.path.join(cwd, "killed.log"), "ab")
    proc = subprocess.Popen(_cmd(out, *extra), cwd=cwd, env=_env(), stdout=log, stderr=log)
    try:
        while proc.poll() is None:
            if until():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def _check_checkpoints_loadable(out):
    last = os.path.join(out, "last_checkpoint")
    if not os.path.exists(last):
        return
    with open(last) as f:
        name = f.read().strip()
    assert os.path.isfile(os.path.join(out, name)), f"last_checkpoint names missing {name}"
    for fn in os.listdir(out):
        if fn.endswith(".pth") and not fn.startswith(".tmp_"):
            ckpt = torch.load(os.path.join(out, fn), map_location="cpu", weights_only=False)
            assert "model" in ckpt and "iteration" in ckpt and "trainer" in ckpt, fn


def _assert_same(a, b):
    a = torch.load(a, map_location="cpu", weights_only=False)
    b = torch.load(b, map_location="cpu", weights_only=False)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"model tensor {k} differs"
    sa, sb = (c["trainer"]["_trainer"]["optimizer"]["state"] for c in (a, b))
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, v in sa[k].items():
            assert torch.equal(v, sb[k][name]), f"optimizer state {k}.{name} differs"
    assert a["trainer"]["hooks"] == b["trainer"]["hooks"]  # LR scheduler


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ref")
    return _train(cwd, str(cwd / "out"))


def test_same_seed_runs_are_bit_identical(reference, tmp_path):
    _assert_same(reference, _train(tmp_path, str(tmp_path / "out")))


def test_killed_and_resumed_run_equals_uninterrupted(reference, tmp_path):
    out = str(tmp_path / "out")
    exists = lambda name: (lambda: os.path.exists(os.path.join(out, name)))  # noqa: E731
    delay = random.Random().uniform(0.5, 12.0)  # a random moment of start-up or training
    t0 = []
    at_random = lambda: time.time() - (t0[0] if t0 else t0.append(time.time()) or t0[0]) > delay  # noqa: E731
    kills = [("after the 1st checkpoint", exists("model_0000001.pth"), ()),
             ("after the 2nd checkpoint", exists("model_0000003.pth"), ("--resume",)),
             (f"at a random moment ({delay:.1f} s)", at_random, ("--resume",))]
    killed = []
    for what, until, extra in kills:
        if _train_and_kill(tmp_path, out, until, *extra):
            killed.append(what)
        _check_checkpoints_loadable(out)
    assert len(killed) >= 2, killed  # the random kill may come after the run finished
    _assert_same(reference, _train(tmp_path, out, "--resume"))
    print("kill points survived:", killed)
