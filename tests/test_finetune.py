"""Fine-tuning to another class count: MODEL.WEIGHTS of the same architecture with another number
of classes load everything but the classifiers, which keep the model's own initialisation, with a
warning; another architecture, and any --resume, stay strict."""
import logging
import os

import pytest
import torch

from detectron2.modeling import build_model

from common import REPO_CONFIGS, get_d2seg_cfg, tiny_cfg
from d2seg.checkpoint import SegCheckpointer
from d2seg.checkpoint.compat import CheckpointMismatchError
from d2seg.engine import Trainer
from test_checkpoint_formats import load_logged, random_buffers_, to_mmseg_keys
from test_hrnet_ocr import tiny_ocr_cfg
from test_train_e2e import TINY, read_metrics, run_train_net


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def classifier_keys(state):
    return [k for k in state if ".conv_seg." in k]


def saved_model(cfg, path):
    """A model of ``cfg`` with distinct values everywhere (BN statistics too), saved as a d2seg
    checkpoint at ``path``; returns its state dict."""
    model = build_model(cfg).eval()
    state = random_buffers_(model.state_dict())
    torch.save({"model": state, "iteration": 99}, path)
    return state


def assert_fine_tuned(model, before, source, log, ckpt_classes=19, model_classes=3):
    """Every tensor but the classifiers is the checkpoint's; the classifiers are ``before``'s
    (the model's init); the warning names each classifier and both class counts."""
    state = model.state_dict()
    heads = classifier_keys(state)
    assert heads and all(state[k].shape[0] == model_classes for k in heads)
    for k in heads:
        assert torch.equal(state[k], before[k]), k
    for k, v in state.items():
        if k not in heads and not k.endswith("num_batches_tracked"):
            assert torch.equal(v, source[k]), k
    for module in sorted({k.rpartition(".")[0] for k in heads}):
        assert (f"{module}: checkpoint has {ckpt_classes} classes, model has {model_classes}: "
                "re-initialised (fine-tuning)") in log


