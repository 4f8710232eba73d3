"""Integrators on random tensors: formulas, convergence orders, halting, pass counts, config checks.

No model: a window is a small stub (`Stub`) with `__call__` and `.layers`, e.g. the linear field
g(x) = x + A x (float64) or two tanh residual layers. Each strategy is compared with a plain,
hand-written reference of its formula below (written from docs/design.md and the authors' loop_qwen3.py).
"""
import math

import pytest
import torch

from looping import LoopConfig
from looping import LoopConfigError
from looping.integrators import INTEGRATORS, get_integrator
from tests.looping.formulas import REFS, all_cases, cfgs_for, compose, ref_anderson

B, T, C = 3, 5, 8


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)



# ---- window stubs ----------------------------------------------------------------------------

class Stub:
    """A window made of per-token maps `fns`; counts evaluations and remembers the first input."""

    def __init__(self, fns):
        self.fns, self.layer_calls, self.first = list(fns), 0, None
        self.layers = [self._counted(f) for f in self.fns]

    def _counted(self, f):
        def run(x):
            if self.first is None:
                self.first = x
            self.layer_calls += 1
            return f(x)
        return run

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def passes(self):
        return self.layer_calls / len(self.layers)


def linear_layer(A):
    return lambda x: x + x @ A.T


def tanh_layers(seed=0, width=C, n=2):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        W = torch.randn(width, width, generator=gen, dtype=torch.float64) / math.sqrt(width)
        b = 0.1 * torch.randn(width, generator=gen, dtype=torch.float64)
        out.append(lambda x, W=W, b=b: x + 0.5 * torch.tanh(x @ W.T + b))
    return out


