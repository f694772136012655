"""CRD: memory banks, class-aware sampling, NCE against a float64 brute force, Z, checkpointing."""
import copy
import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import wdistill.losses as L
import wdistill.losses.crd as crd_mod
from wdistill.errors import ConfigError
from wdistill.losses import SetupContext

N, NUM_CLASSES, B, DIM, K, TAU = 24, 3, 4, 4, 6, 0.07
TARGETS = torch.arange(N) % NUM_CLASSES
TARGETS = TARGETS[torch.randperm(N, generator=torch.Generator().manual_seed(0))]
INDEX = torch.tensor([0, 5, 10, 17])


pytestmark = pytest.mark.usefixtures("one_thread")


def embeds(seed):
    g = torch.Generator().manual_seed(seed)
    s = {"embed": torch.randn(B, 5, generator=g, dtype=torch.float64).requires_grad_(True)}
    t = {"embed": torch.randn(B, 6, generator=g, dtype=torch.float64).requires_grad_(True)}
    return s, t


def make(seed=0, targets=TARGETS, **params):
    params = {"feat_dim": DIM, "num_negatives": K, **params}
    s, t = embeds(1)
    torch.manual_seed(seed)
    term = L.create("crd", **params)
    term.setup(SetupContext(student_out=s, teacher_out=t, num_classes=NUM_CLASSES,
                            num_samples=len(targets), train_targets=targets, device=torch.device("cpu")))
    return term.double()


def batch(idx=None, index=INDEX):
    b = {"index": index, "target": TARGETS[index], "epoch": 0, "num_epochs": 240}
    if idx is not None:
        b["contrast_index"] = idx
    return b


def unit(v):
    n = torch.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def embed_bf(head, x):
    w, bias = head.linear.weight, head.linear.bias
    return [unit([sum(w[k, d] * x[i, d] for d in range(x.shape[1])) + bias[k] for k in range(w.shape[0])])
            for i in range(x.shape[0])]


def crd_bf(term, s, t, idx, bank_s, bank_t, z=None):
    """Float64 loops over the CRD definition; returns (loss, Z_s, Z_t)."""
    es, et = embed_bf(term.embed_s, s["embed"]), embed_bf(term.embed_t, t["embed"].detach())
    n = bank_s.shape[0]
    out_s = [[torch.exp(sum(bank_t[idx[b, k], d] * es[b][d] for d in range(DIM)) / TAU)
              for k in range(idx.shape[1])] for b in range(len(es))]
    out_t = [[torch.exp(sum(bank_s[idx[b, k], d] * et[b][d] for d in range(DIM)) / TAU)
              for k in range(idx.shape[1])] for b in range(len(et))]
    if z is None:
        cells = len(es) * idx.shape[1]
        z = [(sum(sum(r) for r in out) / cells).detach() * n for out in (out_s, out_t)]

    def nce(out, zz):
        m = (len(out[0]) - 1) / n
        total = 0
        for row in out:
            p = [x / zz for x in row]
            total = total + torch.log(p[0] / (p[0] + m + 1e-7))
            total = total + sum(torch.log(m / (x + m + 1e-7)) for x in p[1:])
        return -total / len(out)

    return nce(out_s, z[0]) + nce(out_t, z[1]), z


def grads(v, wrt):
    return torch.autograd.grad(v, wrt, retain_graph=True)


@pytest.mark.parametrize("scoring", ["gather", "matmul"])
def test_nce_value_and_grads_match_brute_force(scoring):
    term = make(scoring=scoring)
    s, t = embeds(2)
    idx = term.sample_contrast(INDEX)
    bank_s, bank_t = term.bank_s.clone(), term.bank_t.clone()
    v = term(s, t, batch(idx))
    ref, z = crd_bf(term, s, t, idx, bank_s, bank_t)
    assert torch.allclose(v, ref, rtol=1e-10)
    assert torch.allclose(term.Z, torch.stack(z), rtol=1e-12)
    wrt = [s["embed"], *term.embed_s.parameters(), *term.embed_t.parameters()]
    for a, b in zip(grads(v, wrt), grads(ref, wrt)):
        assert a.abs().sum() > 0 and torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    v.backward()
    assert t["embed"].grad is None  # the teacher's features never get a gradient


def test_gather_and_matmul_give_the_same_values_and_gradients(monkeypatch):
    a = make(scoring="gather")
    b = copy.deepcopy(a)
    b.scoring = "matmul"
    s, t = embeds(3)
    idx = a.sample_contrast(INDEX)
    va, vb = a(s, t, batch(idx)), b(s, t, batch(idx))
    assert torch.allclose(va, vb, rtol=1e-12)
    wa = [s["embed"], *a.embed_s.parameters(), *a.embed_t.parameters()]
    wb = [s["embed"], *b.embed_s.parameters(), *b.embed_t.parameters()]
    for ga, gb in zip(grads(va, wa), grads(vb, wb)):
        assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-14)
    auto = make()
    assert auto.resolved_scoring(64) == "matmul"
    monkeypatch.setattr(crd_mod, "MATMUL_MAX_ELEMENTS", N * 64 - 1)
    assert auto.resolved_scoring(64) == "gather"


