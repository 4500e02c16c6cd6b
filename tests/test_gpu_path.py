"""The GPU-ready data path and speed options, checked on the CPU (issue 14):

- the mappers hand over uint8 images, the model normalises them: the same model input as the
  float32 images of before, bit for bit; TTA takes uint8 too;
- pinned batches when the model is on a GPU; DataLoader workers run cv2 / torch on one thread;
- MODEL.SPEED is applied before DDP: a 2-process gloo run with CHANNELS_LAST and fused attention
  trains like 1 process;
- attention products under fp16 autocast stay finite (DANet at 512 x 1024);
- the CPU kernels' workspaces are freed on request; ``log_grad_scaler`` logs the loss scale.
"""
import argparse
import os
import threading

import numpy as np
import pytest
import torch
import torch.utils.data as torchdata

from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import common
from test_reliability_distributed import EQUIV, _free_port
from test_slurm_launcher import assert_same_weights
from test_train_e2e import REPO


# ---- uint8 images, normalised on the device -----------------------------------------------------

def _sample(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(rng.integers(0, 5, (37, 53), dtype=np.uint8)).save(tmp_path / "l.png")
    return {"file_name": str(tmp_path / "i.png"), "sem_seg_file_name": str(tmp_path / "l.png")}


@pytest.mark.parametrize("is_train", [True, False])
def test_uint8_mapper_gives_the_model_the_same_input(tmp_path, monkeypatch, is_train):
    """Train pipeline (resize, crop, flip, photometric distortion) and test pipeline: the uint8
    image normalises to exactly what the former float32 image normalised to."""
    from d2seg.data.mappers import semseg_mapper

    cfg = common.tiny_cfg(opts=["INPUT.CROP.SIZE", [32, 32], "INPUT.IMG_SCALE", [64, 48],
                                "INPUT.TEST_IMG_SCALE", [64, 48]])
    model = build_model(cfg)
    mapper = semseg_mapper.SemSegDatasetMapper(cfg, is_train=is_train)
    d = _sample(tmp_path)
    np.random.seed(3)
    new = mapper(d)
    monkeypatch.setattr(semseg_mapper, "image_to_tensor", lambda img: torch.from_numpy(
        np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)))  # the former output
    np.random.seed(3)
    old = mapper(d)
    assert new["image"].dtype == torch.uint8 and old["image"].dtype == torch.float32
    assert torch.equal(new["image"].float(), old["image"])
    assert torch.equal(model.normalize(new["image"]), model.normalize(old["image"]))
    if is_train:
        assert torch.equal(new["sem_seg"], old["sem_seg"])
        with EventStorage():  # and training reads it as before
            model.train()
            torch.manual_seed(0)
            loss_new = sum(model([new]).values())
            torch.manual_seed(0)
            loss_old = sum(model([old]).values())
        assert torch.equal(loss_new, loss_old)


def test_tta_of_a_uint8_image_equals_that_of_its_float_copy():
    from d2seg.modeling import SemanticSegmentorWithTTA

    cfg = common.tiny_cfg(aux=False, opts=["INPUT.TEST_IMG_SCALE", [48, 40], "TEST.AUG.RATIOS",
                                           [0.75, 1.25], "TEST.AUG.FLIP", True])
    model = build_model(cfg).eval()
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 30, 44), dtype=np.uint8))
    tta = SemanticSegmentorWithTTA(cfg, model)
    with torch.no_grad():
        p8 = tta([{"image": img, "height": 30, "width": 44}])[0]["sem_seg"]
        p32 = tta([{"image": img.float(), "height": 30, "width": 44}])[0]["sem_seg"]
    views = tta.tta_mapper.resized_images({"image": img, "height": 30, "width": 44})
    assert [v.dtype for v in views] == [torch.uint8, torch.uint8]
    assert torch.equal(p8, p32)


# ---- loader: pinned memory, one thread per worker -----------------------------------------------

def test_train_loader_pins_memory_only_for_cuda():
    from d2seg.data.mappers import SemSegDatasetMapper
    from d2seg.data.resumable import build_resumable_train_loader

    for device, pinned in (("cpu", False), ("cuda", True)):
        cfg = common.get_d2seg_cfg(os.path.join(REPO, "configs", "quickstart.yaml"),
                                   ["DATALOADER.NUM_WORKERS", 0])
        cfg.MODEL.DEVICE = device  # not iterated: no GPU needed
        loader = build_resumable_train_loader(cfg, SemSegDatasetMapper(cfg, is_train=True))
        assert loader.pin_memory is pinned