@pytest.mark.parametrize("make_cfg", [
    lambda n: tiny_cfg(num_classes=n),  # decode_head + auxiliary_heads.0
    tiny_ocr_cfg,  # decode_head (OCR) + cascade_head (FCN)
], ids=["fcn_aux", "ocr_cascade"])
def test_another_class_count_fine_tunes(tmp_path, make_cfg):
    source = saved_model(make_cfg(19), tmp_path / "m19.pth")
    model = build_model(make_cfg(3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt, log = load_logged(model, tmp_path / "m19.pth", fine_tune=True)
    assert_fine_tuned(model, before, source, log)
    heads = classifier_keys(before)
    assert len(heads) == 4  # two heads, weight + bias
    assert sorted(k for k, _, _ in ckpt.last_report.reinitialised) == sorted(heads)
    assert not ckpt.last_report.errors
    # the re-initialised classifier is the model's init: mmseg's normal_init(std=0.01), bias 0
    w = before[heads[0].replace(".bias", ".weight")]
    assert 0.005 < w.std().item() < 0.02
    assert all(not before[k].any() for k in heads if k.endswith(".bias"))
    # Detectron2's own "Skip loading parameter" / missing-keys warnings are not repeated
    assert "Skip loading" not in log and "not found in checkpoint" not in log


def test_mmseg_file_of_another_class_count_fine_tunes(tmp_path):
    source = saved_model(tiny_cfg(num_classes=19), tmp_path / "d2.pth")
    torch.save({"meta": {"mmseg_version": "0.30.0", "CLASSES": [f"c{i}" for i in range(19)]},
                "state_dict": to_mmseg_keys(source)}, tmp_path / "mmseg19.pth")
    model = build_model(tiny_cfg(num_classes=3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, log = load_logged(model, tmp_path / "mmseg19.pth", fine_tune=True)
    assert_fine_tuned(model, before, source, log)


def _segmenter(n):
    from test_segmenter_dpt import SEGMENTER, tiny_cfg as vit_cfg

    return vit_cfg(SEGMENTER, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", n])


def _knet(n):
    from test_knet import TINY as KNET, YAML as KNET_YAML

    return get_d2seg_cfg(KNET_YAML, [*KNET, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", n])


@pytest.mark.parametrize("make_cfg, sized", [
    # the mask transformer: one class token each (dim 1) and a LayerNorm over the classes
    (_segmenter, {"decode_head.cls_emb": 1, "decode_head.mask_norm.weight": 0,
                  "decode_head.mask_norm.bias": 0}),
    # K-Net: the generator's classifier (the initial kernels) and the FCN auxiliary head's;
    # the update heads learn per-kernel weights shared across the classes
    (_knet, {"decode_head.kernel_generate_head.conv_seg.weight": 0,
             "decode_head.kernel_generate_head.conv_seg.bias": 0}),
], ids=["segmenter", "knet"])
def test_heads_with_other_class_sized_tensors_fine_tune(tmp_path, make_cfg, sized):
    source = saved_model(make_cfg(19), tmp_path / "m19.pth")
    model = build_model(make_cfg(3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt, log = load_logged(model, tmp_path / "m19.pth", fine_tune=True)
    assert not ckpt.last_report.errors
    state = model.state_dict()
    reinit = {k: (c, m) for k, c, m in ckpt.last_report.reinitialised}
    for k, dim in sized.items():
        assert reinit[k] == (19, 3) and state[k].shape[dim] == 3, k
    assert set(reinit) - set(sized) <= {k for k in state if ".conv_seg." in k}  # aux classifiers
    for k, v in state.items():
        if k in reinit:
            assert torch.equal(v, before[k]), k  # the model's own init
        elif not k.endswith("num_batches_tracked"):
            assert torch.equal(v, source[k]), k
    assert "checkpoint has 19 classes, model has 3: re-initialised (fine-tuning)" in log
    # without fine-tuning the class count is still an error, naming the tensor
    with pytest.raises(CheckpointMismatchError, match=list(sized)[0].replace(".", r"\.")):
        SegCheckpointer(build_model(make_cfg(3))).load(str(tmp_path / "m19.pth"))


def test_without_fine_tune_another_class_count_still_raises(tmp_path):
    saved_model(tiny_cfg(num_classes=19), tmp_path / "m19.pth")
    model = build_model(tiny_cfg(num_classes=3)).eval()
    with pytest.raises(CheckpointMismatchError, match=r"decode_head\.conv_seg\.weight: \(19, "):
        SegCheckpointer(model).load(str(tmp_path / "m19.pth"))


@pytest.mark.parametrize("other", [
    dict(depth=34),  # another depth: backbone keys the model does not have
    dict(head="PSPHead"),  # another method
    dict(opts=["MODEL.SEM_SEG_HEAD.CONVS_DIM", 24]),  # classifier of other in-channels
], ids=["depth", "method", "head_width"])
def test_another_architecture_raises_even_when_fine_tuning(tmp_path, other):
    saved_model(tiny_cfg(num_classes=19, **other), tmp_path / "other.pth")
    model = build_model(tiny_cfg(num_classes=3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"other\.pth does not fit the model"):
        SegCheckpointer(model, fine_tune=True).load(str(tmp_path / "other.pth"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- through the Trainer and tools/train_net.py -------------------------------------------------
def quickstart_cfg(num_classes, opts=()):
    return get_d2seg_cfg(REPO_CONFIGS / "quickstart.yaml",
                         [*TINY, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes, *opts])


def test_trainer_weights_fine_tune_and_resume_stays_strict(tmp_path, caplog):
    source = saved_model(quickstart_cfg(19), tmp_path / "m19.pth")
    cfg = quickstart_cfg(8, ["MODEL.WEIGHTS", str(tmp_path / "m19.pth"),
                             "OUTPUT_DIR", str(tmp_path / "run")])
    trainer = Trainer(cfg)
    model = trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=False)
    assert_fine_tuned(model, before, source, caplog.text, model_classes=8)
    assert trainer.start_iter == 0  # initialisation, not a resume

    # --resume from a last_checkpoint of another class count: the wrong OUTPUT_DIR, an error
    run = tmp_path / "run"
    os.makedirs(run, exist_ok=True)
    saved_model(quickstart_cfg(19), run / "model_final.pth")
    (run / "last_checkpoint").write_text("model_final.pth")
    trainer = Trainer(cfg)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)conv_seg\.weight: \(19, .*resuming "
                       r"the last checkpoint of OUTPUT_DIR .*run"):
        trainer.resume_or_load(resume=True)
    # its MODEL.WEIGHTS still fine-tune when not resuming
    trainer.resume_or_load(resume=False)


def test_train_net_fine_tunes_from_another_class_count(tmp_path):
    saved_model(quickstart_cfg(19), tmp_path / "m19.pth")
    out = str(tmp_path / "run")
    proc = run_train_net(tmp_path, *TINY, "MODEL.WEIGHTS", str(tmp_path / "m19.pth"),
                         "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", out)
    log = proc.stdout + proc.stderr
    assert ("decode_head.conv_seg: checkpoint has 19 classes, model has 8: re-initialised "
            "(fine-tuning)") in log
    assert "auxiliary_heads.0.conv_seg: checkpoint has 19 classes, model has 8" in log
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    evals = [r for r in read_metrics(out) if "sem_seg/mIoU" in r]
    assert evals and "sem_seg/IoU-disc" in evals[-1]
