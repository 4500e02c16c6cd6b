"""PSANet (PSAHead, PSAMask) and CCNet (CCHead, CrissCrossAttention, Scale)."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model

from common import random_batch, tiny_cfg
from d2seg.modeling.heads import CCHead, PSAHead
from d2seg.modeling.layers.criss_cross import CrissCrossAttention
from d2seg.modeling.layers.psa_mask import PSAMask, psa_mask
from d2seg.modeling.layers.scale import Scale
from psamask_reference import naive_psa_mask


# ---- PSAMask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mask_size", [(5, 5), (4, 6), (3, 8), (9, 13), (1, 1)])
@pytest.mark.parametrize("psa_type", ["collect", "distribute"])
def test_psa_mask_matches_naive_loop(mask_size, psa_type):
    x = torch.randn(2, mask_size[0] * mask_size[1], 5, 7, requires_grad=True)
    expected = naive_psa_mask(x, psa_type, mask_size)
    got = PSAMask(psa_type, mask_size)(x)
    assert got.shape == (2, 35, 5, 7)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # gradients (mmcv's backward kernel is the transposed placement)
    g = torch.randn_like(got)
    (grad_ref,) = torch.autograd.grad(expected, x, g)
    (grad,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)


def test_psa_mask_collect_is_transposed_distribute():
    x = torch.randn(1, 25, 6, 4)
    col = psa_mask(x, "collect", (5, 5)).reshape(1, 24, 24)
    dis = psa_mask(x, "distribute", (5, 5)).reshape(1, 24, 24)
    torch.testing.assert_close(col, dis.transpose(1, 2))
    with pytest.raises(ValueError, match="channels"):
        psa_mask(x, "collect", (4, 5))


# ---- PSAHead ---------------------------------------------------------------------------------
def _psa_head(**kw):
    kw.setdefault("mask_size", (7, 7))
    return PSAHead({"res5": ShapeSpec(channels=24, stride=8)}, in_features=["res5"],
                   num_classes=5, channels=16, norm="BN", **kw).eval()


@pytest.mark.parametrize("psa_type", ["bi-direction", "collect", "distribute"])
@pytest.mark.parametrize("size", [(8, 12), (9, 11)])
def test_psa_head_shapes(psa_type, size):
    head = _psa_head(psa_type=psa_type)
    logits, losses = head({"res5": torch.randn(2, 24, *size)})
    assert logits.shape == (2, 5, *size) and losses == {} and head.common_stride == 8
    assert hasattr(head, "reduce_p") == (psa_type == "bi-direction")
    assert hasattr(head, "attention_p") == (psa_type == "bi-direction")


@pytest.mark.parametrize("psa_type", ["bi-direction", "collect", "distribute"])
def test_psa_head_compact(psa_type):
    # compact: the attention conv predicts the whole (h*w) x h x w map directly
    head = _psa_head(psa_type=psa_type, compact=True, mask_size=(4, 6))
    assert head({"res5": torch.randn(1, 24, 8, 12)})[0].shape == (1, 5, 8, 12)


def test_psa_proj_has_padding_1():
    head = _psa_head()
    assert head.proj.kernel_size == (1, 1) and head.proj.padding == (1, 1)
    assert head.proj.in_channels == 32 and head.proj.out_channels == 24
    assert head.bottleneck.in_channels == 48 and head.bottleneck.kernel_size == (3, 3)
    assert head.attention[1].bias is None and head.attention[1].out_channels == 49
    out = head.proj(torch.randn(1, 32, 4, 6))
    assert out.shape[-2:] == (6, 8)  # +1 px on each side; resized back in layers()


def test_psa_align_corners_depends_on_odd_even_size(monkeypatch):
    head = _psa_head()
    assert head.shrunk_size(9, 11) == (5, 6, True)  # both odd: corners aligned
    assert head.shrunk_size(8, 12) == (4, 6, False)
    assert head.shrunk_size(9, 12) == (4, 6, False)  # only one odd: floor, not aligned
    assert _psa_head(shrink_factor=1, align_corners=True).shrunk_size(9, 12) == (9, 12, True)
    # every resize of the forward (shrink x2 and the final one) uses that align_corners
    import d2seg.modeling.heads.psa as psa_module

    calls = []

    def spy(x, size, align_corners):
        calls.append(align_corners)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)

    monkeypatch.setattr(psa_module, "resize", spy)
    for size, expected in [((9, 11), True), ((8, 12), False)]:
        calls.clear()
        head({"res5": torch.randn(1, 24, *size)})
        assert calls == [expected] * 3


def test_psa_normalization_factor():
    head = _psa_head(psa_type="collect", psa_softmax=False)
    ref = _psa_head(psa_type="collect", psa_softmax=False, normalization_factor=4.0)
    ref.load_state_dict(head.state_dict())
    feat = torch.randn(1, 16, 4, 6)
    torch.testing.assert_close(
        ref._attend(feat, ref.attention, ref.psamask, True) * 4.0,
        head._attend(feat, head.attention, head.psamask, True))
    assert _psa_head(normalization_factor=None).normalization_factor == 49


# ---- CrissCrossAttention ---------------------------------------------------------------------
def _naive_cca(cca, x):
    """Per pixel: softmax over its column (without itself) and its row (with itself)."""
    q, k, v = cca.query_conv(x), cca.key_conv(x), cca.value_conv(x)
    out = torch.zeros_like(x)
    _, _, h, w = x.shape
    for i in range(h):
        for j in range(w):
            rows = [r for r in range(h) if r != i]
            keys = torch.cat([k[:, :, rows, j], k[:, :, i, :]], dim=2)  # b, c', (h-1)+w
            vals = torch.cat([v[:, :, rows, j], v[:, :, i, :]], dim=2)
            attn = torch.softmax(torch.einsum("bc,bcn->bn", q[:, :, i, j], keys), dim=1)
            out[:, :, i, j] = torch.einsum("bn,bcn->bc", attn, vals)
    return cca.gamma.scale * out + x


def test_criss_cross_attention_matches_naive_loop():
    cca = CrissCrossAttention(16)
    assert isinstance(cca.gamma, Scale) and cca.gamma.scale.item() == 0
    assert cca.query_conv.out_channels == 2 and cca.value_conv.out_channels == 16
    x = torch.randn(2, 16, 5, 7)
    torch.testing.assert_close(cca(x), x)  # Scale(0): identity at init
    with torch.no_grad():
        cca.gamma.scale.fill_(0.7)
        torch.testing.assert_close(cca(x), _naive_cca(cca, x), rtol=1e-5, atol=1e-5)


def test_scale():
    s = Scale(2.5)
    assert s.scale.shape == () and s.scale.requires_grad
    torch.testing.assert_close(s(torch.ones(3)), torch.full((3,), 2.5))


# ---- CCHead ----------------------------------------------------------------------------------
def test_cc_head_shapes_and_zero_gamma_after_build():
    assert SEM_SEG_HEADS_REGISTRY.get("CCHead") is CCHead
    assert SEM_SEG_HEADS_REGISTRY.get("PSAHead") is PSAHead
    model = build_model(tiny_cfg(head="CCHead", opts=["MODEL.SEM_SEG_HEAD.NUM_CONVS", 1]))
    head = model.decode_head
    assert len(head.convs) == 2 and head.recurrence == 2 and head.concat_input
    assert head.cca.gamma.scale.item() == 0.0  # Scale(0) after build
    logits, _ = head({"res5": torch.randn(2, head.in_channels, 9, 11)})
    assert logits.shape == (2, 5, 9, 11)


def test_ccnet_reuses_one_module_across_recurrence():
    head = CCHead({"res5": ShapeSpec(channels=24, stride=8)}, in_features=["res5"], num_classes=3,
                  channels=16, norm="BN", recurrence=3).eval()
    assert [n for n, _ in head.named_children()].count("cca") == 1
    assert sum(isinstance(m, CrissCrossAttention) for m in head.modules()) == 1
    assert sorted(k for k in head.state_dict() if "cca" in k) == sorted(
        f"cca.{n}" for n in ["query_conv.weight", "query_conv.bias", "key_conv.weight",
                             "key_conv.bias", "value_conv.weight", "value_conv.bias",
                             "gamma.scale"])
    calls = []
    head.cca.register_forward_hook(lambda *a: calls.append(1))
    head({"res5": torch.randn(1, 24, 6, 6)})
    assert len(calls) == 3


# ---- training step ---------------------------------------------------------------------------
@pytest.mark.parametrize("head,opts", [
    ("PSAHead", ["MODEL.PSA_HEAD.MASK_SIZE", [9, 9]]),
    ("PSAHead", ["MODEL.PSA_HEAD.MASK_SIZE", [9, 9], "MODEL.PSA_HEAD.PSA_TYPE", "collect"]),
    ("CCHead", []),
])
def test_gradients_reach_every_parameter(head, opts):
    # mmseg's zero_init_residual gates each residual branch at init (no gradient in step 1)
    opts = opts + ["MODEL.RESNETS.ZERO_INIT_RESIDUAL", False]
    model = build_model(tiny_cfg(head=head, opts=opts)).train()
    for m in model.modules():  # Scale(0) gates the attention branch at init
        if isinstance(m, Scale):
            torch.nn.init.constant_(m.scale, 0.5)
    losses = model(random_batch(h=64, w=64))
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, no_grad