class _Threads(torchdata.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2

        from d2seg.data.worker_threads import limit_threads_in_worker

        limit_threads_in_worker()
        return torch.tensor([cv2.getNumThreads(), torch.get_num_threads(),
                             int(os.environ.get("OMP_NUM_THREADS", "0"))])


def test_loader_workers_use_one_thread():
    import cv2

    before = cv2.getNumThreads()
    got = next(iter(torchdata.DataLoader(_Threads(), batch_size=2, num_workers=1)))
    # cv2.setNumThreads(0) -> cv2 runs on the calling thread (getNumThreads() reports 1)
    assert got[:, 0].tolist() == [1, 1] and got[:, 1].tolist() == [1, 1]
    assert got[:, 2].tolist() == [1, 1]
    assert cv2.getNumThreads() == before  # the main process is left alone


def test_rank_thread_count_shares_the_cores(monkeypatch):
    from d2seg.data.worker_threads import rank_thread_count

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert rank_thread_count(1) == cores
    assert rank_thread_count(cores * 2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert rank_thread_count(8) == 3


# ---- speed options before DDP -------------------------------------------------------------------

SPEED = ["MODEL.SPEED.CHANNELS_LAST", "True", "MODEL.SPEED.FUSED_ATTENTION", "True",
         "MODEL.SEM_SEG_HEAD.NAME", "DAHead", "MODEL.DA_HEAD.PAM_CHANNELS", "4",
         # PAM's unscaled q k^T amplifies rounding (two summation orders) step by step: a
         # gentler step keeps it below the tolerance over 4 iterations
         "SOLVER.BASE_LR", "0.001"]


def _speed_worker(opts, out_file):
    import d2seg  # noqa: F401
    from d2seg.engine import Trainer, setup_cfg
    from d2seg.modeling.layers.self_attention import SelfAttentionBlock
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    cfg = setup_cfg(argparse.Namespace(config_file=os.path.join(REPO, "configs", "quickstart.yaml"),
                                       opts=opts), default_setup_fn=None)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    # applied when built, so before DDP (which the 2-process run has) registered the parameters
    state = {"ddp": model is not trainer.model,
             "channels_last": model.decode_head.pam_in_conv.weight.is_contiguous(
                 memory_format=torch.channels_last),
             "fused": all(m.fused_attention for m in model.modules()
                          if isinstance(m, SelfAttentionBlock))}
    trainer.resume_or_load(resume=False)
    trainer.train()
    if comm.is_main_process():
        losses = {i: v for v, i in trainer.storage.history("total_loss").values()}
        torch.save({"losses": losses, "model": model.state_dict(), **state}, out_file)


def test_speed_options_before_ddp_two_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", os.environ.get(
        "DETECTRON2_DATASETS", os.path.join(REPO, "datasets")))
    one, two = str(tmp_path / "one.pt"), str(tmp_path / "two.pt")
    opts = EQUIV + SPEED
    launch(_speed_worker, 1, args=(opts + ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM",
                                           "BN", "MODEL.AUX_HEAD.NORM", "BN",
                                           "OUTPUT_DIR", str(tmp_path / "o1")], one))
    launch(_speed_worker, 2, dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(
        opts + ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN",
                "MODEL.AUX_HEAD.NORM", "SyncBN", "OUTPUT_DIR", str(tmp_path / "o2")], two))
    a, b = torch.load(one, weights_only=False), torch.load(two, weights_only=False)
    assert b["ddp"] and not a["ddp"]
    assert a["channels_last"] and b["channels_last"] and a["fused"] and b["fused"]
    assert sorted(a["losses"]) == sorted(b["losses"]) == [0, 1, 2, 3]
    for i in a["losses"]:
        assert abs(a["losses"][i] - b["losses"][i]) < 1e-5, (i, a["losses"], b["losses"])
    assert_same_weights(a["model"], b["model"], atol=1e-5, rtol=1e-4)


def test_optimize_for_inference_refuses_the_ddp_wrapper():
    from d2seg.modeling.speed import optimize_for_inference

    ddp = torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel)
    with pytest.raises(TypeError, match="DDP"):
        optimize_for_inference(ddp)


# ---- fp16 attention -----------------------------------------------------------------------------

def _cam_fp16_naive(x):
    """DANet's CAM as it was: X Xᵀ in float16 over all H*W positions."""
    n, c = x.shape[:2]
    feats = x.half().view(n, c, -1)
    energy = torch.bmm(feats, feats.transpose(1, 2))
    attention = (energy.max(dim=-1, keepdim=True)[0] - energy).softmax(dim=-1)
    return torch.bmm(attention, feats)


def test_cam_under_fp16_autocast_is_finite():
    from d2seg.modeling.heads.da import CAM

    # DANet's input at 512 x 1024 (stride 8: 64 x 128 positions), ReLU features of scale ~3
    x = torch.randn(1, 8, 64, 128, generator=torch.Generator().manual_seed(0)).abs() * 3
    assert not torch.isfinite(_cam_fp16_naive(x)).all()  # what fp16 did before
    cam = CAM()
    cam.gamma.scale.data.fill_(1.0)
    with torch.no_grad():
        expected = cam(x)
        with torch.autocast("cpu", dtype=torch.float16):
            got = cam(x.half())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.01)