def rand(*shape, seed=1, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(name, fns, x0, valid=None, **cfg):
    cfg = LoopConfig(k=cfg.pop("k"), integrator=name, **cfg)
    stub = Stub(fns)
    res = get_integrator(name).fn(stub, x0, cfg, valid)
    return res, stub, cfg


CASES = list(all_cases())


# ---- every strategy equals its formula ---------------------------------------------------------

def test_every_registered_integrator_has_a_reference():
    assert set(REFS) == set(INTEGRATORS), set(REFS) ^ set(INTEGRATORS)


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_equals_reference_formula(name, extra):
    fns, x0 = tanh_layers(), rand(B, T, C)
    before = x0.clone()
    res, stub, cfg = run(name, fns, x0, **extra)
    assert torch.equal(x0, before), f"{name} modified its input in place"
    ref = REFS[name](fns, x0, cfg)
    diff = (res.out - ref).abs().max().item()
    assert diff <= 1e-10, f"{name} {extra}: max |diff| {diff:.3g}, mean {(res.out - ref).abs().mean():.3g}"
    assert res.out.dtype == x0.dtype and res.out.shape == x0.shape
    assert stub.first is x0, f"{name}: first evaluation was not g(x0) on the tensor it received"
    assert stub.passes == get_integrator(name).passes(cfg), (name, stub.passes, get_integrator(name).passes(cfg))
    assert res.steps is None  # halting off


def test_anchored_beta1_passes_and_value():
    fns, x0 = tanh_layers(), rand(B, T, C)
    res, stub, cfg = run("anchored", fns, x0, k=5, beta=1.0)
    assert torch.equal(res.out, compose(fns)(x0)) and stub.passes == get_integrator("anchored").passes(cfg) == 1


# ---- linear field: exact forms and convergence orders -----------------------------------------

def linear_case(seed=3):
    A = rand(C, C, seed=seed)
    A = 0.5 * A / torch.linalg.matrix_norm(A, ord=2)
    return A, rand(2, 3, C, seed=seed + 1)


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("midpoint", 2), ("rk4", 4)])
def test_convergence_order_on_a_linear_field(name, order):
    A, x0 = linear_case()
    exact = x0 @ torch.linalg.matrix_exp(A).T
    ks, errs = [4, 8, 16, 32], []
    for k in ks:
        res, _, _ = run(name, [linear_layer(A)], x0, k=k)
        errs.append((res.out - exact).norm().item())
    lx, ly = torch.tensor(ks).log(), torch.tensor(errs).log()
    slope = (((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()).item()
    assert abs(slope + order) <= 0.15, f"{name}: slope {slope:.3f}, expected {-order}; errors {errs}"


@pytest.mark.parametrize("k", [1, 2, 5])
def test_linear_naive_and_anchored_closed_forms(k):
    A, x0 = linear_case()
    eye = torch.eye(C)
    res, _, _ = run("naive", [linear_layer(A)], x0, k=k)
    ref = x0 @ torch.linalg.matrix_power(eye + A, k).T
    assert (res.out - ref).abs().max() <= 1e-12
    for beta in (0.0, 0.5, 0.8):
        anc, _, _ = run("anchored", [linear_layer(A)], x0, k=k, beta=beta)
        eul, _, _ = run("euler", [linear_layer(A)], x0, k=k)
        ref = beta * (x0 + x0 @ A.T) + (1 - beta) * eul.out
        assert (anc.out - ref).abs().max() <= 1e-12, f"beta={beta}"
        # the Euler endpoint itself is (I + A/K)^K x0
        assert (eul.out - x0 @ torch.linalg.matrix_power(eye + A / k, k).T).abs().max() <= 1e-12


def test_k1_and_beta1_are_exactly_the_natural_pass():
    fns, x0 = tanh_layers(), rand(B, T, C)
    natural = compose(fns)(x0)
    for name, extra in [("naive", dict(k=1)), ("euler", dict(k=1)), ("anchored", dict(k=1)),
                        ("anchored", dict(k=3, beta=1.0)), ("uniform", dict(k=1))]:
        res, _, _ = run(name, fns, x0, **extra)
        assert torch.equal(res.out, natural), f"{name} {extra}: max |diff| {(res.out - natural).abs().max():.3g}"
    x32 = x0.float()
    fns32 = [lambda x: torch.tanh(x) * 1.3 + x]
    for name, extra in [("naive", dict(k=1)), ("euler", dict(k=1)), ("anchored", dict(k=3, beta=1.0))]:
        res, _, _ = run(name, fns32, x32, **extra)
        assert torch.equal(res.out, compose(fns32)(x32)), f"{name} {extra} fp32"


def test_aitken_branches_on_known_fields():
    """Oscillating contraction (c = -0.5): one Aitken step lands on the fixed point exactly (step
    |x - p| < |d1|, unclipped). Monotone contraction (c = 0.5): the step |d1|/(1-c) is clipped to
    |d1|, i.e. x <- g(x). Pure translation (d2 = 0): the safeguard falls back to x <- g(x)."""
    p = rand(1, 1, 3, seed=2)
    cs = torch.tensor([-0.5, 0.5, 1.0])
    shift = torch.tensor([0.0, 0.0, 0.3])
    g = lambda x: p + cs * (x - p) + shift  # noqa: E731
    x0 = rand(1, 4, 3, seed=3)
    res, _, _ = run("aitken", [g], x0, k=2)
    assert (res.out[..., 0] - p[..., 0].expand(1, 4)).abs().max() <= 1e-12
    assert (res.out[..., 1:] - g(x0)[..., 1:]).abs().max() <= 1e-12


# ---- halting -------------------------------------------------------------------------------

def contraction(c, p):
    """g(x) = p + c (x - p), c of shape (rows, 1, 1): each row converges at its own rate."""
    return lambda x: p + c * (x - p)


def contraction_case():
    c = torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1)
    p = torch.zeros(3, 1, C)
    p[..., 0] = 2.0                     # fixed point along channel 0 (same for every token)
    x0 = rand(3, T, C, seed=7, scale=0.3)
    x0[..., 0] = 2.0                    # x0 - p is orthogonal to p: ||x_k||^2 = ||p||^2 + c^2k ||d||^2
    return c, p, x0


def expected_naive_steps(c, p, x0, tau, k):
    """First step n with ||x_n - x_{n-1}|| / ||x_{n-1}|| < tau (closed form), else K."""
    d, pn = (x0 - p).norm().item(), p.expand_as(x0).norm().item()
    for n in range(1, k + 1):
        ratio = abs(c - 1) * c ** (n - 1) * d / math.sqrt(pn ** 2 + c ** (2 * (n - 1)) * d ** 2)
        if ratio < tau:
            return n
    return k


def test_rows_halt_at_the_steps_the_tolerance_implies():
    c, p, x0 = contraction_case()
    tau, k = 1e-3, 12
    res, stub, _ = run("naive", [contraction(c, p)], x0, k=k, halt_tau=tau)
    want = [expected_naive_steps(c[r].item(), p[r], x0[r], tau, k) for r in range(3)]
    assert res.steps.tolist() == want and len(set(want)) == 3, (res.steps.tolist(), want)
    assert stub.passes == max(want)  # stops evaluating once every row halted
    for r in range(3):
        closed = p[r] + c[r] ** want[r] * (x0[r] - p[r])
        assert (res.out[r] - closed).abs().max() <= 1e-12


HALTING = [n for n, s in INTEGRATORS.items() if s.halting]


@pytest.mark.parametrize("name", HALTING)
def test_halting_rows_equal_rows_run_alone_also_padded(name):
    c, p, x0 = contraction_case()

    def fns(rows):
        # per-token maps: contraction to p plus a mild nonlinearity (elementwise: rows independent)
        cr, pr = c[rows], p[rows]
        return [lambda x: contraction(cr, pr)(x) + 0.05 * torch.tanh(x),
                lambda x: x + 0.02 * torch.sin(x)]

    # row 1 carries two padded tokens with garbage values
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, :2] = False
    xb = x0.clone()
    xb[1, :2] = 1e3 * rand(2, C, seed=11)
    seen = set()
    for tau in (1e-1, 5e-2, 2e-2, 1e-2, 1e-4):
        extra = dict(k=4 if name == "aitken" else 6, halt_tau=tau)
        if name == "ema_sched":
            extra["schedule"] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
        res, _, _ = run(name, fns([0, 1, 2]), xb, valid=valid, **extra)
        assert res.steps is not None and res.steps.shape == (3,)
        seen.add(len(set(res.steps.tolist())))
        for r in range(3):
            keep = valid[r]
            alone, _, _ = run(name, fns([r]), x0[r:r + 1, keep], **extra)
            diff = (alone.out[0] - res.out[r, keep]).abs().max().item()
            assert diff <= 1e-12, f"{name} tau={tau} row {r}: max |diff| {diff:.3g} vs the row run alone"
            assert alone.steps.tolist() == [res.steps[r].item()], (name, tau, r, alone.steps, res.steps)
    assert max(seen) > 1, f"{name}: no tolerance made the rows halt at different steps"


