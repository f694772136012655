"""WCoRD term: GCKT against a brute-force loop, memory buffers, negatives, LCKT against POT."""
import math

import ot as pot
import pytest
import torch
import torch.nn.functional as F

from wdistill import losses, ot
from wdistill.losses import SetupContext
from wdistill.losses.wcord.critic import SQUARINGS, spectral_upper

N, C, B, DS, DT = 30, 3, 6, 5, 7


def make(seed=0, **kw):
    torch.manual_seed(seed)
    s_out = {"embed": torch.randn(B, DS)}
    t_out = {"embed": torch.randn(B, DT)}
    ctx = SetupContext(student_out=s_out, teacher_out=t_out, num_classes=C, num_samples=N,
                       train_targets=torch.arange(N) % C, device=torch.device("cpu"))
    kw.setdefault("num_negatives", 8)
    term = losses.create("wcord", **kw)
    term.setup(ctx)
    return term.train()


def batch(idx):
    idx = torch.as_tensor(idx)
    return {"index": idx, "target": idx % C, "epoch": 0, "num_epochs": 1}


def heads(term, e_s, e_t):
    """Head outputs with the weights of the last forward (eval: no further power iteration)."""
    was_training = term.training
    term.eval()
    with torch.no_grad():
        out = term.heads(e_s, e_t)[:2]
    term.train(was_training)
    return out


def hand_heads(term, e_s, e_t):
    """The critic's feature maps written out: bounded = exact spectral norm + unit-ball projection."""
    out = []
    for head, e in ((term.embed_s, e_s), (term.embed_t, e_t)):
        w, b = head.linear.weight.detach().double(), head.linear.bias.detach().double()
        x = e.double() @ (w / torch.linalg.svdvals(w)[0]).T + b
        out.append((x / x.norm(dim=1, keepdim=True).clamp_min(1)).float())
    return out


