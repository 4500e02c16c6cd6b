"""MMSegmentation 0.30 as a peer, for the parity tests, dev/benchmark_vs_mmseg.py and
dev/generate_configs.py (test- and benchmark-only: d2seg itself never imports mmseg).

Builds mmseg's reference models from its own configs with random weights and BN statistics, and
writes checkpoints in mmseg's 0.x/1.x formats. Callers check that mmseg is installed first.
"""
import os
import sys
import types

import torch


def stub_mmcv_ext():
    """The pure-Python mmcv 1.7.2 has no compiled ``mmcv._ext``, which ``mmcv.ops`` (and so
    ``import mmseg.models``) loads; none of the compared models calls into it (PSAMask aside, see
    :func:`build_mmcv_psamask`), so a stub module whose ops raise when called is enough."""
    if "mmcv._ext" not in sys.modules:
        mod = types.ModuleType("mmcv._ext")

        def __getattr__(name):
            if name.startswith("__"):
                raise AttributeError(name)

            def missing(*a, **k):
                raise RuntimeError(f"mmcv._ext.{name} is a stub (no compiled mmcv ops)")
            return missing

        mod.__getattr__ = __getattr__
        sys.modules["mmcv._ext"] = mod
    return sys.modules["mmcv._ext"]


def mmseg_config_root() -> str:
    """The folder of the configs MMSegmentation ships (``mmseg/.mim/configs``)."""
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    if spec is None:
        raise ImportError("MMSegmentation 0.30 is not installed (pip install "
                          "mmsegmentation==0.30.0 mmcv==1.7.2, or tools/install_test_deps.sh)")
    return os.path.join(os.path.dirname(spec.origin), ".mim", "configs")


def build_mmcv_psamask(ext_mod) -> bool:
    """Compiles mmcv's own CPU PSAMask kernel (mmcv/ops/csrc, shipped as source by the pure-Python
    mmcv) into the ``mmcv._ext`` stub, so mmseg's PSANet runs; False without a compiler."""
    try:
        import mmcv
        from torch.utils.cpp_extension import load
    except ImportError:
        return False
    csrc = os.path.join(os.path.dirname(mmcv.__file__), "ops", "csrc")
    build = os.path.join(os.path.expanduser("~"), ".cache", "d2seg", "mmcv_psamask")
    os.makedirs(build, exist_ok=True)
    bind = os.path.join(build, "bind.cpp")
    cpu_src = os.path.join(build, "psamask_cpu.cpp")  # distinct name: ninja needs unique objects
    sig = ("(Tensor{o} a, Tensor b, const int t, const int n, const int hf, const int wf, "
           "const int hm, const int wm, const int hh, const int hw)")
    # mmcv calls them with keyword arguments
    args = ", ".join(f'py::arg("{a}")' for a in (
        "psa_type", "num_", "h_feature", "w_feature", "h_mask", "w_mask", "half_h_mask",
        "half_w_mask"))
    with open(bind, "w") as f:
        f.write("#include <torch/extension.h>\nusing at::Tensor;\n"
                f"void psamask_forward{sig.format(o=' const')};\n"
                f"void psamask_backward{sig.format(o='')};\n"
                "PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {\n"
                '  m.def("psamask_forward", &psamask_forward, "", py::arg("input"), '
                f'py::arg("output"), {args});\n'
                '  m.def("psamask_backward", &psamask_backward, "", py::arg("grad_output"), '
                f'py::arg("grad_input"), {args});\n}}\n')
    with open(os.path.join(csrc, "pytorch", "cpu", "psamask.cpp")) as f_in, \
            open(cpu_src, "w") as f_out:
        f_out.write(f_in.read())
    try:
        ext = load("mmcv_psamask_cpu", [bind, os.path.join(csrc, "pytorch", "psamask.cpp"),
                                        cpu_src],
                   extra_include_paths=[os.path.join(csrc, "common")],
                   extra_cflags=["-O3", "-DMMCV_WITH_CPU"], build_directory=build,
                   verbose=False)
    except Exception as e:  # no compiler, ...
        print(f"could not build mmcv's PSAMask kernel: {e}", file=sys.stderr)
        return False
    ext_mod.psamask_forward = ext.psamask_forward
    ext_mod.psamask_backward = ext.psamask_backward
    return True


def mmseg_config(name: str):
    """mmseg's Config for a config stem such as 'pspnet/pspnet_r50-d8_512x1024_80k_cityscapes'."""
    stub_mmcv_ext()
    from mmcv import Config

    return Config.fromfile(os.path.join(mmseg_config_root(), name + ".py"))