def test_halting_never_triggered_gives_k_steps_and_same_output():
    fns, x0 = tanh_layers(), rand(B, T, C)
    for name in HALTING:
        extra = cfgs_for(name, 2 if name == "aitken" else 3)[0]
        res, _, _ = run(name, fns, x0, halt_tau=1e-12, **extra)
        plain, _, _ = run(name, fns, x0, **extra)
        assert torch.equal(res.out, plain.out), name
        steps = extra["k"] // 2 if name == "aitken" else extra["k"]
        assert res.steps.tolist() == [steps] * B, (name, res.steps)


# ---- anderson: per-row least squares --------------------------------------------------------

@pytest.mark.parametrize("m,beta", [(1, 1.0), (2, 1.0), (3, 0.6)])
def test_anderson_rows_are_independent(m, beta):
    fns, x0 = tanh_layers(seed=5), rand(4, T, C, seed=9)
    x0[2] *= 3.0  # rows on very different scales would pull a shared least squares apart
    res, _, cfg = run("anderson", fns, x0, k=5, anderson_m=m, anderson_beta=beta)
    for r in range(4):
        alone, _, _ = run("anderson", fns, x0[r:r + 1], k=5, anderson_m=m, anderson_beta=beta)
        diff = (alone.out[0] - res.out[r]).abs().max().item()
        assert diff <= 1e-12, f"row {r}: max |diff| {diff:.3g}"
    ref = ref_anderson(fns, x0, cfg)
    assert (res.out - ref).abs().max() <= 1e-10