@pytest.mark.parametrize("critic", ["bounded", "normalised"])
def test_gckt_matches_bruteforce_loop(critic):
    term = make(tau=0.1, critic=critic)
    scale = 1 / (math.sqrt(2) * 0.1) if critic == "bounded" else 1 / 0.1
    e_s, e_t = 3 * torch.randn(B, DS), torch.randn(B, DT) / 3
    h_s, h_t = heads(term, e_s, e_t)
    if critic == "bounded":
        for got, want in zip((h_s, h_t), hand_heads(term, e_s, e_t)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (h_s.norm(dim=1) <= 1 + 1e-6).all() and (h_t.norm(dim=1) <= 1 + 1e-6).all()  # in the ball
    neg = torch.randint(0, N, (B, 8))
    value = float(term.gckt(h_s, h_t, neg))
    expected = 0.0
    for i in range(B):
        pos = float(h_s[i] @ h_t[i]) * scale
        for anchor, bank in ((h_s[i], term.memory_t), (h_t[i], term.memory_s)):
            z = math.exp(pos) + sum(math.exp(float(anchor @ bank[k]) * scale) for k in neg[i].tolist())
            expected += -(pos - math.log(z)) / B
    assert abs(value - expected) < 1e-5
    index = torch.tensor([3, 7, 11, 20, 25, 29])  # positives="memory": the other model's memory row
    value = float(term.gckt(h_s, h_t, neg, index))
    expected = 0.0
    for i in range(B):
        for anchor, bank in ((h_s[i], term.memory_t), (h_t[i], term.memory_s)):
            pos = float(anchor @ bank[index[i]]) * scale
            z = math.exp(pos) + sum(math.exp(float(anchor @ bank[k]) * scale) for k in neg[i].tolist())
            expected += -(pos - math.log(z)) / B
    assert abs(value - expected) < 1e-5
    full = make(tau=0.1, bank_scoring="full", critic=critic)
    gather = make(tau=0.1, bank_scoring="gather", critic=critic)
    torch.testing.assert_close(full.gckt(h_s, h_t, neg), gather.gckt(h_s, h_t, neg))


def test_full_loss_is_weighted_sum_of_parts():
    term = make(lambda1=0.8, lambda2=0.1)
    e_s, e_t = torch.randn(B, DS), torch.randn(B, DT)
    b = batch(range(B))
    b["contrast_index"] = torch.cat([torch.arange(B)[:, None], torch.randint(0, N, (B, 8))], 1)
    value = term({"embed": e_s}, {"embed": e_t}, b)
    h_s, h_t = heads(term, e_s, e_t)
    expected = 0.8 * term.gckt(h_s, h_t, b["contrast_index"][:, 1:], b["index"]) + 0.1 * term.lckt(h_s, h_t)
    torch.testing.assert_close(value.detach(), expected)


@pytest.mark.parametrize("critic", ["bounded", "normalised"])
def test_memory_update_momentum_after_the_step(critic):
    term = make(momentum=0.5, critic=critic)
    old_s, old_t = term.memory_s.clone(), term.memory_t.clone()
    e_s, e_t = torch.randn(B, DS), torch.randn(B, DT)
    idx = torch.tensor([3, 7, 11, 20, 25, 29])
    term({"embed": e_s}, {"embed": e_t}, batch(idx)).backward()  # update is deferred past backward
    h_s, h_t = heads(term, e_s, e_t)
    assert torch.equal(term.memory_s, old_s) and torch.equal(term.memory_t, old_t)
    term.after_step(None, None, None)
    state = term.state_dict()
    for bank, old, h, key in ((term.memory_s, old_s, h_s, "memory_s"), (term.memory_t, old_t, h_t, "memory_t")):
        for r in range(N):
            if r in idx.tolist():
                i = idx.tolist().index(r)
                mixed = 0.5 * old[r] + 0.5 * h[i]
                want = mixed if critic == "bounded" else mixed / mixed.norm()  # bounded: stays in the ball
                torch.testing.assert_close(bank[r], want, atol=2e-6, rtol=0)
            else:
                assert torch.equal(bank[r], old[r])
        assert torch.equal(state[key], bank)


def test_other_class_negatives():
    with pytest.warns(UserWarning, match="holds 20 training rows, fewer than num_negatives=3000: using 20"):
        term = make(num_negatives=3000)  # K capped at the other-class pool (20 rows)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    neg = term.sample_negatives({"target": y})
    labels = neg % C  # train_targets = arange(N) % C
    assert term.k == 20 and neg.shape == (6, 20) and (labels != y[:, None]).all()
    # uniform over the other classes' samples: each of the 20 candidates ~ 150 times in 3000 draws
    counts = torch.bincount(term.sampler.other_class(y, 3000)[0], minlength=N)
    assert counts[y[0].item()::C].sum() == 0 and counts[counts > 0].min() > 90
    given = torch.randint(0, N, (6, 5))
    assert torch.equal(term.sample_negatives({"target": y, "contrast_index": given}), given[:, 1:])
    with pytest.raises(ValueError, match="negatives='uniform'"):
        one_class = SetupContext(student_out={"embed": torch.zeros(1, DS)}, teacher_out={"embed": torch.zeros(1, DT)},
                                 num_classes=1, num_samples=4, train_targets=torch.zeros(4, dtype=torch.long),
                                 device=torch.device("cpu"))
        losses.create("wcord").setup(one_class)


def test_lckt_plan_and_value_against_emd():
    term = make(ipot_iters=2000)
    h_s, h_t = F.normalize(torch.randn(B, 4), dim=1), F.normalize(torch.randn(B, 4), dim=1)
    cost = ot.cosine_cost(h_s, h_t).double()
    w = torch.full((B,), 1.0 / B, dtype=torch.float64)
    exact = pot.emd2(w.numpy(), w.numpy(), cost.numpy())
    assert abs(float(term.lckt(h_s, h_t)) - exact) < 1e-5
    plan = ot.ipot(w, w, cost, 0.5, 50)
    torch.testing.assert_close(plan.sum(0), w, atol=1e-12, rtol=0)  # the last scaling fixes columns
    torch.testing.assert_close(plan.sum(1), w, atol=1e-3, rtol=0)
    assert abs(float((plan * cost).sum()) - exact) < 1e-2
    sk = make(lckt_solver="sinkhorn", sinkhorn_reg=0.01)
    assert abs(float(sk.lckt(h_s, h_t)) - exact) < 0.05


@pytest.mark.parametrize("lipschitz", ["spectral", "gp", "none"])
def test_gradients_reach_student_and_heads_not_teacher(lipschitz):
    term = make(lipschitz=lipschitz, critic="normalised" if lipschitz == "none" else "bounded")
    e_s = torch.randn(B, DS, requires_grad=True)
    e_t = torch.randn(B, DT, requires_grad=True)
    term({"embed": e_s}, {"embed": e_t}, batch(range(B))).backward()
    assert e_s.grad is not None and e_s.grad.abs().sum() > 0
    assert e_t.grad is None
    for head in (term.embed_s, term.embed_t):
        grads = [p.grad for p in head.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lckt_gradient_reaches_student_only():
    term = make(lambda1=0.0, lambda2=1.0)
    e_s = torch.randn(B, DS, requires_grad=True)
    term({"embed": e_s}, {"embed": torch.randn(B, DT)}, batch(range(B))).backward()
    assert e_s.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in term.parameters())


def critic_gradient_norms(term, t, s):
    """|grad_(t,s) g(t, s)| of every pair (rows of t and s), one autograd call per pair."""
    norms = []
    for i in range(t.shape[0]):
        ti, si = t[i:i + 1].clone().requires_grad_(), s[i:i + 1].clone().requires_grad_()
        gt, gs = torch.autograd.grad(term.critic(ti, si).sum(), [ti, si])
        norms.append(float((gt.pow(2).sum() + gs.pow(2).sum()).sqrt()))
    return torch.tensor(norms)


def sampled_pairs(term, n=300, seed=0):
    """Pairs at many scales around the inputs whose head output is 0 (where x/|x| is steepest;
    with feat_dim below the input width such inputs exist), plus pairs around the origin."""
    g = torch.Generator().manual_seed(seed)
    centres = []
    for head in (term.embed_t, term.embed_s):
        w, b = head.linear.weight.detach(), head.linear.bias.detach()
        centres.append(torch.linalg.lstsq(w, -b[:, None]).solution.squeeze(1))  # w x + b = 0
    scale = 10 ** torch.empty(n, 1).uniform_(-5, 1, generator=g)
    near = torch.rand(n, 1, generator=g) < 0.8
    t = near * centres[0] + scale * torch.randn(n, DT, generator=g)
    s = near * centres[1] + scale * torch.randn(n, DS, generator=g)
    return t, s


def test_bounded_critic_keeps_its_lipschitz_bound_during_training():
    tau = 0.07
    term = make(tau=tau, feat_dim=4)  # critic="bounded" is the default; 4 < 5, 7 input widths
    with torch.no_grad():  # heads far from norm 1: the bound must not depend on the initialisation
        term.embed_s.linear.weight.mul_(25)
        term.embed_t.linear.weight.mul_(0.01)
    opt = torch.optim.SGD(term.parameters(), lr=0.5)
    worst = []
    for step in range(6):
        worst.append(float(critic_gradient_norms(term, *sampled_pairs(term, seed=step)).max()))
        opt.zero_grad()
        term({"embed": 5 * torch.randn(B, DS)}, {"embed": 5 * torch.randn(B, DT)}, batch(range(B))).backward()
        opt.step()
    # g is (1/tau)-Lipschitz in (t, s): tau * g is a 1-Lipschitz critic
    assert max(worst) <= (1 / tau) * (1 + 1e-4)
    assert max(worst) > 0.3 / tau  # and the bound is not vacuous: gradients come near it


def test_normalised_critic_has_no_bound():
    """The earlier critic (l2-normalised heads / tau) is steep near inputs whose head output is 0,
    despite the spectral normalisation of its Linear."""
    tau = 0.07
    term = make(tau=tau, feat_dim=4, critic="normalised", lipschitz="spectral")
    for _ in range(30):  # power iterations run in training forwards
        term({"embed": torch.randn(B, DS)}, {"embed": torch.randn(B, DT)}, batch(range(B)))
    term.eval()
    assert float(critic_gradient_norms(term, *sampled_pairs(term)).max()) > 100 / tau


def test_spectral_norm_bounds_head_and_gradient_penalty_value():
    term = make(lipschitz="spectral", critic="normalised")
    for _ in range(30):  # power iterations run in training forwards
        term({"embed": torch.randn(B, DS)}, {"embed": torch.randn(B, DT)}, batch(range(B)))
    term.eval()  # read the weight without another power iteration
    for head in (term.embed_s, term.embed_t):
        assert abs(float(torch.linalg.matrix_norm(head.linear.weight.detach(), 2)) - 1) < 1e-2
    term.train()
    gp = make(lipschitz="gp", gp_weight=10.0, critic="normalised")
    e_s, e_t = torch.randn(B, DS), torch.randn(B, DT)
    value = float(gp.gradient_penalty(e_s, e_t).detach())
    expected = 0.0
    pairs = [(e_t[i], e_s[i]) for i in range(B)] + [(e_t[i], e_s[(i - 1) % B]) for i in range(B)]
    for t, s in pairs:  # one critic evaluation and gradient per point
        t, s = t[None].clone().requires_grad_(), s[None].clone().requires_grad_()
        gt, gs = torch.autograd.grad(gp.critic(t, s).sum(), [t, s])
        expected += 10.0 * (math.sqrt(float(gt.pow(2).sum() + gs.pow(2).sum())) - 1) ** 2 / len(pairs)
    assert abs(value - expected) < 1e-4 * max(1.0, expected)


def _ddp_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        term = make(seed=0)  # same initial heads and banks on every rank
        g = torch.Generator().manual_seed(100)
        e_s, e_t = torch.randn(world * B, DS, generator=g), torch.randn(world * B, DT, generator=g)
        local = slice(rank * B, (rank + 1) * B)
        h_s, h_t = heads(term, e_s, e_t)
        lckt_local_call = float(term.lckt(h_s[local], h_t[local]))  # gathers the global batch inside
        term({"embed": e_s[local]}, {"embed": e_t[local]}, batch(range(rank * B, (rank + 1) * B))).backward()
        term.after_step(None, None, None)
        torch.save({"memory_s": term.memory_s, "memory_t": term.memory_t, "lckt": lckt_local_call,
                    "h_s": h_s, "h_t": h_t}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memory_banks_and_lckt_see_the_global_batch_under_ddp(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    initial = make(seed=0)
    for key in ("memory_s", "memory_t"):
        assert torch.equal(r0[key], r1[key])
        changed = (r0[key] != getattr(initial, key)).any(1)
        assert changed[: 2 * B].all() and not changed[2 * B:].any()  # both ranks' rows, nothing else
    w = torch.full((2 * B,), 1 / (2 * B))
    cost = ot.cosine_cost(r0["h_s"], r0["h_t"])
    expected = float((ot.ipot(w, w, cost, 0.5, 50) * cost).sum())
    assert abs(r0["lckt"] - expected) < 1e-6 and abs(r1["lckt"] - expected) < 1e-6


@pytest.mark.parametrize("shape", [(128, 256), (256, 128), (10, 10), (1, 5)])
def test_spectral_upper_is_the_largest_singular_value_from_above(shape):
    """The bounded critic's sigma_max without an SVD: never below the SVD's (so the Lipschitz bound holds), above
    it by at most n^(1/2k), which equal singular values reach; its gradient is the SVD's u v^T."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.linalg.qr(torch.randn(max(shape), min(shape), generator=g, dtype=torch.float64)).Q
    equal = 3 * (q if shape[0] >= shape[1] else q.T)  # every singular value 3
    slack = min(shape) ** (1 / 2 ** (SQUARINGS + 1))
    assert 1 - 1e-12 <= float(spectral_upper(w.detach()) / torch.linalg.svdvals(w.detach())[0]) <= slack
    assert float(spectral_upper(equal) / 3) == pytest.approx(slack, rel=1e-9)
    grad = torch.autograd.grad(spectral_upper(w), w)[0]
    exact = torch.autograd.grad(torch.linalg.matrix_norm(w, ord=2), w)[0]
    assert float((grad - exact).norm() / exact.norm()) < 1e-6
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inside any autocast
        low = spectral_upper(w.detach().float())
    assert low.dtype == torch.float32 and float(low / torch.linalg.svdvals(w.detach())[0]) == pytest.approx(1, abs=1e-6)