def test_a_small_pool_caps_the_negatives_with_one_warning():
    """K above the smallest other-class pool (16 here) is capped at it: every negative distinct, no repeats."""
    with pytest.warns(UserWarning, match="holds 16 training rows, fewer than num_negatives=6000: using 16") as seen:
        term = make(num_negatives=6000)
    assert len(seen) == 1 and term.k == 16
    idx = term.sample_contrast(INDEX)
    assert idx.shape == (B, 17)
    for b, i in enumerate(INDEX.tolist()):
        neg = idx[b, 1:]
        assert (TARGETS[neg] != TARGETS[i]).all() and len(set(neg.tolist())) == 16
    big_enough = make(num_negatives=8)
    assert big_enough.k == 8  # the published K wherever the pool holds it


def test_sampling_exact_draws_other_class_negatives_uniformly():
    term = make(num_negatives=6000, replacement=True)  # RepDistiller's small-pool draw: K with replacement
    idx = term.sample_contrast(INDEX)
    assert idx.shape == (B, 6001) and idx.dtype == torch.long
    assert torch.equal(idx[:, 0], INDEX)
    for b, i in enumerate(INDEX.tolist()):
        neg = idx[b, 1:]
        assert (TARGETS[neg] != TARGETS[i]).all()
        pool = (TARGETS != TARGETS[i]).nonzero().flatten()
        counts = torch.bincount(neg, minlength=N)[pool].double()
        # every other-class row is drawn, each about 6000 / 16 = 375 times
        assert counts.min() > 0.75 * 6000 / len(pool) and counts.max() < 1.25 * 6000 / len(pool)


def test_negatives_are_distinct_other_class_rows_without_replacement():
    # unbalanced classes: 0 has 10 rows, 1 has 6, 2 has 2 (pools 8, 12, 16)
    targets = torch.tensor([0] * 10 + [1] * 6 + [2] * 2)[torch.randperm(18, generator=torch.Generator().manual_seed(3))]
    term = make(targets=targets, num_negatives=8)
    index = torch.arange(18)
    for _ in range(50):
        idx = term.sample_contrast(index)
        assert idx.shape == (18, 9) and torch.equal(idx[:, 0], index)
        neg = idx[:, 1:]
        assert (targets[neg] != targets[index][:, None]).all()
        assert all(len(set(row.tolist())) == 8 for row in neg)  # unique per row
    # class 0's pool is exactly 8 rows: every draw must be the whole pool
    rows0 = (targets == 0).nonzero().flatten()
    pool0 = set((targets != 0).nonzero().flatten().tolist())
    assert all(set(r.tolist()) == pool0 for r in term.sample_contrast(rows0)[:, 1:])


def test_negatives_are_a_uniform_subset_of_the_pool():
    # 3-subsets of a 6-row pool: 20 equally likely subsets (chi-square, 19 dof, p=1e-4 bound 49.4)
    targets = torch.tensor([0] * 4 + [1] * 3 + [2] * 3)
    term = make(targets=targets, num_negatives=3)
    torch.manual_seed(1)
    one = torch.zeros(1, dtype=torch.long)  # an anchor of class 0: pool = rows 4..9
    draws = torch.cat([term.sample_contrast(one)[:, 1:] for _ in range(2000)])
    counts = {}
    for row in draws.tolist():
        key = tuple(sorted(row))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == math.comb(6, 3) and all(min(k) >= 4 for k in counts)
    expected = len(draws) / math.comb(6, 3)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 49.4



def test_rows_of_one_batch_are_not_shifted_copies():
    # 400 rows of one class, 3 negatives of a 40-row pool (9,880 subsets). Independent draws would
    # give ~392 distinct subsets; reading one shared permutation in arcs at most 60 (one per
    # offset). Random strides give 16 x 60 reading orders here (227 subsets measured): rows of one
    # step are not independent at this toy size, only at N in the thousands (N=50,000: 1e9 orders).
    targets = torch.arange(60) % 3
    term = make(targets=targets, num_negatives=3)
    draws = term.sample_contrast(torch.zeros(400, dtype=torch.long))[:, 1:]
    assert len({tuple(sorted(r)) for r in draws.tolist()}) >= 150


def test_with_replacement_is_an_option():
    term = make(num_negatives=12, replacement=True)  # pool 16 >= 12, yet repeats are allowed
    neg = torch.cat([term.sample_contrast(INDEX)[:, 1:] for _ in range(20)])
    assert any(len(set(r.tolist())) < 12 for r in neg)
    assert (TARGETS[neg] != TARGETS[INDEX.repeat(20)][:, None]).all()


def test_sampling_relax_draws_a_same_class_positive():
    term = make(positive="relax")
    pos = torch.stack([term.sample_contrast(INDEX)[:, 0] for _ in range(200)])
    assert (TARGETS[pos] == TARGETS[INDEX]).all()
    assert (pos != INDEX).any()  # not always the sample itself
    for b in range(B):  # every same-class row is reachable
        assert set(pos[:, b].tolist()) == set((TARGETS == TARGETS[INDEX[b]]).nonzero().flatten().tolist())