def test_anderson_ignores_padded_tokens():
    fns, x0 = tanh_layers(seed=5), rand(3, T, C, seed=9)
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[0, :3] = False
    valid[2, :1] = False
    garbage = x0.clone()
    garbage[~valid] = 50.0 * rand(int((~valid).sum()), C, seed=4)
    res, _, cfg = run("anderson", fns, garbage, valid=valid, k=5)
    ref = ref_anderson(fns, garbage, cfg, valid)
    assert (res.out[valid] - ref[valid]).abs().max() <= 1e-10
    for r in range(3):
        alone, _, _ = run("anderson", fns, x0[r:r + 1, valid[r]], k=5)
        diff = (alone.out[0] - res.out[r, valid[r]]).abs().max().item()
        assert diff <= 1e-12, f"row {r}: max |diff| {diff:.3g}"


def test_low_precision_inputs_keep_their_dtype():
    fns = [lambda x: x + 0.5 * torch.tanh(x)]
    x0 = rand(2, T, C).to(torch.bfloat16)
    for name, extra in CASES:
        res, _, cfg = run(name, fns, x0, **extra)
        assert res.out.dtype == torch.bfloat16 and torch.isfinite(res.out).all(), name
        if name in ("aitken", "anderson"):
            continue  # acceleration divides by second differences: bf16 rounding flips its branches
        ref = REFS[name](fns, x0.double(), cfg)
        rel = ((res.out.double() - ref).abs().max() / ref.abs().max()).item()
        assert rel <= 0.1, f"{name} {extra}: bf16 vs float64 reference, max relative diff {rel:.3g}"


# ---- config constraints ---------------------------------------------------------------------

def test_spec_metadata():
    assert INTEGRATORS["uniform"].dense_only
    assert [n for n, s in INTEGRATORS.items() if s.dense_only] == ["uniform"]
    assert {n for n, s in INTEGRATORS.items() if not s.halting} == {"residual_scaled", "poly_blend", "norm_interp"}
    passes = {n: INTEGRATORS[n].passes(LoopConfig(k=4, integrator=n, **(
        {"schedule": (0.25,) * 4} if n == "ema_sched" else {"schedule": (0.2,) * 5} if n == "poly_blend" else {})))
        for n in INTEGRATORS}
    assert passes == {**{n: 4 for n in INTEGRATORS}, "heun": 8, "midpoint": 8, "rk4": 16}
    for n, s in INTEGRATORS.items():
        assert "loop_qwen3.py" in s.doc, f"{n}: docstring must cite the authors' code"


@pytest.mark.parametrize("kwargs,match", [
    (dict(integrator="aitken", k=3), r"k must be even; got k=3"),
    (dict(integrator="aitken", k=1), r"k must be even; got k=1"),
    (dict(integrator="ema_sched", k=3, schedule=(0.5, 0.5)), r"schedule of length 3.*got 2 values"),
    (dict(integrator="ema_sched", k=2), r"schedule of length 2.*got none"),
    (dict(integrator="poly_blend", k=2, schedule=(0.5, 0.5)), r"schedule of length 3.*got 2 values"),
    (dict(integrator="poly_blend", k=2, schedule=(0.5, 0.5, 0.5)), r"sum to 1.*sums to 1\.5"),
    (dict(integrator="residual_scaled", k=3, halt_tau=0.01), r"does not support early halting.*naive"),
    (dict(integrator="poly_blend", k=1, schedule=(0.5, 0.5), halt_tau=0.01), r"does not support early halting"),
    (dict(integrator="norm_interp", k=3, halt_tau=0.01), r"does not support early halting"),
    (dict(integrator="rk5", k=3), r"unknown integrator 'rk5'.*Did you mean 'rk4'"),
])
def test_bad_configs_raise_helpful_errors(kwargs, match):
    with pytest.raises(LoopConfigError, match=match):
        LoopConfig(**kwargs)