def syncbn_to_bn(obj):
    if isinstance(obj, dict):
        if obj.get("type") == "SyncBN":
            obj["type"] = "BN"
        for v in obj.values():
            syncbn_to_bn(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            syncbn_to_bn(v)


def build_mmseg_model(cfg):
    """An mmseg segmentor in eval mode with every parameter and BN statistic randomised, so that
    no branch is hidden behind a constant (zero-init convs, Scale(0), BN 1/0)."""
    stub_mmcv_ext()
    from mmseg.models import build_segmentor

    cfg.model.pretrained = None
    cfg.model.backbone.pop("init_cfg", None)
    syncbn_to_bn(cfg.model)
    model = build_segmentor(cfg.model, test_cfg=cfg.get("test_cfg"))
    randomize_(model)
    return model.eval()


@torch.no_grad()
def randomize_(model, seed=0):
    """Random weights of order 1/sqrt(fan_in) and BN statistics that keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        else:
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.75 if name.endswith("weight")
                    else torch.randn(p.shape, generator=g) * 0.1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=g) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)


@torch.no_grad()
def calibrate_bn_(model, img):
    """Sets every BN's running statistics to those of one training-mode forward of ``img`` (the
    affine stays random): with random statistics HRNet's fused sums and deep ResNets grow logits
    to ~1e3; calibrated, the reference logits are of order 1, so a 1e-4 tolerance means something."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    model.encode_decode(img, [{}])
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def calibration_images(n=4, size=(64, 96), seed=0):
    """``n`` random RGB images (uniform 0-255, like the parity tests' inputs) normalised with
    mmseg's Cityscapes mean/std: BN statistics calibrated on the distribution the test images
    come from keep the reference logits O(1) (calibrated on N(0, 1) noise instead, a uniform
    test image gives logits ~100)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    return (torch.rand(n, 3, *size, generator=g) * 255 - mean) / std


def save_mmseg_checkpoint(model, path, version="0.x"):
    """Writes ``model`` as MMSegmentation publishes it: 0.x ``{"meta", "state_dict"}`` (mmcv's
    save_checkpoint), or 1.x as mmengine's runner does (``meta.dataset_meta``, message_hub,
    optimizer and param_schedulers entries, data_preprocessor buffers)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head = model.decode_head
    head = head[-1] if isinstance(head, torch.nn.ModuleList) else head  # cascade: last stage
    classes = [f"c{i}" for i in range(head.num_classes)]
    if version == "0.x":
        data = {"meta": {"mmseg_version": "0.30.0", "mmcv_version": "1.7.2", "CLASSES": classes,
                         "PALETTE": [[0, 0, 0]] * len(classes), "config": "# test"},
                "state_dict": sd}
    else:
        # mmseg 1.x's SegDataPreProcessor keeps mean/std non-persistent; custom pre-processors
        # (or older mmengine) may save them: the converter must drop them
        sd["data_preprocessor.mean"] = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
        sd["data_preprocessor.std"] = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
        data = {"meta": {"mmengine_version": "0.10.3", "dataset_meta": {"classes": classes},
                         "epoch": 0, "iter": 40000},
                "state_dict": sd, "message_hub": {"log_scalars": {}},
                "optimizer": {"state": {}, "param_groups": []}, "param_schedulers": []}
    torch.save(data, path)


def mmseg_tool(path: str):
    """One of the scripts MMSegmentation ships under ``.mim/tools`` (e.g.
    ``model_converters/swin2mmseg.py``) as a module, for its conversion functions."""
    import importlib.util

    stub_mmcv_ext()
    tool = os.path.join(os.path.dirname(mmseg_config_root()), "tools", path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                  tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_gradients(ref_grads, grads, rel=1e-4, theory_zero=(), zero_rel=1e-6):
    """Every gradient (d2seg names on both sides) within ``rel`` of the reference tensor's
    largest entry; none vanishing unless listed in ``theory_zero`` (then both sides are rounding
    noise: below ``zero_rel`` of the largest gradient of the model)."""
    assert set(grads) == set(ref_grads), sorted(set(grads) ^ set(ref_grads))
    largest = max(r.abs().max() for r in ref_grads.values())
    for k, r in ref_grads.items():
        if k in theory_zero:
            assert max(r.abs().max(), grads[k].abs().max()) <= zero_rel * largest, k
            continue
        scale = r.abs().max()
        assert scale > 1e-6 * largest, f"{k}: a vanishing gradient not listed in theory_zero"
        assert (grads[k] - r).abs().max() <= rel * scale, k


def training_losses(ref, model, img, label):
    """mmseg's ``forward_train`` losses and d2seg's ``compute_losses`` on the same batch (N x H x W
    labels), both in training mode (BN batch statistics) with dropout off."""
    ref.train()
    model.train()
    for m in list(ref.modules()) + list(model.modules()):
        if isinstance(m, torch.nn.Dropout2d):
            m.eval()
    expected = ref.forward_train(img, [{}] * len(img), label[:, None])
    return expected, model.compute_losses(model.extract_feat(img), label)  # (through the neck)


def load_via_checkpointer(ref, model, path):
    """``model`` (d2seg) loaded by SegCheckpointer from ``ref`` saved at ``path`` as an mmseg 0.x
    checkpoint (detection, conversion, strict check): every tensor of the model comes from the
    file. Returns the model in eval mode."""
    from d2seg.checkpoint import SegCheckpointer

    save_mmseg_checkpoint(ref, path)
    ckpt = SegCheckpointer(model)
    ckpt.load(str(path))
    report = ckpt.last_report
    assert not report.errors and not report.backbone_only and not report.aux_missing
    assert set(report.loaded) == set(model.state_dict())
    return model.eval()


def assert_close_to_scale(got, expected, rel=1e-4, what="logits"):
    """Same shape, and within ``rel`` of max(1, the reference's largest magnitude). With
    ``D2SEG_PARITY_REPORT=<file>`` each comparison appends a line to that file (test, what,
    dtype, shape, max |difference|, scale): the figures behind docs/model_zoo.md's parity column."""
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    report = os.environ.get("D2SEG_PARITY_REPORT")
    if report:
        test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(report, "a") as f:
            f.write(f"{test}\t{what}\t{str(got.dtype).replace('torch.', '')}\t"
                    f"{'x'.join(map(str, got.shape))}\t{diff:.2e}\t{scale:.3g}\n")
    assert diff <= rel * max(1.0, scale), f"{what}: max |d| {diff:.3g} at scale {scale:.3g}"


def logits_in(ref, model, size, dtype):
    """Both models cast to ``dtype``, run on the seeded calibration image of ``size``:
    (image, mmseg's logits, d2seg's logits)."""
    ref.to(dtype)
    model.to(dtype)
    img = calibration_images(1, size, seed=1).to(dtype)
    with torch.no_grad():
        return img, ref.encode_decode(img, [{}]), model.encode_decode(img)
