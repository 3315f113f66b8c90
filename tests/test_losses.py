"""Tests for selfsup.losses: article numbers, closed forms and naive reference loops."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.methods import losses as L

f64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=f64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def cos(u, v):
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


# ------------------------------------------------------------------------ InfoNCE
def test_info_nce_article_example_1():
    anchor = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.9, 0.1]])
    easy = torch.tensor([[-0.8, 0.6]])
    hard = torch.tensor([[0.7, 0.3]])
    # article: 0.0273 (easy negative) and 0.622 (hard negative); the exact value of the
    # latter is 0.62120, the article rounds intermediate similarities, hence 1e-3.
    assert L.info_nce(anchor, positive, easy, temperature=0.5).item() == pytest.approx(0.0273, abs=5e-4)
    assert L.info_nce(anchor, positive, hard, temperature=0.5).item() == pytest.approx(0.622, abs=1e-3)


def test_info_nce_matches_naive_and_per_anchor_negatives():
    n, k, d, t = 4, 6, 5, 0.3
    a, p, neg = randn(n, d, seed=1), randn(n, d, seed=2), randn(k, d, seed=3)
    expected = 0.0
    for i in range(n):
        num = math.exp(cos(a[i], p[i]) / t)
        den = num + sum(math.exp(cos(a[i], neg[j]) / t) for j in range(k))
        expected += -math.log(num / den)
    expected /= n
    assert L.info_nce(a, p, neg, t).item() == pytest.approx(expected, rel=1e-10)
    # (N, K, D) per-anchor negatives that are all the same set give the same loss
    per_anchor = neg.unsqueeze(0).expand(n, k, d)
    assert L.info_nce(a, p, per_anchor, t).item() == pytest.approx(expected, rel=1e-10)


# ------------------------------------------------------------------------- NT-Xent
def naive_nt_xent(z1, z2, t):
    """Plain transcription of SimCLR eq. (1), mean over the 2N anchors."""
    views = list(z1) + list(z2)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        num = math.exp(cos(views[i], views[j]) / t)
        den = sum(math.exp(cos(views[i], views[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    return total / (2 * n)


@pytest.mark.parametrize("n", [1, 4])
def test_nt_xent_identical_embeddings_is_log_2n_minus_1(n):
    z = torch.ones(n, 8, dtype=f64)
    assert L.nt_xent(z, z.clone(), 0.5).item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


@pytest.mark.parametrize("n,d,t", list(itertools.product([2, 5, 16], [3, 32], [0.1, 0.5, 1.0])))
def test_nt_xent_matches_naive(n, d, t):
    z1, z2 = randn(n, d, seed=n * 100 + d), randn(n, d, seed=n * 100 + d + 1)
    assert L.nt_xent(z1, z2, t).item() == pytest.approx(naive_nt_xent(z1, z2, t), rel=1e-10)


def test_nt_xent_symmetric_in_views():
    z1, z2 = randn(6, 10, seed=4), randn(6, 10, seed=5)
    assert L.nt_xent(z1, z2, 0.2).item() == pytest.approx(L.nt_xent(z2, z1, 0.2).item(), rel=1e-12)


def test_nt_xent_gather_two_processes_equals_single_process():
    n, d, t = 4, 7, 0.5
    z1 = randn(2 * n, d, seed=6).requires_grad_()
    z2 = randn(2 * n, d, seed=7).requires_grad_()
    full = L.nt_xent(z1, z2, t)

    def make_gather(rank):
        # which full tensor a local slice belongs to is found by its values
        def gather(local):
            src = z1 if torch.equal(local, z1[rank * n:(rank + 1) * n]) else z2
            parts = [src[r * n:(r + 1) * n].detach() for r in range(2)]
            parts[rank] = local  # keeps the gradient of the local slice
            return torch.cat(parts), rank * n
        return gather

    local_losses = [
        L.nt_xent(z1[r * n:(r + 1) * n], z2[r * n:(r + 1) * n], t, gather=make_gather(r)) for r in range(2)
    ]
    assert (sum(local_losses) / 2).item() == pytest.approx(full.item(), rel=1e-12)
    # the local loss backpropagates into the local slice only
    local_losses[0].backward()
    assert z1.grad[:n].abs().sum() > 0 and z1.grad[n:].abs().sum() == 0


def test_nt_xent_gradcheck():
    z1 = randn(3, 4, seed=8).requires_grad_()
    z2 = randn(3, 4, seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: L.nt_xent(a, b, 0.5), (z1, z2))


def test_nt_xent_runs_in_float32_under_autocast():
    z1, z2 = randn(8, 16, seed=10, dtype=torch.float32), randn(8, 16, seed=11, dtype=torch.float32)
    ref = L.nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = L.nt_xent(z1, z2, 0.1)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    # bfloat16 inputs are upcast, not computed in bfloat16
    out16 = L.nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert out16.dtype == torch.float32
    assert out16.item() == pytest.approx(L.nt_xent(z1.bfloat16().float(), z2.bfloat16().float(), 0.1).item(), rel=1e-6)


# --------------------------------------------------------------------------- MoCo
@pytest.mark.parametrize("k,t", [(4, 0.2), (16, 0.07), (5, 1.0)])
def test_moco_closed_form(k, t):
    d = k + 1
    eye = torch.eye(d, dtype=f64)
    q = eye[:1] * 3.0  # un-normalised on purpose, the loss normalises q and k
    queue = eye[1:]  # K unit keys orthogonal to q
    expected = math.log(1 + k * math.exp(-1 / t))
    assert L.moco_loss(q, q.clone(), queue, t).item() == pytest.approx(expected, rel=1e-12)


def test_moco_matches_naive_and_keys_get_no_gradient():
    n, k, d, t = 5, 9, 6, 0.2
    q = randn(n, d, seed=12).requires_grad_()
    key = randn(n, d, seed=13).requires_grad_()
    queue = F.normalize(randn(k, d, seed=14), dim=1)
    expected = 0.0
    for i in range(n):
        qi, ki = q[i].detach(), key[i].detach()
        logits = [cos(qi, ki) / t] + [cos(qi, queue[j]) / t for j in range(k)]
        expected += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    loss = L.moco_loss(q, key, queue, t)
    assert loss.item() == pytest.approx(expected / n, rel=1e-10)
    loss.backward()
    assert q.grad is not None and key.grad is None


# --------------------------------------------------------------------------- BYOL
def test_byol_identical_is_zero_and_opposite_is_eight():
    p1, p2 = randn(4, 8, seed=15), randn(4, 8, seed=16)
    assert L.byol_loss(p1, p1, p1, p1).item() == pytest.approx(0.0, abs=1e-12)
    # p_i regresses z of the OTHER view: z2 ~ p1, z1 ~ p2 (scale does not matter)
    assert L.byol_loss(p1, p2, p2 * 0.5, p1 * 2.0).item() == pytest.approx(0.0, abs=1e-12)
    assert L.byol_loss(p1, p2, -p2, -p1).item() == pytest.approx(8.0, abs=1e-12)
    # and it really pairs p1 with z2: same-view pairing of opposite vectors is not 8
    assert L.byol_loss(p1, p2, -p1, -p2).item() < 8.0 - 1e-3


def test_byol_range_and_stop_gradient():
    for seed in range(5):
        p1, p2 = randn(16, 4, seed=seed), randn(16, 4, seed=seed + 50)
        z1, z2 = randn(16, 4, seed=seed + 100), randn(16, 4, seed=seed + 150)
        assert 0.0 <= L.byol_loss(p1, p2, z1, z2).item() <= 8.0
    p1, p2 = randn(3, 4, seed=20).requires_grad_(), randn(3, 4, seed=21).requires_grad_()
    z1, z2 = randn(3, 4, seed=22).requires_grad_(), randn(3, 4, seed=23).requires_grad_()
    L.byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p2.grad is not None


def test_regression_loss_per_sample():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=f64)
    z = torch.tensor([[0.0, 5.0], [-2.0, 0.0]], dtype=f64)
    assert torch.allclose(L.regression_loss(p, z), torch.tensor([2.0, 4.0], dtype=f64))


# --------------------------------------------------------------------------- DINO
def test_koleo_matches_naive_loop_and_penalises_close_pairs():
    z = randn(7, 5, seed=3)
    x = [v / v.norm() for v in z]
    naive = -sum(math.log(min((x[i] - x[j]).norm().item() for j in range(7) if j != i) + 1e-8)
                 for i in range(7)) / 7
    assert L.koleo_loss(z).item() == pytest.approx(naive, rel=1e-6)
    spread = torch.eye(4, dtype=f64)  # orthogonal: every nearest distance sqrt(2)
    assert L.koleo_loss(spread).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    close = spread.clone()
    close[1] = close[0] + 0.01 * close[1]  # two rows almost the same direction
    assert L.koleo_loss(close).item() > L.koleo_loss(spread).item() + 1.0
    z.requires_grad_(True)
    L.koleo_loss(z).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="N >= 2"):
        L.koleo_loss(z[:1])


def test_dino_uniform_gives_log_k():
    n, k = 3, 10
    student = [torch.full((n, k), 0.7, dtype=f64) for _ in range(5)]
    teacher = [torch.full((n, k), -1.3, dtype=f64) for _ in range(2)]
    center = torch.zeros(1, k, dtype=f64)
    assert L.dino_loss(student, teacher, center).item() == pytest.approx(math.log(k), abs=1e-12)


def naive_dino(student, teacher, center, ts, tt):
    n, k = student[0].shape
    total, pairs = 0.0, 0
    for iq in range(len(teacher)):
        for v in range(len(student)):
            if v == iq:
                continue
            pairs += 1
            for b in range(n):
                tl = [(teacher[iq][b, j] - center[0, j]).item() / tt for j in range(k)]
                sl = [student[v][b, j].item() / ts for j in range(k)]
                tz = sum(math.exp(x) for x in tl)
                slz = math.log(sum(math.exp(x) for x in sl))
                total += -sum(math.exp(tl[j]) / tz * (sl[j] - slz) for j in range(k)) / n
    assert pairs == 2 * (len(student) - 1)
    return total / pairs


def test_dino_matches_naive_and_teacher_gets_no_gradient():
    n, k, ts, tt = 4, 6, 0.1, 0.04
    student = [randn(n, k, seed=30 + v).requires_grad_() for v in range(5)]  # 2 global + 3 local
    teacher = [randn(n, k, seed=40 + i).requires_grad_() for i in range(2)]
    center = randn(1, k, seed=50).requires_grad_()
    loss = L.dino_loss(student, teacher, center, ts, tt)
    assert loss.item() == pytest.approx(naive_dino(student, teacher, center, ts, tt), rel=1e-10)
    loss.backward()
    assert all(t.grad is None for t in teacher) and center.grad is None
    assert all(s.grad is not None for s in student)


def test_dino_center_update_formula_and_gather():
    n, k, m = 4, 5, 0.9
    center = randn(1, k, seed=60)
    teacher = [randn(n, k, seed=61), randn(n, k, seed=62)]
    new = L.dino_center_update(center, teacher, momentum=m)
    expected = m * center + (1 - m) * torch.cat(teacher).mean(0, keepdim=True)
    assert new.shape == (1, k)
    assert torch.allclose(new, expected, atol=1e-12)
    assert torch.equal(center, randn(1, k, seed=60))  # not modified in place
    # two "processes": the gathered mean is the mean over the whole global batch
    other = [randn(n, k, seed=63), randn(n, k, seed=64)]
    new_g = L.dino_center_update(center, teacher, m, gather=lambda t: (torch.cat([t, torch.cat(other)]), 0))
    expected_g = m * center + (1 - m) * torch.cat(teacher + other).mean(0, keepdim=True)
    assert torch.allclose(new_g, expected_g, atol=1e-12)


def test_dino_diagnostics():
    n, k = 8, 16
    student = [randn(n, k, seed=70 + v) for v in range(4)]
    teacher = [randn(n, k, seed=80 + i) for i in range(2)]
    center = torch.zeros(1, k, dtype=f64)
    diag = L.dino_diagnostics(student, teacher, center, 0.1, 0.04)
    loss = L.dino_loss(student, teacher, center, 0.1, 0.04).item()
    assert diag["ln_k"] == pytest.approx(math.log(k))
    assert 0.0 <= diag["teacher_entropy"] <= math.log(k) and diag["kl"] > 0
    assert diag["teacher_entropy"] + diag["kl"] == pytest.approx(loss, rel=1e-10)
    # uniform collapse: entropy = ln K, KL = 0
    flat = L.dino_diagnostics([torch.zeros(n, k)] * 3, [torch.zeros(n, k)] * 2, torch.zeros(1, k), 0.1, 0.04)
    assert flat["teacher_entropy"] == pytest.approx(math.log(k), abs=1e-5)
    assert flat["kl"] == pytest.approx(0.0, abs=1e-6)
    assert L.entropy(torch.tensor([1.0, 0.0])).item() == 0.0


# ---------------------------------------------------------------------------- MAE
def test_patchify_order_and_roundtrip():
    n, c, h, w, p = 2, 3, 8, 12, 4
    imgs = torch.arange(n * c * h * w, dtype=f64).reshape(n, c, h, w)
    x = L.patchify(imgs, p)
    assert x.shape == (n, (h // p) * (w // p), p * p * c)
    grid_w = w // p
    for b, l in [(0, 0), (1, 1), (0, 4), (1, 5)]:
        row, col = divmod(l, grid_w)
        expected = torch.tensor(
            [imgs[b, ch, row * p + i, col * p + j] for i in range(p) for j in range(p) for ch in range(c)],
            dtype=f64,
        )  # (p, q, c) order, channel fastest
        assert torch.equal(x[b, l], expected)
    assert torch.equal(L.unpatchify(x, p, c, grid=(h // p, w // p)), imgs)
    sq = randn(2, 3, 8, 8, seed=90)
    assert torch.equal(L.unpatchify(L.patchify(sq, 2), 2, 3), sq)
    with pytest.raises(ValueError):
        L.patchify(sq, 3)


def test_mae_loss_manual_formula_and_unbiased_variance():
    n, length, d = 2, 6, 12
    pred, target = randn(n, length, d, seed=91), randn(n, length, d, seed=92) * 3 + 1
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]], dtype=f64)

    def manual(tn):
        per_patch = ((pred - tn) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    mean = target.mean(-1, keepdim=True)
    var_unbiased = ((target - mean) ** 2).sum(-1, keepdim=True) / (d - 1)
    var_biased = ((target - mean) ** 2).sum(-1, keepdim=True) / d
    got = L.mae_loss(pred, target, mask, norm_pix=True).item()
    assert got == pytest.approx(manual((target - mean) / (var_unbiased + 1e-6).sqrt()).item(), rel=1e-12)
    assert abs(got - manual((target - mean) / (var_biased + 1e-6).sqrt()).item()) > 1e-3
    assert L.mae_loss(pred, target, mask.bool(), norm_pix=False).item() == pytest.approx(manual(target).item(), rel=1e-12)


def test_mae_loss_ignores_visible_patches():
    n, length, d = 2, 8, 4
    target = randn(n, length, d, seed=93)
    mask = (randn(n, length, seed=94) > 0).to(f64)
    mask[0, 0], mask[0, 1] = 1.0, 0.0  # at least one removed and one visible patch
    pred = randn(n, length, d, seed=95).requires_grad_()
    base = L.mae_loss(pred, target, mask)
    changed = pred.detach() + 10.0 * (1 - mask).unsqueeze(-1)  # change visible patches only
    assert L.mae_loss(changed, target, mask).item() == pytest.approx(base.item(), rel=1e-12)
    changed_removed = pred.detach() + 10.0 * mask.unsqueeze(-1)
    assert L.mae_loss(changed_removed, target, mask).item() != pytest.approx(base.item(), rel=1e-6)
    base.backward()
    assert torch.all(pred.grad[mask == 0] == 0) and pred.grad[mask == 1].abs().sum() > 0


def naive_hog(img, p, bins=9, eps=0.05):
    """One image (C, H, W) -> (L, bins), pixel by pixel, straight from Dalal & Triggs."""
    c, h, w = img.shape
    px = lambda ch, i, j: float(img[ch, min(max(i, 0), h - 1), min(max(j, 0), w - 1)])  # replicate edges
    out = []
    for r in range(0, h, p):
        for q in range(0, w, p):
            hist = [0.0] * bins
            for i in range(r, r + p):
                for j in range(q, q + p):
                    grads = [(px(ch, i, j + 1) - px(ch, i, j - 1), px(ch, i + 1, j) - px(ch, i - 1, j)) for ch in range(c)]
                    gx, gy = max(grads, key=lambda g: math.hypot(*g))  # the loudest channel
                    angle = math.atan2(gy, gx) % math.pi
                    width = math.pi / bins
                    k = math.floor(angle / width - 0.5)  # the bin centre just below the angle
                    frac = angle / width - 0.5 - k
                    hist[k % bins] += math.hypot(gx, gy) * (1 - frac)
                    hist[(k + 1) % bins] += math.hypot(gx, gy) * frac
            norm = math.sqrt(sum(v * v for v in hist) + (eps * p * p) ** 2)
            out.append([v / norm for v in hist])
    return torch.tensor(out, dtype=f64)


@pytest.mark.parametrize("p", [2, 4])
def test_hog_targets_match_a_pixel_by_pixel_loop(p):
    imgs = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(p))
    got = L.hog_targets(imgs, p)
    assert got.shape == (2, (8 // p) * (12 // p), 9)
    for b in range(2):
        assert torch.allclose(got[b].double(), naive_hog(imgs[b], p), atol=1e-5)


def test_hog_targets_see_edges_not_colour():
    x = torch.zeros(1, 3, 8, 8)
    x[..., 4:] = 1.0  # a vertical edge: horizontal gradient, orientation 0 = pi, between bins 8 and 0
    t = L.hog_targets(x, 2)
    edge = t[0, 1]  # patch (0, 1) touches the edge (columns 2-3), patch (0, 0) does not
    assert edge[0] == pytest.approx(edge[8].item()) and edge[0] > 0.6 and edge[1:8].abs().max() == 0
    assert t[0, 0].abs().max() == 0  # flat: all zeros
    across = L.hog_targets(x.transpose(2, 3), 2)[0, 4]  # a horizontal edge: orientation pi/2, bin 4's centre
    assert across[4] > 0.9 and across.sum() == across[4]
    # the same edge in another colour, at another contrast, on another background
    recoloured = torch.tensor([0.2, 0.7, 0.1]).view(1, 3, 1, 1) + 0.6 * x * torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    assert torch.allclose(L.hog_targets(recoloured, 2), t, atol=0.02)
    assert torch.allclose(L.hog_targets(x[:, [2, 0, 1]], 2), t)  # channel order does not matter


# -------------------------------------------------------------- reconstruction
def test_reconstruction_article_example_2():
    x = torch.tensor([[0.8, 0.3, 0.9, 0.5]])
    x_hat = torch.tensor([[0.79, 0.28, 0.88, 0.51]])
    x_noisy = torch.tensor([[0.95, 0.18, 0.72, 0.61]])
    assert L.reconstruction_loss(x_hat, x).item() == pytest.approx(0.00025, abs=1e-5)
    assert L.reconstruction_loss(x_hat, x_noisy).item() == pytest.approx(0.0178, abs=5e-5)


def test_reconstruction_bce_matches_torch_and_logits_variant():
    clean = torch.rand(5, 2, 3, generator=gen(96), dtype=f64)
    logits = randn(5, 2, 3, seed=97)
    recon = torch.sigmoid(logits)
    expected = F.binary_cross_entropy(recon, clean, reduction="none").sum(dim=(1, 2)).mean()
    assert L.reconstruction_loss(recon, clean, "bce").item() == pytest.approx(expected.item(), rel=1e-10)
    assert L.reconstruction_loss(logits, clean, "bce", logits=True).item() == pytest.approx(expected.item(), rel=1e-10)
    # saturated probabilities stay finite thanks to the clamp
    hard = torch.tensor([[0.0, 1.0]])
    assert math.isfinite(L.reconstruction_loss(hard, torch.tensor([[1.0, 0.0]]), "bce").item())
    with pytest.raises(SelfSupError):
        L.reconstruction_loss(recon, clean, "l1")


# ----------------------------------------------------------------- autocast (all)
def test_all_losses_return_float32_under_autocast():
    g = gen(98)
    z = [torch.randn(4, 8, generator=g) for _ in range(4)]
    queue = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    dino_s = [torch.randn(4, 8, generator=g) for _ in range(3)]
    dino_t = [torch.randn(4, 8, generator=g) for _ in range(2)]
    calls = {
        "info_nce": lambda: L.info_nce(z[0], z[1], queue),
        "moco": lambda: L.moco_loss(z[0], z[1], queue),
        "byol": lambda: L.byol_loss(*z),
        "dino": lambda: L.dino_loss(dino_s, dino_t, torch.zeros(1, 8)),
        "mae": lambda: L.mae_loss(z[0][None], z[1][None], torch.ones(1, 4)),
        "bce": lambda: L.reconstruction_loss(torch.sigmoid(z[0]), torch.sigmoid(z[1]), "bce"),
    }
    for name, call in calls.items():
        ref = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = call()
        assert out.dtype == torch.float32, name
        assert out.item() == pytest.approx(ref.item(), rel=1e-6), name


def test_sinkhorn_knopp_balances_prototypes_and_matches_naive_loop():
    logits = randn(12, 5, seed=4) * 3
    p = L.sinkhorn_knopp(logits, temperature=0.5, iterations=50)
    assert torch.allclose(p.sum(1), torch.ones(12, dtype=f64), atol=1e-6)  # rows are distributions
    assert torch.allclose(p.sum(0), torch.full((5,), 12 / 5, dtype=f64), atol=5e-3)  # equal mass per prototype
    q = torch.exp(logits / 0.5).T.clone()
    q /= q.sum()
    for _ in range(3):
        for j in range(5):
            q[j] /= q[j].sum() * 5
        for i in range(12):
            q[:, i] /= q[:, i].sum() * 12
    assert torch.allclose(L.sinkhorn_knopp(logits, 0.5), (q * 12).T, atol=1e-9)
    # a batch that puts every sample on one prototype is spread over all of them
    one_hot = torch.zeros(10, 4, dtype=f64)
    one_hot[:, 0] = 10.0
    one_hot += randn(10, 4, seed=5) * 0.1
    assert L.sinkhorn_knopp(one_hot, 0.1, iterations=20).argmax(1).unique().numel() > 1
