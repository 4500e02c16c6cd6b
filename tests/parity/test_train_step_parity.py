"""One training step, d2seg vs MMSegmentation 0.30, for each of the 13 methods.

Both models come from the same (randomised) mmseg weights. Each library runs its own step on the
same batch of 2 crops (bit-equal normalised inputs), with BN in training mode and dropout off:
mmseg's ``train_step`` + mmcv's ``OptimizerHook``, with mmcv's ``build_optimizer`` and poly
``LrUpdaterHook``; d2seg's step trainer (``SimpleTrainer.run_step``) with
``Trainer.build_optimizer`` / ``Trainer.build_lr_scheduler``, both at iteration ``ITER`` of a
``MAX_ITER`` poly schedule. Compared: the loss, every parameter's gradient (within ``TOL`` of the
tensor's own max |gradient|) and every parameter after the step (within ``TOL`` of its update).
Gradients that are zero in theory (``THEORY_ZERO``) are left out, once checked to be zero up to
float rounding on both sides.

Models are narrowed (ResNet-18-D8 of base width 16, a 1-module HRNetV2 of widths 8-64, heads of
32 channels, 64x64 crops) to keep the file fast; full-width and float64 figures are in
docs/parity.md.
"""
import types
import warnings

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from common import REPO_CONFIGS, get_d2seg_cfg
from d2seg.checkpoint import convert_mmseg_state_dict
from d2seg.engine import Trainer
from d2seg.engine.amp import build_step_trainer
from test_checkpoint_parity import BN, METHODS  # method -> (mmseg config, d2seg model yaml)

mmseg_peer = pytest.importorskip("mmseg_peer")
pytest.importorskip("mmseg")

# Gradients that vanish in theory: a bias added to every key of a softmax over the keys shifts a
# row of logits equally, which the softmax ignores; a bias added to every value (or to the
# attention output) is a per-channel constant that the next conv + training-mode BN removes.
THEORY_ZERO = {
    "NonLocal": ["decode_head.nl_block.phi.bias", "decode_head.nl_block.g.bias"],
    "GCNet": ["decode_head.gc_block.conv_mask.bias"],
    "DANet": ["decode_head.pam.key_project.bias"],
    "ANN": [f"decode_head.{m}.stages.0.{p}.bias" for m in ("fusion", "context")
            for p in ("value_project", "out_project")],
}

TOL = {}  # method -> tolerance relative to each tensor's scale (default DEFAULT_TOL)
DEFAULT_TOL = 1e-5
ITER, MAX_ITER = 37, 100  # the step is taken at ITER of a MAX_ITER poly schedule
CROP = (64, 64)


WIDTHS = (16, 32, 64, 128)  # ResNet-18 (V1c, D8) with base width 16: res2..res5 channels
D2SEG_NARROW = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32, "MODEL.AUX_HEAD.CONVS_DIM", 16,
    "MODEL.ANN_HEAD.PROJECT_CHANNELS", 16, "MODEL.DA_HEAD.PAM_CHANNELS", 8,
    "MODEL.OCR_HEAD.OCR_CHANNELS", 16,
]
D2SEG_NARROW_RESNET = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", WIDTHS[0],
    "MODEL.RESNETS.RES2_OUT_CHANNELS", WIDTHS[0], "MODEL.RESNETS.WIDTH_PER_GROUP", WIDTHS[0],
]

# HRNetV2: stage 1 of width 16, these branch widths, one module of one block per stage
HR_WIDTHS = (8, 16, 32, 64)
D2SEG_NARROW_HRNET = ["MODEL.HRNET.STAGE1_CHANNELS", 16, "MODEL.HRNET.BRANCH_CHANNELS", HR_WIDTHS,
                      "MODEL.HRNET.NUM_MODULES", [1, 1, 1, 1],
                      "MODEL.HRNET.NUM_BLOCKS", [1, 1, 1, 1], "MODEL.CASCADE_HEAD.CONVS_DIM", 32]