def test_danet_fp16_autocast_at_512x1024_gives_finite_logits():
    cfg = common.tiny_cfg(head="DAHead", width=8, aux=False,
                          opts=["MODEL.DA_HEAD.PAM_CHANNELS", 4, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
                                "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "float16"])
    model = build_model(cfg).eval()
    assert model.speed.amp_dtype == "float16"  # SOLVER.AMP also sets inference autocast
    # attention inputs of a trained net's scale (|x| up to ~30 here): CAM's X Xᵀ sums x² over
    # 64 x 128 positions to ~2e5, past float16's 65504 (at BN weight 1 it stays below)
    head = model.decode_head
    for conv in (head.pam_in_conv, head.cam_in_conv):
        conv.norm.weight.data.fill_(150.0)
    img = torch.randint(0, 256, (3, 512, 1024), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(0))
    # the GPU's float16 autocast, here on the CPU (where an fp16 config itself infers in fp32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        logits = model([{"image": img}])[0]["sem_seg"]
    assert logits.shape == (5, 512, 1024) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


# ---- CPU kernels' workspaces, AMP logging -------------------------------------------------------

def test_free_workspaces_frees_every_threads_buffers():
    from d2seg.cpu_kernels import free_workspaces
    from d2seg.cpu_kernels import winograd

    x, w = torch.randn(1, 8, 16, 16), torch.randn(8, 8, 3, 3)
    winograd.winograd_conv2d(x, w, None, 1, 4)
    t = threading.Thread(target=winograd.winograd_conv2d, args=(x, w, None, 1, 4))
    t.start()
    t.join()
    assert sum(len(s) for s in winograd._all_stores) > 0
    free_workspaces()
    assert all(len(s) == 0 for s in winograd._all_stores)
    y = winograd.winograd_conv2d(x, w, None, 1, 4)  # allocated again on use
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, padding=1), atol=1e-4, rtol=0)


def test_amp_trainer_logs_the_grad_scaler():
    from d2seg.engine import Trainer
    from d2seg.engine.amp import SegAMPTrainer

    cfg = common.tiny_cfg(opts=["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "float16"])
    model = build_model(cfg)
    batch = common.random_batch(2, 32, 32)
    trainer = SegAMPTrainer(model, iter(lambda: batch, None), Trainer.build_optimizer(cfg, model),
                            log_grad_scaler=True)
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.run_step()
        assert storage.history("[metric]grad_scaler").latest() == trainer.grad_scaler.get_scale()


@pytest.mark.parametrize("loss_scale", [0.0, 512.0])
def test_static_loss_scale_stays_and_skips_bad_steps(loss_scale):
    """SOLVER.AMP.LOSS_SCALE 512 is mmcv's Fp16OptimizerHook(loss_scale=512.) of mmseg's fp16
    configs: the scale stays 512 after good steps and after a step with inf gradients (which is
    skipped); 0 is torch's dynamic scaler, which halves on the bad step."""
    from d2seg.engine.amp import build_step_trainer

    cfg = common.tiny_cfg(opts=["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.DTYPE", "float16",
                                "SOLVER.AMP.LOSS_SCALE", loss_scale])
    model = build_model(cfg)
    batch = common.random_batch(2, 32, 32)
    trainer = build_step_trainer(cfg, model, iter(lambda: batch, None),
                                 torch.optim.SGD(model.parameters(), lr=0.01))
    start = trainer.grad_scaler.get_scale()
    assert start == (loss_scale or 2.0 ** 16)
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.run_step()
        assert trainer.grad_scaler.get_scale() == start
        before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        param = next(model.parameters())
        hook = param.register_hook(lambda g: torch.full_like(g, float("inf")))
        trainer.run_step()  # inf gradient: skipped
        hook.remove()
        weights = dict(model.named_parameters())
        assert all(torch.equal(weights[k], before[k]) for k in weights)
        assert trainer.grad_scaler.get_scale() == (loss_scale or start / 2)


def test_negative_loss_scale_is_refused():
    from d2seg.engine.amp import build_step_trainer

    cfg = common.tiny_cfg(opts=["SOLVER.AMP.ENABLED", True, "SOLVER.AMP.LOSS_SCALE", -1.0])
    model = build_model(cfg)
    with pytest.raises(ValueError, match="SOLVER.AMP.LOSS_SCALE=-1.0"):
        build_step_trainer(cfg, model, iter([]), torch.optim.SGD(model.parameters(), lr=0.01))
