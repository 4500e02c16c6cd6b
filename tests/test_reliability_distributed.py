"""Distributed equivalence on CPU (gloo), docs/reliability.md:

- NaiveSyncBatchNorm over 2 processes = BatchNorm over the concatenated batch;
- 2 processes of batch B train like 1 process of batch 2B (same data order): loss per iteration
  within 1e-5, SyncBN in the 2-process run vs BN in the 1-process one;
- two tools/train_net.py "machines" (--num-machines 2) train together, only rank 0 writes
  checkpoints, and when one dies the other fails with a clear error instead of hanging.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from detectron2.engine import launch

from test_train_e2e import REPO, TINY


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- SyncBN = BN over the full batch ------------------------------------------------------------

def _syncbn_worker(x, out_file):
    from detectron2.layers import NaiveSyncBatchNorm

    torch.manual_seed(0)
    rank = dist.get_rank()
    bn = NaiveSyncBatchNorm(x.shape[1], momentum=0.1)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    half = x.shape[0] // 2
    xi = x[rank * half:(rank + 1) * half].clone().requires_grad_(True)
    y = bn(xi)
    (y * torch.arange(y.numel()).reshape(y.shape).float().sin()).sum().backward()
    res = {"y": y.detach(), "gx": xi.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
           "rm": bn.running_mean, "rv": bn.running_var}
    torch.save(res, f"{out_file}.{rank}")


def test_naive_syncbn_equals_bn_over_the_full_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    out = str(tmp_path / "res")
    launch(_syncbn_worker, 2, dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(x, out))
    r = [torch.load(f"{out}.{k}") for k in range(2)]

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3, momentum=0.1)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    xf = x.clone().requires_grad_(True)
    y = bn(xf)
    w = torch.cat([torch.arange(y[:2].numel()).reshape(y[:2].shape).float().sin()] * 2)
    (y * w).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r[0]["gx"], r[1]["gx"]]), xf.grad, **tol)
    # each process's parameter gradient is its half's share: their sum = the full-batch gradient
    torch.testing.assert_close(r[0]["gw"] + r[1]["gw"], bn.weight.grad, **tol)
    torch.testing.assert_close(r[0]["gb"] + r[1]["gb"], bn.bias.grad, **tol)
    torch.testing.assert_close(r[0]["rm"], bn.running_mean, **tol)
    # Detectron2's NaiveSyncBatchNorm tracks the biased batch variance (torch's BN: unbiased)
    var = x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=False)
    torch.testing.assert_close(r[0]["rv"], 0.9 + 0.1 * var, **tol)
    torch.testing.assert_close(r[1]["rv"], r[0]["rv"], atol=0, rtol=0)


# ---- 2 x batch B = 1 x batch 2B -----------------------------------------------------------------

EQUIV = [*TINY, "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "0",
         "DATASETS.TEST", "()", "SEED", "5", "SOLVER.CHECKPOINT_PERIOD", "100000",
         "SOLVER.BASE_LR", "0.01",  # a gentler step: fewer rounding differences amplified
         # dropout masks are drawn per process: off, so that both layouts compute the same thing
         "MODEL.SEM_SEG_HEAD.DROPOUT", "0.0", "MODEL.AUX_HEAD.DROPOUT", "0.0"]


def _train_worker(opts, out_json):
    import d2seg  # noqa: F401
    from d2seg.engine import Trainer, setup_cfg
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    cfg = setup_cfg(argparse.Namespace(config_file=os.path.join(REPO, "configs", "quickstart.yaml"),
                                       opts=opts), default_setup_fn=None)
    seed_all_rng(cfg.SEED)  # same initial weights (DDP also broadcasts rank 0's)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    if comm.is_main_process():
        losses = {i: v for v, i in trainer.storage.history("total_loss").values()}
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        torch.save({"losses": losses, "model": model.state_dict()}, out_json)


def test_two_processes_of_batch_b_equal_one_process_of_batch_2b(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", os.environ.get(
        "DETECTRON2_DATASETS", os.path.join(REPO, "datasets")))
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    launch(_train_worker, 1, args=(
        EQUIV + ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                 "MODEL.AUX_HEAD.NORM", "BN", "OUTPUT_DIR", str(tmp_path / "o1")], one))
    launch(_train_worker, 2, dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(
        EQUIV + ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN",
                 "MODEL.AUX_HEAD.NORM", "SyncBN", "OUTPUT_DIR", str(tmp_path / "o2")], two))
    a, b = torch.load(one, weights_only=False), torch.load(two, weights_only=False)
    assert sorted(a["losses"]) == sorted(b["losses"]) == [0, 1, 2, 3]
    for i in a["losses"]:
        assert abs(a["losses"][i] - b["losses"][i]) < 1e-5, (i, a["losses"], b["losses"])
    for k, v in a["model"].items():
        if k.endswith(("running_var", "num_batches_tracked")):  # NaiveSyncBN: biased var, no count
            continue
        torch.testing.assert_close(v, b["model"][k], atol=1e-4, rtol=1e-3, msg=k)


# ---- two "machines" -----------------------------------------------------------------------------

def test_two_machines_train_together_and_fail_cleanly_when_one_dies(tmp_path):
    out, port = str(tmp_path / "out"), _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", D2SEG_DIST_TIMEOUT="30",
               DETECTRON2_DATASETS=os.environ.get("DETECTRON2_DATASETS",
                                                  os.path.join(REPO, "datasets")))
    procs, logs = [], []
    for rank in range(2):
        logs.append(open(tmp_path / f"rank{rank}.log", "w+"))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
             os.path.join(REPO, "configs", "quickstart.yaml"), "--num-machines", "2",
             "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}", *TINY,
             "SOLVER.MAX_ITER", "20000", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "0",
             "DATASETS.TEST", "()", "OUTPUT_DIR", out],
            cwd=tmp_path, env=env, stdout=logs[rank], stderr=subprocess.STDOUT,
            start_new_session=True))  # a "machine" = its process group (launcher + worker)
    try:
        deadline = time.time() + 240
        while not os.path.exists(os.path.join(out, "model_0000003.pth")):
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                open(tmp_path / "rank0.log").read()[-3000:]
            time.sleep(0.1)
        # they trained together: rank 1 logged nothing of its own checkpoints, one set exists
        assert sorted(f for f in os.listdir(out) if f.startswith("model_"))[:2] == \
            ["model_0000001.pth", "model_0000003.pth"]
        # the machine dies: its launcher and the worker Detectron2's launch spawned (killing
        # the launcher alone leaves the worker training on)
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        t0 = time.time()
        rc = procs[0].wait(timeout=120)
        waited = time.time() - t0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    log0 = open(tmp_path / "rank0.log").read()
    assert rc != 0, log0[-3000:]
    assert waited < 90, waited
    assert "rank 0 of 2: lost the other training processes" in log0, log0[-3000:]
    print(f"rank 0 exited {waited:.1f} s after rank 1 was killed:\n" + log0[-1500:])