def _narrow_mmseg(model_cfg, is_resnet):
    """mmseg's side of D2SEG_NARROW(_RESNET/_HRNET): R-18 of base width 16 or a narrower
    HRNet, heads of 32 (aux: 16)."""
    if is_resnet:
        model_cfg.backbone.update(depth=18, stem_channels=WIDTHS[0], base_channels=WIDTHS[0])
    else:
        extra = model_cfg.backbone.extra
        extra.stage1.update(num_channels=(16,), num_blocks=(1,))
        for i in (2, 3, 4):
            extra[f"stage{i}"].update(num_channels=HR_WIDTHS[:i], num_modules=1,
                                      num_blocks=(1,) * i)
    heads = model_cfg.decode_head if isinstance(model_cfg.decode_head, list) else [
        model_cfg.decode_head]
    for head in heads:
        head.channels = 32
        if not is_resnet:
            head.in_channels = list(HR_WIDTHS)
        for key, value in (("project_channels", 16), ("pam_channels", 8),
                           ("ocr_channels", 16)):
            if key in head:
                head[key] = value
        if is_resnet:
            idx = head.in_index
            head.in_channels = ([WIDTHS[j] for j in idx] if isinstance(idx, (list, tuple))
                                else WIDTHS[idx])
            if "c1_in_channels" in head:
                head.c1_in_channels = WIDTHS[0]
    if model_cfg.get("auxiliary_head"):
        aux = model_cfg.auxiliary_head
        aux.update(in_channels=WIDTHS[aux.in_index], channels=16)


def _scale_gammas(ref, method):
    """Scale(0)-initialised gammas at O(1), so the attention branches weigh fully."""
    head = ref.decode_head
    if method == "CCNet":
        head.cca.gamma.scale.fill_(1.0)
    elif method == "DANet":
        head.pam.gamma.scale.fill_(0.8)
        head.cam.gamma.scale.fill_(1.2)


def _no_dropout(model):
    # p = 0 rather than eval(): Detectron2's SimpleTrainer calls model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0