def test_good_configs_pass():
    LoopConfig(integrator="aitken", k=4)
    LoopConfig(integrator="ema_sched", k=2, schedule="0.5 0.3")
    LoopConfig(integrator="poly_blend", k=2, schedule=(0.1, 0.2, 0.7))
    LoopConfig(integrator="poly_blend", k=2, schedule=(0.1, 0.2, 0.7 + 5e-7))


# ---- halt_scope='batch': the authors' rule ------------------------------------------------------

def authors_batch_rule_ema(fns, x0, valid, a, k, tau):
    """loop_qwen3.py's `ema` with `_halted`, written out: one ratio ||x_new - x|| / ||x|| over the
    whole batch (here over the real tokens only), every row stops at the same step."""
    g = compose(fns)
    keep = valid[..., None].to(x0.dtype)
    x = x0
    for step in range(1, k + 1):
        x_new = a * g(x) + (1 - a) * x
        ratio = ((x_new - x) * keep).norm() / (x * keep).norm().clamp_min(1e-6)
        if ratio < tau:
            return x_new, step
        x = x_new
    return x, k


def test_halt_scope_batch_equals_the_authors_batch_rule():
    c, p, x0 = contraction_case()
    fns = [lambda x: contraction(c, p)(x) + 0.05 * torch.tanh(x)]
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, :2] = False
    xb = x0.clone()
    xb[1, :2] = 1e3 * rand(2, C, seed=11)        # padding: excluded from the batch ratio
    steps_seen = set()
    for tau in (1e-1, 3e-2, 1e-2, 1e-3):
        res, _, _ = run("ema", fns, xb, valid=valid, k=12, halt_tau=tau, halt_scope="batch")
        want, steps = authors_batch_rule_ema(fns, xb, valid, 0.5, 12, tau)
        assert res.steps.tolist() == [steps] * 3, (tau, res.steps, steps)
        d = (res.out - want)[valid].abs().max().item()
        assert d <= 1e-12, f"tau={tau}: batch scope vs the authors' rule, max |diff| {d:.3g}"
        steps_seen.add(steps)
        row, _, _ = run("ema", fns, xb, valid=valid, k=12, halt_tau=tau)     # per-row differs
        if len(set(row.steps.tolist())) > 1:
            assert (row.out - res.out)[valid].abs().max() > 1e-9
    assert len(steps_seen) > 1


def test_halt_scope_without_halting_is_refused_or_normalised():
    with pytest.raises(LoopConfigError, match=r"halt_scope='batch' has no effect without halt_tau"):
        LoopConfig(integrator="euler", k=3, halt_scope="batch")
    cfg = LoopConfig.from_dict({"integrator": "euler", "k": 3, "halt_scope": "batch"}, strict=False)
    assert cfg == LoopConfig(integrator="euler", k=3) and cfg.normalised == (("halt_scope", "batch"),)


# ---- no accepted option is silently ignored ------------------------------------------------------

OPTION_VALUES = {  # a valid non-default value of every strategy option (for every integrator)
    "alpha": 1.5, "beta": 0.2, "ema_alpha": 0.3, "momentum": 0.6, "anderson_m": 1,
    "anderson_beta": 0.7, "anchor_rescale": True,
}


def base_kwargs(name, k):
    out = dict(k=k, integrator=name)
    if name == "ema_sched":
        out["schedule"] = (0.5,) * k
    if name == "poly_blend":
        out["schedule"] = tuple([1.0 / (k + 1)] * (k + 1))
    return out


