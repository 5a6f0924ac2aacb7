"""NumPy twins of kernels/kquant_common.py.

Every routine works on a stack of groups at once: arrays are (G, n), one row per
sub-block (or per super-block for the scale quantizers), and the Python loops run over
the n positions *inside* a group, in the C order, so each float32 `+=` rounds exactly
where ggml's does (np.sum would sum pairwise and round differently). Decisions that
C makes per group with `if` are np.where masks here.
"""

from __future__ import annotations

import numpy as np

from ..half import f16_bits_to_f32_np, f32_to_f16_bits_np

F32 = np.float32
F0 = F32(0.0)
F1 = F32(1.0)
MAGIC = F32(12582912.0)
GROUP_MAX_EPS = F32(1e-15)
P01 = F32(0.1)


def f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8, little-endian fp16 (round to nearest even)."""
    return f32_to_f16_bits_np(v).astype("<u2").view(np.uint8).reshape(-1, 2)


def from_f16_bytes(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 little-endian fp16 -> (n, 1) float32, ready to broadcast."""
    h = np.ascontiguousarray(b).view("<u2").astype(np.uint16)
    return f16_bits_to_f32_np(h).reshape(-1, 1)


def quiet():
    """Flat groups divide by zero in lanes whose result is then masked away."""
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int bit trick, elementwise, as int64."""
    s = (np.asarray(v, dtype=F32) + MAGIC).astype(F32)
    bits = np.ascontiguousarray(s).view(np.int32).astype(np.int64)
    return (bits & 0x7FFFFF) - 0x400000


def seq_sum(terms: np.ndarray) -> np.ndarray:
    """Sum a (G, n) float32 array along n strictly left to right."""
    acc = np.zeros(terms.shape[0], dtype=F32)
    for i in range(terms.shape[1]):
        acc = acc + terms[:, i]
    return acc


def signed_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, max): the largest |x| and the first x reaching it (strict > as in C)."""
    amax = np.zeros(x.shape[0], F32)
    mx = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):
        ax = np.abs(x[:, i])
        upd = ax > amax
        amax = np.where(upd, ax, amax)
        mx = np.where(upd, x[:, i], mx)
    return amax, mx