def _batch(num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        label = torch.randint(0, num_classes, CROP, generator=g)
        label[torch.rand(CROP, generator=g) < 0.1] = 255
        img = torch.randint(0, 256, (3, *CROP), generator=g, dtype=torch.uint8)  # as the mapper
        out.append({"image": img, "sem_seg": label, "height": CROP[0], "width": CROP[1]})
    return out


def _mmseg_step(ref, cfg, imgs, labels):
    """mmseg's step as mmcv's IterBasedRunner takes it (lr hook, train_step, OptimizerHook)."""
    from mmcv.runner import LogBuffer, build_optimizer
    from mmcv.runner.hooks import HOOKS, OptimizerHook
    from mmcv.utils import build_from_cfg

    optimizer = build_optimizer(ref, cfg.optimizer)
    lr_cfg = dict(cfg.lr_config)
    lr_cfg["type"] = lr_cfg.pop("policy").title() + "LrUpdaterHook"
    lr_hook = build_from_cfg(lr_cfg, HOOKS)
    runner = types.SimpleNamespace(optimizer=optimizer, model=ref, iter=ITER, max_iters=MAX_ITER,
                                   epoch=0, log_buffer=LogBuffer())  # (grad_clip logs its norm)
    lr_hook.before_run(runner)
    lr_hook.before_train_iter(runner)
    meta = dict(img_shape=(*CROP, 3), ori_shape=(*CROP, 3), pad_shape=(*CROP, 3), flip=False)
    runner.outputs = ref.train_step(
        dict(img=imgs, img_metas=[meta] * len(imgs), gt_semantic_seg=labels[:, None]), optimizer)
    OptimizerHook(**cfg.optimizer_config).after_train_iter(runner)
    return runner.outputs["loss"].detach(), optimizer.param_groups[0]["lr"]


def _d2seg_step(model, cfg, batch):
    optimizer = Trainer.build_optimizer(cfg, model)
    scheduler = Trainer.build_lr_scheduler(cfg, optimizer)
    with warnings.catch_warnings():  # lr_scheduler.step() before optimizer.step()
        warnings.simplefilter("ignore")
        for _ in range(ITER):
            scheduler.step()
    trainer = build_step_trainer(cfg, model, [batch], optimizer)  # what Trainer.run_step runs
    trainer.iter = ITER
    losses = []  # the loss dict run_step logs: summed, it is the loss it back-propagated
    trainer._write_metrics = lambda loss_dict, *a, **k: losses.append(sum(loss_dict.values()))
    with EventStorage(ITER):
        trainer.run_step()
    return losses[0].detach(), optimizer.param_groups[0]["lr"]


def _close(got, ref, tol):
    scale = ref.abs().max()
    return (got - ref).abs().max() <= tol * scale, (got - ref).abs().max() / scale


def run_pair(method, dtype=torch.float32, narrow=True, names=None):
    """Both libraries' step on ``method`` (or ``names`` = (mmseg config, d2seg yaml)), narrowed
    or at full width; returns the losses, lrs, gradients and updates of both sides."""
    mmseg_name, yaml = names or METHODS[method]
    cascade = yaml.startswith("ocrnet")
    is_resnet = "hr" not in yaml
    cfg_ref = mmseg_peer.mmseg_config(mmseg_name)
    if narrow:
        _narrow_mmseg(cfg_ref.model, is_resnet)
    ref = mmseg_peer.build_mmseg_model(cfg_ref)
    with torch.no_grad():
        _scale_gammas(ref, method)
    norm = [x for key in BN for x in (key, "BN")]
    if narrow:
        norm += D2SEG_NARROW + (D2SEG_NARROW_RESNET if is_resnet else D2SEG_NARROW_HRNET)
    cfg = get_d2seg_cfg(REPO_CONFIGS / f"_base_/models/{yaml}.yaml",
                        norm + ["SOLVER.MAX_ITER", MAX_ITER, "INPUT.CROP.SIZE", CROP])
    model = build_model(cfg)
    sd = convert_mmseg_state_dict(ref.state_dict(), is_cascade=cascade, is_resnet=is_resnet)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ref.to(dtype).train()
    model.to(dtype).train()
    _no_dropout(ref)
    _no_dropout(model)

    batch = _batch(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    with torch.no_grad():  # d2seg's normalisation, so both see bit-equal inputs
        imgs = torch.stack([model.normalize(x["image"]) for x in batch]).to(dtype)
    labels = torch.stack([x["sem_seg"] for x in batch])

    ref_before = {k: p.detach().clone() for k, p in ref.named_parameters()}
    ref_loss, ref_lr = _mmseg_step(ref, cfg_ref, imgs, labels)
    loss, lr = _d2seg_step(model, cfg, batch)

    def conv(d):
        return convert_mmseg_state_dict(d, is_cascade=cascade, is_resnet=is_resnet)

    ref_grads = conv({k: p.grad for k, p in ref.named_parameters()})
    ref_params = conv({k: p.detach() for k, p in ref.named_parameters()})
    ref_updates = conv({k: p.detach() - ref_before[k] for k, p in ref.named_parameters()})
    grads = {k: p.grad for k, p in model.named_parameters()}
    params = {k: p.detach() for k, p in model.named_parameters()}
    assert set(grads) == set(ref_grads)
    return dict(loss=(loss, ref_loss), lr=(lr, ref_lr), grads=(grads, ref_grads),
                params=(params, ref_params), ref_updates=ref_updates)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_step_matches_mmseg(method, monkeypatch):
    if method == "PSANet":  # mmcv's compiled PSAMask is absent: its per-pixel loop instead
        from mmseg.models.decode_heads import psa_head
        from psamask_reference import NaivePSAMask

        monkeypatch.setattr(psa_head, "PSAMask", NaivePSAMask)
    tol = TOL.get(method, DEFAULT_TOL)
    r = run_pair(method)
    loss, ref_loss = r["loss"]
    assert abs(loss - ref_loss) <= tol * abs(ref_loss), (loss, ref_loss)
    assert r["lr"][0] == pytest.approx(r["lr"][1], rel=1e-12)
    grads, ref_grads = r["grads"]
    params, ref_params = r["params"]
    zero = THEORY_ZERO.get(method, [])
    assert set(zero) <= set(grads), set(zero) - set(grads)
    grad_scale = max(g.abs().max() for g in ref_grads.values())
    eps = torch.finfo(torch.float32).eps
    bad = []
    for k in sorted(grads):
        if k in zero:  # zero up to float rounding, on both sides
            assert ref_grads[k].abs().max() < 1e-6 * grad_scale, k
            assert grads[k].abs().max() < 1e-6 * grad_scale, k
            continue
        assert ref_grads[k].abs().max() > 0, f"{k}: zero gradient in mmseg"
        err = (grads[k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max()
        # after the step: within TOL of the update, plus 2 ulps of the parameter itself
        p_err = (params[k] - ref_params[k]).abs().max()
        p_tol = tol * r["ref_updates"][k].abs().max() + 2 * eps * ref_params[k].abs().max()
        if err > tol or p_err > p_tol:
            bad.append(f"{k}: gradient {err:.1e} of its scale, parameter {p_err:.1e} > {p_tol:.1e}")
    assert not bad, "\n".join(bad)