@pytest.mark.parametrize("name", sorted(INTEGRATORS))
@pytest.mark.parametrize("option", sorted(OPTION_VALUES) + ["schedule"])
def test_every_option_is_read_or_refused(name, option):
    """For each integrator x option: either the option changes the output, or a non-default value
    is refused (naming the integrators that read it) and normalised away for sweeps."""
    k = 4
    base = base_kwargs(name, k)
    if option == "schedule":
        value = (0.3,) * k if name != "poly_blend" else (0.1, 0.2, 0.3, 0.2, 0.2)
    else:
        value = OPTION_VALUES[option]
    spec = INTEGRATORS[name]
    fns, x0 = tanh_layers(seed=3), rand(B, T, C, seed=4)
    if option in spec.uses:
        a, _, _ = run(name, fns, x0, **{k_: v for k_, v in base.items() if k_ != "integrator"})
        changed = {**base, option: value}
        b, _, _ = run(name, fns, x0, **{k_: v for k_, v in changed.items() if k_ != "integrator"})
        assert (a.out - b.out).abs().max() > 1e-9, f"{name}: {option}={value!r} changed nothing"
    else:
        with pytest.raises(LoopConfigError, match=rf"{option}=.* has no effect with integrator "
                                                  rf"'{name}'; {option} is read by: "):
            LoopConfig(**base, **{option: value})
        cfg = LoopConfig.from_dict({**base, option: value}, strict=False)
        assert cfg == LoopConfig(**base) and [n for n, _ in cfg.normalised] == [option]


def test_decode_n_and_mode_rules():
    with pytest.raises(LoopConfigError, match=r"decode_n=8 has no effect with decode='full'"):
        LoopConfig(decode_n=8)
    assert LoopConfig(decode="first_n", decode_n=8).decode_n == 8
    assert LoopConfig.from_dict({"decode_n": 8}, strict=False) == LoopConfig()
    with pytest.raises(LoopConfigError, match=r"'uniform' iterates the whole window"):
        LoopConfig(integrator="uniform", k=2, mode="layer")
    assert LoopConfig.from_dict({"integrator": "uniform", "k": 2, "mode": "layer"},
                                strict=False).mode == "block"


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=1025), r"k=1025 must be <= 1024"),
    (dict(integrator="heavy_ball", momentum=1.0), r"momentum=1.0 must lie in \[0, 1\)"),
    (dict(integrator="heavy_ball", momentum=-0.1), r"momentum=-0.1 must lie in \[0, 1\)"),
    (dict(integrator="anderson", anderson_beta=0.0), r"anderson_beta=0.0 must lie in \(0, 2\]"),
    (dict(integrator="anderson", anderson_m=17), r"anderson_m=17 must be <= 16"),
    (dict(integrator="euler", halt_tau=2.0), r"halt_tau=2.0 must be <= 1"),
    (dict(integrator="ema", ema_alpha=1.5), r"ema_alpha=1.5 must lie in \(0, 1\]"),
    (dict(integrator="euler", halt_tau=0.1, halt_scope="batches"), r"unknown halt_scope 'batches'"),
])
def test_numeric_ranges(kwargs, match):
    with pytest.raises(LoopConfigError, match=match):
        LoopConfig(**kwargs)


def test_norm_stab_stays_finite_on_huge_states():
    """Token norms of ~1e30 overflow a plain fp32 sum of squares; norm_stab (and every rescale)
    stays finite wherever its inputs are."""
    fns = [lambda x: x + 0.5 * torch.tanh(x)]
    x0 = rand(B, T, C, seed=5).float() * 1e29
    res, _, _ = run("norm_stab", fns, x0, k=3)
    assert torch.isfinite(res.out).all()
    ratio = res.out.double().norm(dim=-1) / x0.double().norm(dim=-1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)   # the entry norm is kept