@pytest.mark.parametrize("m", [0.5, 0.3])
def test_bank_update_after_the_loss(m):
    term = make(momentum=m)
    s, t = embeds(4)
    old_s, old_t = term.bank_s.clone(), term.bank_t.clone()
    term.eval()
    term(s, t, batch())
    term.after_step(None, None, None)
    assert torch.equal(term.bank_s, old_s) and torch.equal(term.bank_t, old_t)  # no update in eval
    term.train()
    term(s, t, batch())
    assert torch.equal(term.bank_s, old_s) and torch.equal(term.bank_t, old_t)  # not before the step ends
    term.after_step(None, None, None)
    es, et = embed_bf(term.embed_s, s["embed"]), embed_bf(term.embed_t, t["embed"])
    for old, new, e in ((old_s, term.bank_s, es), (old_t, term.bank_t, et)):
        for b, i in enumerate(INDEX.tolist()):
            row = unit([m * old[i, d] + (1 - m) * e[b][d] for d in range(DIM)])
            assert torch.allclose(new[i], torch.stack(row).detach(), rtol=1e-12)
        rest = torch.ones(N, dtype=torch.bool)
        rest[INDEX] = False
        assert torch.equal(new[rest], old[rest])


def test_bank_init_range():
    term = make()
    bound = 1 / math.sqrt(DIM / 3)
    for bank in (term.bank_s, term.bank_t):
        assert bank.shape == (N, DIM) and bank.abs().max() <= bound and bank.abs().max() > 0.8 * bound


def test_z_is_fixed_on_the_first_batch():
    term = make()
    s1, t1 = embeds(5)
    idx1 = term.sample_contrast(INDEX)
    banks = term.bank_s.clone(), term.bank_t.clone()
    term(s1, t1, batch(idx1))
    _, z = crd_bf(term, s1, t1, idx1, *banks)
    assert torch.allclose(term.Z, torch.stack(z), rtol=1e-12)
    z_first = term.Z.clone()
    s2, t2 = embeds(6)
    idx2 = term.sample_contrast(INDEX)
    banks = term.bank_s.clone(), term.bank_t.clone()
    v2 = term(s2, t2, batch(idx2))
    assert torch.equal(term.Z, z_first)
    ref, _ = crd_bf(term, s2, t2, idx2, *banks, z=z_first)
    assert torch.allclose(v2, ref, rtol=1e-10)


def test_state_dict_holds_banks_and_z_and_reloads():
    term = make(seed=0)
    s, t = embeds(7)
    term(s, t, batch())
    sd = term.state_dict()
    assert {"bank_s", "bank_t", "Z"} <= set(sd) and (sd["Z"] > 0).all()
    assert not any(k.startswith("_") for k in sd)  # class tables are rebuilt by setup
    other = make(seed=1)
    assert not torch.equal(other.bank_s, term.bank_s)
    other.load_state_dict(sd)
    for k, v in term.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)
    idx = term.sample_contrast(INDEX)
    assert torch.equal(term(s, t, batch(idx)), other(s, t, batch(idx)))


def test_config_errors_and_warnings():
    with pytest.raises(ConfigError, match="positive='near'"):
        L.create("crd", positive="near")
    with pytest.raises(ConfigError, match="scoring='dense'"):
        L.create("crd", scoring="dense")
    with pytest.raises(ConfigError, match="single class"):
        make(targets=torch.zeros(N, dtype=torch.long))
    with pytest.warns(UserWarning, match="fewer than num_negatives=1000"):
        make(num_negatives=1000)
    term = make()
    s, t = embeds(8)
    with pytest.raises(ConfigError, match=r"contrast_index.*\(4, 1\)"):
        term(s, t, batch(torch.zeros(B, 1, dtype=torch.long)))


def _ddp_worker(rank, path, out):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    term = make(seed=rank)  # different initial banks: setup broadcasts rank 0's
    s, t = embeds(10 + rank)
    index = INDEX if rank == 0 else torch.tensor([1, 2, 3])
    s = {"embed": s["embed"][: len(index)]}
    t = {"embed": t["embed"][: len(index)]}
    term(s, t, batch(index=index))
    term.after_step(None, None, None)
    torch.save({"bank_s": term.bank_s, "bank_t": term.bank_t, "Z": term.Z}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_banks_are_synchronised_across_ranks(tmp_path):
    ctx = mp.start_processes(_ddp_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=2,
                             start_method="fork", join=False)
    deadline = time.time() + 60
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("bank_s", "bank_t", "Z"):
        assert torch.equal(r0[key], r1[key])
    fresh = make(seed=0)
    changed = (r0["bank_s"] != fresh.bank_s).any(1).nonzero().flatten().tolist()
    assert changed == [0, 1, 2, 3, 5, 10, 17]  # both ranks' rows, on both ranks
