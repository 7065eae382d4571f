"""m3.eval.fidelity helpers that need no model: the outward float8 rounding of min/max summaries."""

import torch

from m3.eval.fidelity import round_outward_fp8


def test_round_outward_fp8_is_outward_and_on_the_grid():
    x = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, -0.0, 448.0, -448.0, 1e-6, -1e-6, 0.3125])])
    up, down = round_outward_fp8(x, up=True), round_outward_fp8(x, up=False)
    assert (up >= x).all() and (down <= x).all()
    for r in (up, down):  # representable in e4m3: the cast back is exact
        assert torch.equal(r.to(torch.float8_e4m3fn).float(), r)
    exact = x.to(torch.float8_e4m3fn).float() == x  # values already on the grid stay
    assert torch.equal(up[exact], x[exact]) and torch.equal(down[exact], x[exact])
    # the nearest grid points: nothing representable lies strictly between x and its rounding (3 mantissa bits)
    assert ((up - x) <= x.abs() / 8 + 2**-9).all() and ((x - down) <= x.abs() / 8 + 2**-9).all()
    assert float(up[-3]) == 2**-9 and float(down[-2]) == -(2**-9)  # tiny values go to the smallest subnormal


def test_fp8_bound_stays_an_upper_bound():
    # the bound score over outward-rounded summaries is >= the bound over the exact ones, for every query sign
    torch.manual_seed(0)
    keys = torch.randn(6, 16, 2, 8) * 2  # (N, S, Hkv, D)
    kmin, kmax = keys.amin(1), keys.amax(1)
    q = torch.randn(5, 2, 8)
    bound = lambda lo, hi: torch.maximum(q[:, None] * lo[None], q[:, None] * hi[None]).sum(-1)  # (5, N, Hkv)
    exact, rounded = bound(kmin, kmax), bound(round_outward_fp8(kmin, False), round_outward_fp8(kmax, True))
    assert (rounded >= exact).all() and (rounded > exact).any()
    # and the true logits of every key stay below it
    true = torch.einsum("qhd,nshd->qnsh", q, keys).amax(2)
    assert (rounded >= true - 1e-5).all()
