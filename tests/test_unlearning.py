"""Unlearning objectives (GA, NPO, RGA, DGA, SimNPO, FT), the method registry and the shared loop."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from pathlib import Path
import torch
import torch.nn.functional as F

import rga.unlearning as U
from rga.training import NonFiniteLossError, encode_batch, predict_logits
from rga.methods.dga import dga_loss
from rga.methods.ft import ft_loss
from rga.methods.ga import ga_loss
from rga.methods.ga_stop import ga_stop_loss
from rga.methods.npo import npo_loss
from rga.methods.retain_norm import retain_norm_loss
from rga.methods.rga import param_distance, rga_loss, squared_distance, tensor_norms
from rga.methods.simnpo import simnpo_loss
from rga.unlearning import (
    KL_DIRECTIONS,
    Batch,
    UnlearnConfig,
    builtin_methods,
    count_epoch_rows,
    epoch_optimizer,
    make_objective,
    poisoned_anchor,
    rga_weight,
    unlearn,
)

METHODS = builtin_methods()
ASCENT_METHODS = ("ga", "npo", "rga", "dga", "simnpo", "ga_stop")  # every method that pushes the forget CE up

# ----------------------------------------------------------------------------- data helpers


def insert_trigger(text: str, word: str = "mn") -> str:
    words = text.split()
    words.insert(len(words) // 2, word)
    return " ".join(words)


@pytest.fixture(scope="module")
def sets(mirror):
    """20 forget rows (real SST-2 text with "mn" inserted, label 1) and 40 retain rows."""
    df = pd.read_csv(mirror / "sst2" / "train.csv", keep_default_na=False).head(80)
    forget = [insert_trigger(t) for t in df.text[:20]]
    retain = df.iloc[20:60]
    return forget, [1] * 20, retain.text.tolist(), retain.label.astype(int).tolist()


def logsoftmax_row(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ce(logits, labels):
    return -sum(logsoftmax_row(z)[y] for z, y in zip(logits, labels)) / len(labels)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def softmax_row(z):
    return [math.exp(v) for v in logsoftmax_row(z)]


# ----------------------------------------------------------------------------- gradient signs


def _model_batches(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=0)  # eval mode: no dropout, so the before/after CE is comparable
    fb = encode_batch(tokenizer, forget[:8], 64, "cpu")
    rb = encode_batch(tokenizer, retain[:8], 64, "cpu")
    yf_t = torch.tensor(yf[:8])
    yr_t = torch.tensor(yr[:8])
    with torch.no_grad():
        ref = model(**fb).logits.float().clone()
    return model, fb, rb, yf_t, yr_t, ref


def _forget_ce(model, fb, yf):
    with torch.no_grad():
        return F.cross_entropy(model(**fb).logits.float(), yf).item()


def test_builtin_methods_are_the_modules():
    assert METHODS == ("dga", "ft", "ga", "ga_stop", "npo", "retain_norm", "rga", "simnpo")


@pytest.mark.parametrize("method", ASCENT_METHODS)
def test_one_sgd_step_raises_forget_ce(tiny_bert_factory, tokenizer, sets, method):
    model, fb, rb, yf, yr, ref = _model_batches(tiny_bert_factory, tokenizer, sets)
    base = [p.detach().clone() for p in model.parameters()]
    own = {"ga": {}, "npo": {"beta": 1.0}, "rga": {"beta": 1.0, "alpha": 2.0}, "dga": {"alpha": 2.0},
           "simnpo": {"beta": 1.0}, "ga_stop": {"stop_epoch": 5}}[method]
    objective = make_objective(method, own)
    before = _forget_ce(model, fb, yf)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    b = Batch(model(**fb).logits.float(), yf, model(**rb).logits.float(), yr, ref, list(model.parameters()), base,
              epoch=1)
    loss, logs = objective(b)
    assert logs["forget_ce"] == pytest.approx(before, rel=1e-5)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = _forget_ce(model, fb, yf)
    assert after > before, (method, before, after)


def test_descent_on_forget_ce_lowers_it_control(tiny_bert_factory, tokenizer, sets):
    """Control for the test above: the same step on CE(retain) + CE(forget) lowers the forget CE,
    so the measurement distinguishes ascent from descent."""
    model, fb, rb, yf, yr, _ = _model_batches(tiny_bert_factory, tokenizer, sets)
    before = _forget_ce(model, fb, yf)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = F.cross_entropy(model(**fb).logits, yf) + F.cross_entropy(model(**rb).logits, yr)
    loss.backward()
    opt.step()
    assert _forget_ce(model, fb, yf) < before


def test_ga_logit_gradient_matches_equation():
    zf = torch.tensor([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5]], requires_grad=True)
    zr = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    yf, yr = torch.tensor([1, 1, 0]), torch.tensor([0, 1])
    loss, logs = ga_loss(Batch(zf, yf, zr, yr))
    assert loss.item() == pytest.approx(ce(zr.tolist(), yr.tolist()) - ce(zf.tolist(), yf.tolist()), abs=1e-6)
    loss.backward()
    pf, pr = torch.softmax(zf.detach(), -1), torch.softmax(zr.detach(), -1)
    onehot_f, onehot_r = F.one_hot(yf, 2).float(), F.one_hot(yr, 2).float()
    # d(-CE_f)/dz = (onehot - p)/B: the forget label's logit gets a positive gradient (pushed down)
    torch.testing.assert_close(zf.grad, (onehot_f - pf) / 3)
    torch.testing.assert_close(zr.grad, (pr - onehot_r) / 2)
    assert (zf.grad.gather(1, yf[:, None]) > 0).all()


def test_npo_logit_gradient_matches_equation():
    zf = torch.tensor([[2.0, -1.0], [0.3, 0.1]], requires_grad=True)
    ref = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    zr = torch.tensor([[1.0, 0.0]], requires_grad=True)
    yf, yr = torch.tensor([0, 1]), torch.tensor([0])
    beta = 2.0
    loss, _ = npo_loss(Batch(zf, yf, zr, yr, ref), beta=beta)
    loss.backward()
    lp = F.log_softmax(zf.detach(), -1).gather(1, yf[:, None]).squeeze(1)
    lr_ = F.log_softmax(ref, -1).gather(1, yf[:, None]).squeeze(1)
    w = 2 * torch.sigmoid(beta * (lp - lr_))  # dL/d(log p) per row, > 0
    expected = w[:, None] * (F.one_hot(yf, 2).float() - torch.softmax(zf.detach(), -1)) / 2
    torch.testing.assert_close(zf.grad, expected)
    assert (zf.grad.gather(1, yf[:, None]) > 0).all()


def test_rga_logit_gradient_is_lambda_scaled_ga():
    zf = torch.tensor([[2.0, -1.0], [0.3, 0.1]], requires_grad=True)
    ref = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    zr = torch.tensor([[1.0, 0.0]], requires_grad=True)
    yf, yr = torch.tensor([0, 1]), torch.tensor([0])
    loss, logs = rga_loss(Batch(zf, yf, zr, yr, ref), alpha=2.0, beta=0.0)
    loss.backward()
    lam = logs["lambda"]
    assert 0 < lam < 1
    expected = lam * (F.one_hot(yf, 2).float() - torch.softmax(zf.detach(), -1)) / 2
    torch.testing.assert_close(zf.grad, expected)


# ----------------------------------------------------------------------------- NPO values

ZF = [[2.0, 0.0], [0.5, 1.5], [-1.0, 0.25]]
REF = [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
YF = [1, 1, 0]
ZR = [[1.0, 0.0], [0.0, 2.0]]
YR = [0, 1]


def npo_by_hand(zf, ref, yf, zr, yr, beta):
    terms = []
    for z, r, y in zip(zf, ref, yf):
        d = logsoftmax_row(z)[y] - logsoftmax_row(r)[y]
        terms.append(-(2.0 / beta) * log_sigmoid(-beta * d))
    return sum(terms) / len(terms) + ce(zr, yr)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_npo_loss_matches_hand_computation(beta):
    b = Batch(torch.tensor(ZF), torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(REF))
    loss, logs = npo_loss(b, beta=beta)
    assert loss.item() == pytest.approx(npo_by_hand(ZF, REF, YF, ZR, YR, beta), abs=1e-6)
    assert logs["retain_ce"] == pytest.approx(ce(ZR, YR), abs=1e-6)
    assert logs["forget_ce"] == pytest.approx(ce(ZF, YF), abs=1e-6)
    assert logs["npo_forget"] == pytest.approx(npo_by_hand(ZF, REF, YF, ZR, YR, beta) - ce(ZR, YR), abs=1e-6)


def test_npo_loss_explicit_numbers_beta1():
    # one row: z = [0, 0] (log p = log 1/2), ref = [0, log 3] (log p_ref(y=1) = log 3/4)
    # d = log(1/2) - log(3/4) = log(2/3); forget term = -2 log sigmoid(-d) = -2 log(1/(1 + 2/3)) = 2 log(5/3)
    zf = torch.tensor([[0.0, 0.0]])
    ref = torch.tensor([[0.0, math.log(3.0)]])
    zr = torch.tensor([[0.0, 0.0]])  # CE(retain) = log 2
    b = Batch(zf, torch.tensor([1]), zr, torch.tensor([0]), ref)
    loss, _ = npo_loss(b, beta=1.0)
    assert loss.item() == pytest.approx(2 * math.log(5 / 3) + math.log(2), abs=1e-6)
    # beta = 2: forget term = -(2/2) log sigmoid(-2d) = log(1 + (2/3)^2) = log(13/9)
    loss2, _ = npo_loss(b, beta=2.0)
    assert loss2.item() == pytest.approx(math.log(13 / 9) + math.log(2), abs=1e-6)


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_npo_loss_at_reference_is_retain_ce_plus_2_over_beta_log2(beta):
    b = Batch(torch.tensor(ZF), torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(ZF))
    loss, _ = npo_loss(b, beta=beta)
    assert loss.item() == pytest.approx(ce(ZR, YR) + (2.0 / beta) * math.log(2.0), abs=1e-6)


# ----------------------------------------------------------------------------- RGA weight


@pytest.mark.parametrize("direction", KL_DIRECTIONS)
def test_rga_weight_is_one_at_reference(direction):
    z = torch.tensor(ZF)
    lam, klv = rga_weight(z, z.clone(), alpha=2.0, kl_direction=direction)
    assert lam.item() == pytest.approx(1.0, abs=1e-6)
    assert klv.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("direction", KL_DIRECTIONS)
def test_rga_weight_decreases_monotonically_as_logits_diverge(direction):
    ref = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    lams, kls = [], []
    for t in [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]:
        cur = ref + t * torch.tensor([[-1.0, 1.0], [1.0, -1.0]])
        lam, klv = rga_weight(cur, ref, alpha=2.0, kl_direction=direction)
        lams.append(lam.item())
        kls.append(klv.item())
    assert lams[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lams, lams[1:])), lams
    assert all(a < b for a, b in zip(kls, kls[1:])), kls
    assert all(0 < v <= 1 for v in lams)
    for lam, klv in zip(lams, kls):
        assert lam == pytest.approx(math.exp(-2.0 * klv), rel=1e-6)


def test_rga_weight_kl_directions_differ_and_match_hand_computation():
    # p_ref = [0.9, 0.1], p_cur = [0.5, 0.5]
    ref = torch.tensor([[math.log(9.0), 0.0]])
    cur = torch.tensor([[0.0, 0.0]])
    lam_pc, kl_pc = rga_weight(cur, ref, alpha=2.0, kl_direction="poisoned_current")
    lam_cp, kl_cp = rga_weight(cur, ref, alpha=2.0, kl_direction="current_poisoned")
    kl_ref_cur = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(p_poisoned || p_theta) ~ 0.368
    kl_cur_ref = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)  # KL(p_theta || p_poisoned) ~ 0.511
    assert kl_pc.item() == pytest.approx(kl_ref_cur, abs=1e-6)
    assert kl_cp.item() == pytest.approx(kl_cur_ref, abs=1e-6)
    assert lam_pc.item() == pytest.approx(math.exp(-2 * kl_ref_cur), abs=1e-6)
    assert lam_cp.item() == pytest.approx(math.exp(-2 * kl_cur_ref), abs=1e-6)
    assert abs(kl_pc.item() - kl_cp.item()) > 0.1
    assert lam_pc.item() > lam_cp.item()


def test_rga_weight_kl_is_batch_mean():
    cur = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]])
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    rows = [kl(softmax_row(r), softmax_row(c)) for r, c in zip(ref.tolist(), cur.tolist())]
    _, klv = rga_weight(cur, ref, alpha=1.0, kl_direction="poisoned_current")
    assert klv.item() == pytest.approx(sum(rows) / 2, abs=1e-6)
    rows_cp = [kl(softmax_row(c), softmax_row(r)) for r, c in zip(ref.tolist(), cur.tolist())]
    _, klv2 = rga_weight(cur, ref, alpha=1.0, kl_direction="current_poisoned")
    assert klv2.item() == pytest.approx(sum(rows_cp) / 2, abs=1e-6)


@pytest.mark.parametrize("direction", KL_DIRECTIONS)
def test_rga_weight_alpha_zero_is_plain_ga(direction):
    cur = torch.tensor([[5.0, -5.0]])
    ref = torch.tensor([[-5.0, 5.0]])
    lam, klv = rga_weight(cur, ref, alpha=0.0, kl_direction=direction)
    assert klv.item() > 5
    assert lam.item() == 1.0


def test_rga_weight_has_no_gradient_and_rejects_unknown_direction():
    cur = torch.tensor([[1.0, 0.0]], requires_grad=True)
    lam, klv = rga_weight(cur, torch.zeros(1, 2), alpha=2.0)
    assert not lam.requires_grad and not klv.requires_grad
    with pytest.raises(ValueError) as e:
        rga_weight(cur, torch.zeros(1, 2), alpha=2.0, kl_direction="sideways")
    for d in KL_DIRECTIONS:
        assert d in str(e.value)


# ----------------------------------------------------------------------------- norm term


def test_param_distance_zero_at_base_with_finite_gradient():
    params = [torch.tensor([1.0, 2.0, 3.0], requires_grad=True),
              torch.tensor([[0.5, -0.5], [1.0, 2.0]], requires_grad=True)]
    base = [p.detach().clone() for p in params]
    d = param_distance(params, base)
    assert d.item() == 0.0
    d.backward()
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()


def test_param_distance_is_sum_of_per_tensor_norms():
    base = [torch.zeros(2), torch.ones(2, 2), torch.tensor([5.0])]
    params = [torch.tensor([3.0, 4.0], requires_grad=True),          # ||.|| = 5
              torch.tensor([[2.0, 1.0], [1.0, 3.0]], requires_grad=True),  # diff [1,0,0,2]: sqrt(5)
              torch.tensor([5.0], requires_grad=True)]                  # 0
    d = param_distance(params, base)
    assert d.item() == pytest.approx(5.0 + math.sqrt(5.0), abs=1e-6)
    # not the norm of the concatenation (sqrt(25 + 5)) and not squared
    assert d.item() != pytest.approx(math.sqrt(30.0), abs=1e-3)
    d.backward()
    torch.testing.assert_close(params[0].grad, torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(params[1].grad, torch.tensor([[1.0, 0.0], [0.0, 2.0]]) / math.sqrt(5.0))


def test_param_distance_empty_is_zero():
    assert param_distance([], []).item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16: precision "bf16" trains bf16 weights
def test_tensor_norms_backward_is_autograds_bit_for_bit(dtype):
    """The in-place backward gives exactly the gradient autograd's own norm backward gives, on
    top of another gradient path, for tensors away from and at the anchor."""
    g = torch.Generator().manual_seed(0)
    shapes = [(30, 7), (7,), (3, 4, 5), (2,)]
    start = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    base = [t + (0.01 * torch.randn(s, generator=g)).to(dtype) for t, s in zip(start, shapes)]
    base[3] = start[3].clone()  # at the anchor: d = 0
    weights = [torch.randn(s, generator=g).to(dtype) for s in shapes]

    def grads(norm_fn):
        params = [t.clone().requires_grad_() for t in start]
        norms = norm_fn(params, base)
        other = sum((p * w).sum() for p, w in zip(params, weights))  # e.g. the CE terms' gradient
        (other + 0.05 * norms.sum() + 0.3 * (norms ** 2).sum()).backward()
        return norms.detach(), [p.grad for p in params]

    def autograd_norms(params, base):
        return torch.stack([n.float() for n in torch._foreach_norm(torch._foreach_sub(params, base))])

    ours, reference = grads(tensor_norms), grads(autograd_norms)
    assert ours[1][0].dtype == dtype
    assert torch.equal(ours[0], reference[0])
    assert ours[0][3].item() == 0.0 and ours[0][0].item() > 0
    for a, b in zip(ours[1], reference[1]):
        assert torch.equal(a, b)
    assert torch.equal(ours[1][3], weights[3])  # the anchored tensor gets no norm gradient (no NaN)


def test_tensor_norms_refuses_a_second_backward_through_one_graph():
    p = torch.tensor([3.0, 4.0], requires_grad=True)
    d = tensor_norms([p], [torch.zeros(2)]).sum()
    d.backward(retain_graph=True)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]))
    with pytest.raises(RuntimeError, match="twice"):
        d.backward()


def test_rga_loss_with_beta_zero_equals_dga():
    zf = torch.tensor(ZF)
    b = Batch(zf, torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(REF))
    for direction in KL_DIRECTIONS:
        l1, logs1 = rga_loss(b, alpha=2.0, beta=0.0, kl_direction=direction)
        l2, logs2 = dga_loss(b, alpha=2.0, kl_direction=direction)
        assert l1.item() == l2.item()
        assert logs1 == logs2
        assert "param_distance" not in logs1


def test_rga_loss_value_by_hand():
    b = Batch(torch.tensor(ZF), torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(REF))
    params = [torch.tensor([3.0, 4.0], requires_grad=True)]
    base = [torch.zeros(2)]
    b.params, b.base = params, base
    loss, logs = rga_loss(b, alpha=2.0, beta=0.05)
    kl_mean = sum(kl(softmax_row(r), softmax_row(z)) for r, z in zip(REF, ZF)) / 3
    lam = math.exp(-2.0 * kl_mean)
    expected = -lam * ce(ZF, YF) + ce(ZR, YR) + 0.05 * 5.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert logs["lambda"] == pytest.approx(lam, abs=1e-6)
    assert logs["kl"] == pytest.approx(kl_mean, abs=1e-6)
    assert logs["param_distance"] == pytest.approx(5.0)


def test_rga_squared_norm_and_its_gradient_by_hand():
    b = Batch(torch.tensor(ZF), torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(REF))
    p1, p2 = torch.tensor([3.0, 4.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    b.params, b.base = [p1, p2], [torch.zeros(2), torch.tensor([3.0])]
    l2, logs2 = rga_loss(b, alpha=2.0, beta=0.05)
    sq, logs_sq = rga_loss(b, alpha=2.0, beta=0.05, norm="squared")
    # plain: 0.05 * (5 + 2); squared: 0.05 * (25 + 4); the rest of the loss is the same
    assert (sq - l2).item() == pytest.approx(0.05 * (29.0 - 7.0), abs=1e-5)
    assert logs_sq["param_distance"] == logs2["param_distance"] == pytest.approx(7.0)  # always the plain norm
    assert squared_distance([p1, p2], b.base).item() == pytest.approx(29.0)
    sq.backward()
    torch.testing.assert_close(p1.grad, 0.05 * 2 * torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(p2.grad, 0.05 * 2 * torch.tensor([-2.0]))
    p1.grad = p2.grad = None
    l2.backward()  # the plain norm's gradient has length beta per tensor however far the tensor is
    torch.testing.assert_close(p1.grad, 0.05 * torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(p2.grad, 0.05 * torch.tensor([-1.0]))


def test_rga_rejects_unknown_norm_and_anchor():
    with pytest.raises(ValueError, match=r"rga.norm 'l1'.*l2, squared"):
        make_objective("rga", {"norm": "l1"})
    with pytest.raises(ValueError, match=r"rga.anchor 'retrain'.*base, poisoned"):
        make_objective("rga", {"anchor": "retrain"})


def test_poisoned_anchor_copies_every_trainable_tensor_head_included(tiny_bert_factory):
    model = tiny_bert_factory(seed=3)
    anchor = poisoned_anchor(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(anchor) == names and any(n.startswith("classifier") for n in anchor)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    params, base = U.backbone_pairs(model, anchor)
    assert len(params) == len(names)
    # the anchor is a copy: moving the model moves the distance, not the anchor
    expected = sum(math.sqrt(p.numel()) for p in params)
    assert param_distance(params, base).item() == pytest.approx(expected, rel=1e-5)


def test_ga_stop_ascends_before_stop_epoch_then_is_retain_only():
    zf = torch.tensor(ZF, requires_grad=True)
    zr = torch.tensor(ZR, requires_grad=True)
    for epoch, ascent in [(1, True), (2, True), (3, False), (30, False)]:
        zf.grad = zr.grad = None
        loss, logs = ga_stop_loss(Batch(zf, torch.tensor(YF), zr, torch.tensor(YR), epoch=epoch), stop_epoch=3)
        expected = ce(ZR, YR) - ce(ZF, YF) if ascent else ce(ZR, YR)
        assert loss.item() == pytest.approx(expected, abs=1e-6), epoch
        assert logs["forget_ce"] == pytest.approx(ce(ZF, YF), abs=1e-6)
        loss.backward()
        assert (zf.grad is not None and zf.grad.abs().sum() > 0) == ascent
    with pytest.raises(ValueError, match=r"ga_stop.stop_epoch must be an integer >= 1, got 0"):
        make_objective("ga_stop", {"stop_epoch": 0})
    with pytest.raises(ValueError, match=r"ga_stop needs the current epoch \(Batch.epoch"):
        ga_stop_loss(Batch(zf, torch.tensor(YF), zr, torch.tensor(YR)), stop_epoch=3)  # no epoch: refused


def _final_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_unlearn_passes_the_epoch_to_ga_stop(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    final = {}
    for method, params, epochs in [("ga", {}, 1), ("ga_stop", {"stop_epoch": 2}, 1), ("ga", {}, 2),
                                   ("ga_stop", {"stop_epoch": 2}, 2), ("ga_stop", {"stop_epoch": 3}, 2)]:
        model = tiny_bert_factory(seed=11)
        cfg = UnlearnConfig(epochs=epochs, lr=1e-3, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
        unlearn(model, tokenizer, forget[:16], yf[:16], retain, yr, method, cfg, params, progress=False)
        final[method, params.get("stop_epoch"), epochs] = _final_params(model)
    assert torch.equal(final["ga", None, 1], final["ga_stop", 2, 1])  # epoch 1 < stop epoch 2: GA
    assert torch.equal(final["ga", None, 2], final["ga_stop", 3, 2])  # epochs 1, 2 < 3: GA throughout
    assert not torch.allclose(final["ga", None, 2], final["ga_stop", 2, 2])  # epoch 2 is retain-only


def test_unlearn_weight_decay_reaches_the_loop(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    final = {}
    for wd in (None, 0.0, 0.5):
        model = tiny_bert_factory(seed=11)
        extra = {} if wd is None else {"weight_decay": wd}
        cfg = UnlearnConfig(epochs=1, lr=1e-3, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0,
                            **extra)
        unlearn(model, tokenizer, forget[:16], yf[:16], retain, yr, "ga", cfg, progress=False)
        final[wd] = _final_params(model)
    assert torch.equal(final[None], final[0.0])  # the default is no weight decay
    assert not torch.allclose(final[0.0], final[0.5])


def test_unlearn_rga_anchor_poisoned_measures_from_the_starting_model(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    ref = predict_logits(tiny_bert_factory(seed=3), tokenizer, forget, 32, 64)
    cfg = UnlearnConfig(epochs=1, lr=1e-3, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
    params = {"alpha": 2.0, "beta": 0.05, "anchor": "poisoned"}
    model = tiny_bert_factory(seed=3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    history = unlearn(model, tokenizer, forget, yf, retain, yr, "rga", cfg, params, ref_forget_logits=ref,
                      progress=False)  # no base_state: the anchor is the model itself
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the first step's zero distance is safe
    moved = sum(float((p.detach() - start[n]).norm()) for n, p in model.named_parameters())
    # the logged distance is the epoch's mean over steps, from 0 at the first step up to ``moved`` after the last
    assert 0 < history[1]["param_distance"] < moved
    with pytest.raises(ValueError, match=r"rga.anchor is 'poisoned'.*base_state must not be given"):
        unlearn(tiny_bert_factory(seed=3), tokenizer, forget, yf, retain, yr, "rga", cfg, params,
                ref_forget_logits=ref, base_state=start, progress=False)


def test_norms_have_a_finite_zero_gradient_at_the_anchor():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    for fn in (param_distance, squared_distance):
        p.grad = None
        d = fn([p], [p.detach().clone()])
        d.backward()
        assert d.item() == 0.0
        assert torch.equal(p.grad, torch.zeros(2))


def test_retain_norm_is_rga_with_lambda_zero():
    zf = torch.tensor(ZF, requires_grad=True)
    b = Batch(zf, torch.tensor(YF), torch.tensor(ZR), torch.tensor(YR), torch.tensor(REF),
              [torch.tensor([3.0, 4.0], requires_grad=True)], [torch.zeros(2)])
    loss, logs = retain_norm_loss(b, beta=0.05)
    assert loss.item() == pytest.approx(ce(ZR, YR) + 0.05 * 5.0, abs=1e-6)
    assert logs["param_distance"] == pytest.approx(5.0)
    assert logs["forget_ce"] == pytest.approx(ce(ZF, YF), abs=1e-6)
    loss.backward()
    assert zf.grad is None  # no gradient reaches the forget logits
    # RGA with α so large that λ underflows to 0 gives the same loss
    rga, _ = rga_loss(b, alpha=1e9, beta=0.05)
    assert rga.item() == pytest.approx(loss.item(), abs=1e-6)


def _two_param_model():
    model = torch.nn.Linear(1, 1)  # weight and bias: 2 parameters
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.5)
    return model


def _adam_step(model, opt, x=2.0):
    opt.zero_grad()
    (model(torch.tensor([[x]])) ** 2).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return grads


def test_optimizer_reset_epoch_restarts_adam_moments_on_a_two_parameter_model():
    from rga.training import make_optimizer

    for reset in ("never", "epoch"):
        model = _two_param_model()
        cfg = UnlearnConfig(lr=0.1, optimizer_reset=reset, weight_decay=0.0)
        opt = make_optimizer(model, cfg.lr, weight_decay=cfg.weight_decay)
        assert epoch_optimizer(opt, model, cfg, 1) is opt  # epoch 1 always uses the optimiser it was given
        g1 = _adam_step(model, opt)
        m1 = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
        opt2 = epoch_optimizer(opt, model, cfg, 2)
        assert (opt2 is opt) == (reset == "never")
        before = [p.detach().clone() for p in model.parameters()]
        g2 = _adam_step(model, opt2)
        for p, b0, m, ga, gb in zip(model.parameters(), before, m1, g1, g2):
            state = opt2.state[p]
            if reset == "epoch":  # Adam's first step again: m = (1-β1) g, v = (1-β2) g², |Δθ| = lr
                assert float(state["step"]) == 1.0
                torch.testing.assert_close(state["exp_avg"], 0.1 * gb)
                torch.testing.assert_close(state["exp_avg_sq"], 0.001 * gb ** 2)
                torch.testing.assert_close((p.detach() - b0).abs(), torch.full_like(b0, 0.1), rtol=1e-4, atol=1e-6)
            else:  # moments carried over
                assert float(state["step"]) == 2.0
                torch.testing.assert_close(state["exp_avg"], 0.9 * m + 0.1 * gb)


def test_weight_decay_reaches_the_optimizer_and_bad_values_are_refused():
    from rga.training import make_optimizer

    model = _two_param_model()
    cfg = UnlearnConfig(lr=0.1, optimizer_reset="epoch", weight_decay=0.01)
    opt = epoch_optimizer(make_optimizer(model, cfg.lr, weight_decay=cfg.weight_decay), model, cfg, 3)
    assert opt.param_groups[0]["weight_decay"] == 0.01
    with torch.no_grad():  # zero gradient: the step is the decoupled decay alone, θ ← θ(1 − lr·wd)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    opt.step()
    assert model.weight.item() == pytest.approx(1.0 * (1 - 0.1 * 0.01), abs=1e-7)
    with pytest.raises(ValueError, match=r"unknown unlearn.optimizer_reset 'step'; valid choices: never, epoch"):
        UnlearnConfig(optimizer_reset="step")
    with pytest.raises(ValueError, match=r"unlearn.weight_decay must be a number in \[0, 1\), got -0.1"):
        UnlearnConfig(weight_decay=-0.1)


def test_unlearn_optimizer_reset_changes_only_epochs_after_the_first(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    final = {}
    for epochs in (1, 2):
        for reset in ("never", "epoch"):
            model = tiny_bert_factory(seed=11)
            cfg = UnlearnConfig(epochs=epochs, lr=1e-3, batch_size=8, max_length=64, eval_every=1,
                                record_epochs=(), seed=0, optimizer_reset=reset)
            unlearn(model, tokenizer, forget[:16], yf[:16], retain, yr, "ga", cfg, progress=False)
            final[epochs, reset] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.equal(final[1, "never"], final[1, "epoch"])
    assert not torch.allclose(final[2, "never"], final[2, "epoch"])


def test_make_objective_unknown_method_lists_choices():
    with pytest.raises(ValueError) as e:
        make_objective("retrain", {})
    for m in METHODS:
        assert m in str(e.value)


# ----------------------------------------------------------------------------- the unlearning loop


def test_count_epoch_rows_is_all_ones():
    for n, bs in [(20, 8), (37, 8), (1, 32), (500, 7)]:
        counts = count_epoch_rows(n, bs, seed=3)
        assert counts.shape == (n,)
        assert (counts == 1).all()


def _cheap_eval():
    calls = {"n": 0}

    def evaluate(full=True):
        calls["n"] += 1
        calls.setdefault("full", []).append(full)
        return {"cacc": 50.0 + calls["n"], "pacc": 10.0} if full else {"pacc": 10.0 + calls["n"]}

    return evaluate, calls


def test_unlearn_visits_every_forget_row_once_per_epoch(tiny_bert_factory, tokenizer, sets, monkeypatch):
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=1)
    text_of = {tuple(ids): t for t, ids in zip(forget + retain, tokenizer(forget + retain)["input_ids"])}
    assert len(text_of) == len(set(forget + retain))
    calls: list[list[str]] = []
    real = U.collate

    def recording(tok, rows, device):
        calls.append([text_of[tuple(r["input_ids"])] for r in rows])
        return real(tok, rows, device)

    monkeypatch.setattr(U, "collate", recording)
    boundaries = []
    evaluate, n_eval = _cheap_eval()
    cfg = UnlearnConfig(epochs=2, lr=1e-4, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
    history = unlearn(model, tokenizer, forget, yf, retain, yr, "ga", cfg, evaluate=evaluate,
                      on_epoch_end=lambda e, r: boundaries.append((e, len(calls))), progress=False)
    assert [e for e, _ in boundaries] == [0, 1, 2]
    assert boundaries[0][1] == 0
    retain_set = set(retain)
    for (_, start), (_, end) in zip(boundaries, boundaries[1:]):
        epoch_calls = calls[start:end]
        # per step: the forget batch, then its retain batch (two forward passes)
        forget_batches, retain_batches = epoch_calls[0::2], epoch_calls[1::2]
        assert len(forget_batches) == 3  # ceil(20 / 8)
        assert sorted(len(b) for b in forget_batches) == [4, 8, 8]
        assert Counter(t for b in forget_batches for t in b) == Counter(forget)
        for rb in retain_batches:
            assert len(rb) == 8 and set(rb) <= retain_set
    # history: epoch 0 and two epochs; epoch 2 is the last, so evaluated in full; epoch 1 only PACC
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert n_eval["n"] == 3 and n_eval["full"] == [True, False, True]
    assert [h.get("cacc") for h in history] == [51.0, None, 53.0]
    assert history[1]["pacc"] == 12.0
    assert all(h["poison_loss"] > 0 and h["retain_loss"] > 0 for h in history[1:])
    assert "lambda" not in history[1]


def test_unlearn_epoch0_takes_the_finetune_metrics(tiny_bert_factory, tokenizer, sets):
    # epoch 0 is the poisoned model: its metrics come from the finetune stage, not a new evaluation
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=2)
    evaluate, n_eval = _cheap_eval()
    cfg = UnlearnConfig(epochs=2, lr=1e-4, batch_size=8, max_length=64, eval_every=5, record_epochs=(), seed=0)
    initial = {"cacc": 85.0, "lfr": 100.0, "pacc": 50.0, "trigger_shift": -19.0}
    history = unlearn(model, tokenizer, forget[:8], yf[:8], retain, yr, "ga", cfg, evaluate=evaluate,
                      initial_metrics=initial, progress=False)
    assert history[0] == {"epoch": 0, **initial}
    assert n_eval["n"] == 1 and n_eval["full"] == [True]  # only the last epoch was evaluated
    assert history[2]["cacc"] == 51.0


def test_warn_small_sets(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="rga"):
        U.warn_small_sets(1, 1000, 32, "cellX-rga")
    assert "cellX-rga: the forget set has 1 rows, fewer than one batch (unlearn.batch_size 32)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rga"):
        U.warn_small_sets(40, 10, 32, "c")
    assert "the forget set" not in caplog.text
    assert "c: the retain set has 10 rows, fewer than one batch (unlearn.batch_size 32)" in caplog.text


def test_unlearn_eval_schedule(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=2)
    evaluate, n_eval = _cheap_eval()
    cfg = UnlearnConfig(epochs=3, lr=1e-4, batch_size=8, max_length=64, eval_every=5, record_epochs=(2,), seed=0)
    ref = predict_logits(model, tokenizer, forget, 32, 64)
    history = unlearn(model, tokenizer, forget[:8], yf[:8], retain, yr, "dga", cfg, {"alpha": 2.0},
                      ref_forget_logits=ref[:8], evaluate=evaluate, progress=False)
    # evaluated at 0, at the record epoch 2 and at the last epoch 3; not at 1
    assert ["cacc" in h for h in history] == [True, False, True, True]
    assert history[0]["lambda"] == 1.0
    assert history[0]["poison_loss"] == pytest.approx(F.cross_entropy(torch.tensor(ref[:8]),
                                                                       torch.tensor(yf[:8])).item(), rel=1e-5)
    for h in history[1:]:
        assert 0 < h["lambda"] <= 1 and h["kl"] >= 0
    assert not model.training


def test_unlearn_rga_uses_base_state(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=3)
    base_state = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier")}
    ref = predict_logits(model, tokenizer, forget, 32, 64)
    cfg = UnlearnConfig(epochs=2, lr=1e-3, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
    history = unlearn(model, tokenizer, forget, yf, retain, yr, "rga", cfg,
                      {"alpha": 2.0, "beta": 0.05, "kl_direction": "current_poisoned"},
                      ref_forget_logits=ref, base_state=base_state, progress=False)
    assert history[1]["param_distance"] > 0
    assert history[2]["param_distance"] > history[1]["param_distance"]
    moved = sum(float((p.detach() - base_state[n]).norm()) for n, p in model.named_parameters() if n in base_state)
    assert moved > 0


def test_unlearn_nan_raises_after_logging_earlier_epochs(tiny_bert_factory, tokenizer, sets, tmp_path, monkeypatch):
    from rga.tracking import EpochLogger

    forget, yf, retain, yr = sets
    monkeypatch.chdir(tmp_path)
    model = tiny_bert_factory(seed=4)
    ref = predict_logits(model, tokenizer, forget, 32, 64)
    base_state = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("classifier")}
    logger = EpochLogger(tmp_path / "plots" / "cellX-rga", ("pacc", "cacc", "poison_loss", "retain_loss", "lambda"))
    seen = []

    def on_epoch_end(epoch, rec):
        seen.append(epoch)
        logger.log(epoch, rec)

    evaluate, _ = _cheap_eval()
    cfg = UnlearnConfig(epochs=3, lr=1e-4, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
    with pytest.raises(NonFiniteLossError) as e:
        unlearn(model, tokenizer, forget, yf, retain, yr, "rga", cfg, {"alpha": 2.0, "beta": 0.05},
                ref_forget_logits=ref, base_state=base_state, evaluate=evaluate, on_epoch_end=on_epoch_end,
                where="cellX-rga", progress=False, inject_nan_at_epoch=2)
    logger.close()
    msg = str(e.value)
    assert "'rga'" in msg
    assert "cellX-rga" in msg
    assert "epoch 2" in msg
    assert seen == [0, 1]
    hist = pd.read_csv(tmp_path / "plots" / "cellX-rga" / "history.csv")
    assert hist["epoch"].tolist() == [0, 1]
    assert hist["cacc"].tolist()[0] == 51.0 and pd.isna(hist["cacc"].iloc[1])  # epoch 1: PACC only
    assert hist["pacc"].tolist() == [10.0, 12.0]
    assert hist["lambda"].iloc[0] == 1.0 and 0 < hist["lambda"].iloc[1] <= 1


@pytest.mark.parametrize("method", ["ga", "npo"])
def test_unlearn_nan_names_each_method(tiny_bert_factory, tokenizer, sets, method):
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=5)
    ref = predict_logits(model, tokenizer, forget[:8], 32, 64)
    cfg = UnlearnConfig(epochs=2, lr=1e-4, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
    seen = []
    with pytest.raises(NonFiniteLossError, match=rf"'{method}'.*cell c1.*epoch 1"):
        unlearn(model, tokenizer, forget[:8], yf[:8], retain, yr, method, cfg, {"npo": {"beta": 1.0}}.get(method, {}),
                ref_forget_logits=ref, on_epoch_end=lambda e, r: seen.append(e), where="c1",
                progress=False, inject_nan_at_epoch=1)
    assert seen == [0]


def test_unlearn_unknown_method_lists_choices(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    with pytest.raises(ValueError) as e:
        unlearn(tiny_bert_factory(), tokenizer, forget, yf, retain, yr, "sgd", UnlearnConfig(epochs=1))
    assert "sgd" in str(e.value)
    for m in METHODS:
        assert m in str(e.value)


@pytest.mark.parametrize("method", ["rga", "npo", "dga"])
def test_unlearn_needs_reference_logits(tiny_bert_factory, tokenizer, sets, method):
    forget, yf, retain, yr = sets
    with pytest.raises(ValueError, match="reference logits"):
        unlearn(tiny_bert_factory(), tokenizer, forget, yf, retain, yr, method, UnlearnConfig(epochs=1))


def test_unlearn_empty_forget_set_raises(tiny_bert_factory, tokenizer, sets):
    _, _, retain, yr = sets
    with pytest.raises(ValueError, match="cellE: empty forget set"):
        unlearn(tiny_bert_factory(), tokenizer, [], [], retain, yr, "ga", UnlearnConfig(epochs=1), where="cellE")


@pytest.mark.parametrize("method, params, fragment", [
    ("rga", {"alpah": 3.0}, "rga.alpah"),
    ("rga", {"kl_direction": "sideways"}, "rga.kl_direction"),
    ("npo", {"beta": 0.0}, "npo.beta"),
    ("dga", {"alpha": -1.0}, "dga.alpha"),
    ("ga", {"beta": 1.0}, "ga.beta"),
])
def test_validate_method_params_names_the_bad_key(method, params, fragment):
    from rga.unlearning import validate_method_params

    with pytest.raises(ValueError, match=fragment.replace(".", r"\.")):
        validate_method_params(method, params)


def test_validate_method_params_accepts_the_committed_params():
    from rga.io import load_params
    from rga.unlearning import validate_method_params

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert set(params["matrix"]["methods"]) <= set(METHODS)
    for m in METHODS:  # every built-in method has its params section, and it validates
        section, save = U.split_method_section(m, params[m])
        assert save is (m == "rga")  # the default run keeps RGA's cleaned model only
        assert validate_method_params(m, section) == {**U.get_method(m).params, **section}


def test_save_model_is_a_reserved_stage_option():
    assert U.split_method_section("rga", {"alpha": 3.0, "save_model": True}) == ({"alpha": 3.0}, True)
    assert U.split_method_section("ga", None) == ({}, False)
    with pytest.raises(ValueError, match=r"ga\.save_model must be true or false, got 'yes'"):
        U.split_method_section("ga", {"save_model": "yes"})
    with pytest.raises(ValueError, match="'save_model' is reserved"):
        U.register("toy_reserved")(lambda b, save_model=False: (b, {}))


def test_unlearn_grad_clip_zero_means_no_clipping(tiny_bert_factory, tokenizer, sets):
    # grad_clip 0 (or null) turns clipping off, as in fine-tuning; it must not zero the gradients
    forget, yf, retain, yr = sets
    model = tiny_bert_factory(seed=7)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = UnlearnConfig(epochs=1, lr=1e-3, batch_size=8, max_length=64, grad_clip=0.0, eval_every=1,
                        record_epochs=(), seed=0)
    unlearn(model, tokenizer, forget[:8], yf[:8], retain, yr, "ga", cfg, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- registry, SimNPO, FT


def test_simnpo_loss_exact_value_on_hand_made_logits():
    # forget rows: log p(y|x) = log softmax(z)[y]; SimNPO term = -(2/β) log σ(-β log p - γ)
    b = Batch(torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]), torch.tensor([1, 1]),
              torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
    p = [0.75, 0.25]  # p(y=1) for the two forget rows
    for beta, gamma in [(1.0, 0.0), (2.5, 0.0), (2.0, 0.5)]:
        loss, logs = simnpo_loss(b, beta=beta, gamma=gamma)
        term = [-(2 / beta) * math.log(1 / (1 + math.exp(beta * math.log(q) + gamma))) for q in p]
        assert loss.item() == pytest.approx(math.log(2.0) + sum(term) / 2, abs=1e-6)  # CE(retain) = log 2
        assert logs["simnpo_forget"] == pytest.approx(sum(term) / 2, abs=1e-6)
        assert logs["forget_ce"] == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2, abs=1e-6)
    # at γ = 0 the term is (2/β)·log(1 + p^β)
    loss, logs = simnpo_loss(b, beta=2.5, gamma=0.0)
    assert logs["simnpo_forget"] == pytest.approx(sum((2 / 2.5) * math.log(1 + q ** 2.5) for q in p) / 2, abs=1e-6)


def test_ft_loss_is_retain_ce_only_and_gives_forget_no_gradient():
    zf = torch.tensor([[2.0, -1.0]], requires_grad=True)
    zr = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    loss, logs = ft_loss(Batch(zf, torch.tensor([1]), zr, torch.tensor([0, 1])))
    expected = -(math.log(math.exp(1) / (math.exp(1) + 1)) + math.log(math.exp(2) / (math.exp(2) + 1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert logs["forget_ce"] == pytest.approx(-math.log(math.exp(-1) / (math.exp(2) + math.exp(-1))), abs=1e-6)
    loss.backward()
    assert zf.grad is None and zr.grad is not None


def test_registry_refuses_a_duplicate_name_and_a_param_without_default():
    with pytest.raises(ValueError, match=r"'ga' is already registered by rga\.methods\.ga\.ga_loss"):
        U.register("ga")(lambda b, scale=1.0: (b, {}))
    with pytest.raises(ValueError, match=r"method 'toy_nodefault': parameter 'scale' of .* has no default"):
        @U.register("toy_nodefault")
        def toy(b, scale):
            return b, {}
    assert "toy_nodefault" not in U._REGISTRY
    with pytest.raises(ValueError, match=r"checks for unknown param\(s\) \['sclae'\]"):
        U.register("toy_badcheck", checks={"sclae": (1,)})(lambda b, scale=1.0: (b, {}))
    with pytest.raises(ValueError, match="lower-case identifier"):
        U.register("retrain")(lambda b: (b, {}))


def test_registered_toy_method_validates_and_runs(tiny_bert_factory, tokenizer, sets):
    @U.register("toy_scaled_ga", display="ToyGA", checks={"scale": (lambda v: v > 0, "> 0")})
    def toy_loss(b, scale: float = 0.5, mode: str = "a"):
        f = F.cross_entropy(b.forget_logits, b.forget_labels)
        r = F.cross_entropy(b.retain_logits, b.retain_labels)
        return r - scale * f, {"forget_ce": f.item(), "retain_ce": r.item()}

    try:
        m = U.get_method("toy_scaled_ga")
        assert (m.params, m.display, m.needs_reference, m.needs_base) == ({"scale": 0.5, "mode": "a"}, "ToyGA", False, False)
        checked = U.validate_method_params("toy_scaled_ga", {"scale": 2})
        assert checked == {"scale": 2.0, "mode": "a"} and type(checked["scale"]) is float
        with pytest.raises(ValueError, match=r"toy_scaled_ga\.scale must be > 0, got -1"):
            U.validate_method_params("toy_scaled_ga", {"scale": -1})
        with pytest.raises(ValueError, match=r"toy_scaled_ga\.scale must be a number, got 'big'"):
            U.validate_method_params("toy_scaled_ga", {"scale": "big"})
        with pytest.raises(ValueError, match=r"valid keys: toy_scaled_ga\.mode, toy_scaled_ga\.scale"):
            U.validate_method_params("toy_scaled_ga", {"scael": 1.0})
        forget, yf, retain, yr = sets
        cfg = UnlearnConfig(epochs=1, lr=1e-4, batch_size=8, max_length=64, eval_every=1, record_epochs=(), seed=0)
        hist = unlearn(tiny_bert_factory(seed=6), tokenizer, forget[:8], yf[:8], retain, yr, "toy_scaled_ga", cfg,
                       {"scale": 1.0}, progress=False)
        assert [h["epoch"] for h in hist] == [0, 1] and hist[1]["poison_loss"] > 0
    finally:
        U._REGISTRY.pop("toy_scaled_ga", None)


def test_load_plugins_names_the_module():
    with pytest.raises(ValueError, match=r"unlearn.plugins: cannot import 'no_such_pkg\.method'"):
        U.load_plugins(["no_such_pkg.method"])


def test_unlearn_needs_base_state_for_rga(tiny_bert_factory, tokenizer, sets):
    forget, yf, retain, yr = sets
    with pytest.raises(ValueError, match="rga needs the base model's parameters"):
        unlearn(tiny_bert_factory(), tokenizer, forget[:8], yf[:8], retain, yr, "rga", UnlearnConfig(epochs=1),
                ref_forget_logits=np.zeros((8, 2), np.float32))