def make_qx_quants(x: np.ndarray, nmax: int, qw: np.ndarray | None):
    """Twin of make_qx_quants (rmse_type=1). Returns (L int64 in 0..2nmax-1, scale)."""
    x = x.astype(F32)
    w = qw.astype(F32) if qw is not None else x * x
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS

    def try_scale(iscale):
        l = np.clip(nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        fl = l.astype(F32)
        return l, seq_sum(w * x * fl), seq_sum(w * fl * fl)

    with quiet():
        l, sumlx, suml2 = try_scale(F32(-nmax) / mx)
        L = l + nmax
        scale = np.where(suml2 != 0, sumlx / suml2, F0).astype(F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + P01 * F32(step)) / mx
            l, sumlx, suml2 = try_scale(iscale)
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(upd[:, None], l + nmax, L)
            scale = np.where(upd, sumlx / suml2, scale).astype(F32)
            best = np.where(upd, scale * sumlx, best).astype(F32)
    L = np.where(zero[:, None], 0, L)
    return L, np.where(zero, F0, scale).astype(F32)


def make_q3_quants(x: np.ndarray, nmax: int):
    """Twin of make_q3_quants (do_rmse=true). Returns (L int64 in 0..2nmax-1, scale)."""
    x = x.astype(F32)
    G, n = x.shape
    amax, mx = signed_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    with quiet():
        L = np.clip(nearest_int((F32(-nmax) / mx)[:, None] * x), -nmax, nmax - 1)
        fl = L.astype(F32)
        sumlx = seq_sum(w * x * fl)
        suml2 = seq_sum(w * fl * fl)
        active = ~zero
        for _ in range(5):
            changed = np.zeros(G, bool)
            for i in range(n):
                wi, xi = w[:, i], x[:, i]
                fli = L[:, i].astype(F32)
                slx = sumlx - wi * xi * fli
                sl2 = suml2 - wi * fli * fli
                new_l = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
                fnl = new_l.astype(F32)
                slx2 = slx + wi * xi * fnl
                sl22 = sl2 + wi * fnl * fnl
                ok = (active & (slx > 0) & (new_l != L[:, i]) & (sl22 > 0)
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(ok, new_l, L[:, i])
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
                changed |= ok
            active &= changed  # C breaks out of a group's sweep loop when nothing moved
            if not active.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F0).astype(F32)
    L = np.where(zero[:, None], 0, L + nmax)
    return L, np.where(zero, F0, scale).astype(F32)


def make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """Twin of make_qkx2_quants / make_qkx3_quants (with weights).
    Returns (L int64 in 0..nmax, scale, the_min)."""
    x = x.astype(F32)
    weights = weights.astype(F32)
    G, n = x.shape
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + weights[:, i]
        sum_x = sum_x + weights[:, i] * x[:, i]
    mn = np.where(mn > 0, F0, mn)
    flat = mx <= mn

    def err(scale, mn_, Lf):
        diff = scale[:, None] * Lf + mn_[:, None] - x
        diff = np.abs(diff) if use_mad else diff * diff
        return seq_sum(weights * diff)

    with quiet():
        iscale = F32(nmax) / (mx - mn)
        scale = F1 / iscale
        L = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        best = err(scale, mn, L.astype(F32))
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            Laux = np.clip(nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
            fl = Laux.astype(F32)
            sum_l = seq_sum(weights * fl)
            sum_l2 = seq_sum(weights * fl * fl)
            sum_xl = seq_sum(weights * fl * x)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos_min = this_min > 0
            this_min = np.where(pos_min, F0, this_min)
            this_scale = np.where(pos_min, sum_xl / sum_l2, this_scale).astype(F32)
            cur = err(this_scale, this_min, fl)
            upd = (D > 0) & (cur < best)
            L = np.where(upd[:, None], Laux, L)
            best = np.where(upd, cur, best)
            scale = np.where(upd, this_scale, scale).astype(F32)
            mn = np.where(upd, this_min, mn).astype(F32)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, F0, scale).astype(F32)
    return L, scale, (-mn).astype(F32)


def make_qp_quants(x: np.ndarray, nmax: int, qw: np.ndarray):
    """Twin of make_qp_quants. Returns (L uint8-wrapped as int64, scale)."""
    x = x.astype(F32)
    qw = qw.astype(F32)
    G, n = x.shape
    mx = np.zeros(G, F32)
    for i in range(n):
        mx = np.where(mx > x[:, i], mx, x[:, i])
    zero = mx < GROUP_MAX_EPS
    with quiet():
        iscale = F32(nmax) / mx
        L = nearest_int(iscale[:, None] * x) & 0xFF
        scale = F1 / iscale
        diff = x - scale[:, None] * L.astype(F32)
        best = seq_sum(qw * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (P01 * F32(step) + F32(nmax)) / mx
            scale_is = F1 / iscale_is
            l = np.minimum(nmax, nearest_int(iscale_is[:, None] * x))
            diff = x - scale_is[:, None] * l.astype(F32)
            mse = seq_sum(qw * diff * diff)
            upd = mse < best
            best = np.where(upd, mse, best)
            iscale = np.where(upd, iscale_is, iscale).astype(F32)
        l = np.minimum(nmax, nearest_int(iscale[:, None] * x))
        L = l & 0xFF
        fl = l.astype(F32)  # the sums use the int, the table keeps the wrapped byte
        sumlx = seq_sum(qw * x * fl)
        suml2 = seq_sum(qw * fl * fl)
        active = ~zero
        for _ in range(5):
            changed = np.zeros(G, bool)
            for i in range(n):
                wi, xi = qw[:, i], x[:, i]
                fli = L[:, i].astype(F32)
                slx = sumlx - wi * xi * fli
                sl2 = suml2 - wi * fli * fli
                new_l = np.minimum(nmax, nearest_int(xi * sl2 / slx))
                fnl = new_l.astype(F32)
                slx2 = slx + wi * xi * fnl
                sl22 = sl2 + wi * fnl * fnl
                ok = (active & (slx > 0) & (sl2 > 0) & (new_l != L[:, i])
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                L[:, i] = np.where(ok, new_l & 0xFF, L[:, i])
                sumlx = np.where(ok, slx2, sumlx)
                suml2 = np.where(ok, sl22, suml2)
                changed |= ok
            active &= changed
            if not active.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F0).astype(F32)
    L = np.where(zero[:, None], 0, L)
    return L, np.where(zero, F0, scale).astype(F32)


# ---- Q4_K / Q5_K scale table (layout drawn in kernels/kquant_common.py) ----------


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """(nb, 8) 6-bit scales and mins -> (nb, 12) bytes."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nb, 12) bytes -> (nb, 8) scales, (nb, 8) mins (uint8, 0..63)."""
    lo_s = s[:, 0:4] & 63
    lo_m = s[:, 4:8] & 63
    hi_s = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    hi_m = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return np.concatenate([lo_s, hi_s], axis=1), np.concatenate([lo_m, hi_m], axis=1)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64) bytes (layout drawn in kquant_common.py)."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)
    b = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return b.reshape(-1, 64)


def unpack_2bit(b: np.ndarray) -> np.ndarray:
    """(nb, 64) bytes -> (nb, 256) values 0..3."""
    b = b.reshape(-1, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)
    return ((b >> shifts) & 3).reshape(-1, 256)
