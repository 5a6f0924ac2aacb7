"""Shared numba pieces of the K-quant encoders (Q2_K .. Q6_K).

These follow the search routines of ggml-quants.c step by step, because the goal is
bytes identical to llama.cpp's. Three rules make that hold:

* every value is float32 and every constant is wrapped in np.float32 (a bare Python
  float would promote the expression to float64 and round differently);
* sums run in the C loop order, one float32 rounding per `+=`;
* ints meet floats through an explicit np.float32(...) (numba's int * float32 is
  float64).

`error_model="numpy"` lets a float division by zero give inf/NaN as C does instead of
raising; the flags are otherwise the project's (fastmath off, so LLVM never fuses a*b+c
into an fma). llama.cpp's libggml-base is built for baseline x86-64 without FMA
contraction: tests/kernels/test_kquants.py finds our separately rounded products and
sums byte-identical to its output, and moving a single pair of brackets breaks that.

Super-blocks hold 256 weights (QK_K) split into sub-blocks of 16 or 32.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

from .flags import JIT, PARALLEL, njit
from .half import f16_bits_to_f32, f32_to_f16_bits

KJIT = JIT  # flags.py sets error_model="numpy" for every kernel
KPARALLEL = PARALLEL

QK_K = 256
F0 = np.float32(0.0)
F1 = np.float32(1.0)
MAGIC = np.float32(12582912.0)  # 1.5 * 2**23: adding it leaves round(x) in the low mantissa bits
GROUP_MAX_EPS = np.float32(1e-15)  # below this a group counts as all zero
P01 = np.float32(0.1)


@intrinsic
def _f32_bits_i32(typingctx, x):
    """Reinterpret a float32 as the int32 with the same bits (C's memcpy in nearest_int)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(types.int32))

    return types.int32(types.float32), codegen


@njit(**KJIT)
def nearest_int(f):
    """ggml's rounding: add 1.5*2**23, read the low 23 mantissa bits, re-centre.
    For |f| < 2**22 this is round-half-to-even; outside that range (inf, NaN, huge)
    it yields the same garbage C yields, so we reproduce the bit trick literally."""
    v = np.float32(np.float32(f) + MAGIC)
    bits = np.int64(_f32_bits_i32(v))
    return (bits & 0x7FFFFF) - 0x400000


# The final re-rounding of every K-quant divides each weight by its sub-block's stored
# scale. Dividing inside the rounding loop keeps LLVM from vectorising the divisions; done
# in a loop of their own into a scratch row, then rounded in int32, it runs 6x faster
# (Q3_K: 17 -> 2.7 ms per 2M weights) with the same float32 operations as C's
# nearest_int(x / d): one rounded division, one rounded addition of MAGIC.
@njit(inline="always", **KJIT)
def round_divided(x, start, n, dm, dd, tmp, L, lo, hi, bias):
    """L[start+i] = clamp(nearest_int((x[start+i] + dm) / dd), lo, hi) + bias, i < n.
    dm is None for the symmetric types (C divides x itself: x + 0 would turn -0 into +0)."""
    if dm is None:
        for i in range(n):
            tmp[i] = x[start + i] / dd + MAGIC
    else:
        for i in range(n):
            tmp[i] = (x[start + i] + dm) / dd + MAGIC
    for i in range(n):
        q = (_f32_bits_i32(tmp[i]) & np.int32(0x7FFFFF)) - np.int32(0x400000)
        L[start + i] = max(np.int32(lo), min(np.int32(hi), q)) + np.int32(bias)


@njit(**KJIT)
def put_f16(out, pos, v):
    """Store float32 v as little-endian fp16 at out[pos:pos+2]; return it back as float32
    (the value the decoder will see)."""
    h = f32_to_f16_bits(np.float32(v))
    out[pos] = np.uint8(h & 0xFF)
    out[pos + 1] = np.uint8(h >> 8)
    return f16_bits_to_f32(h)


@njit(**KJIT)
def get_f16(q, pos):
    return f16_bits_to_f32(np.uint16(q[pos]) | (np.uint16(q[pos + 1]) << np.uint16(8)))


# inlined at numba-IR level so nmax becomes a constant in each caller: ~10% on Q6_K
@njit(inline="always", **KJIT)
def make_qx_quants(n, nmax, x, L, qw, has_qw, w, wx):
    """Symmetric scale search (ggml make_qx_quants with rmse_type=1).

    L[i] = nmax + round(x[i]/scale) clipped to [0, 2*nmax-1]. Tries 19 candidate
    inverse scales -(nmax + 0.1*is)/max and keeps the one with the best weighted
    least-squares fit; weights are qw (importance) or x*x. w and wx are scratch
    arrays of n floats (passed in so that the hot loop allocates nothing)."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    # C recomputes w inside every loop; w*x is the same float each time, so the
    # products are hoisted here (a speed-up that cannot change a bit)
    for i in range(n):
        w[i] = qw[i] if has_qw else x[i] * x[i]
        wx[i] = w[i] * x[i]
    fnmax = np.float32(nmax)
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        fl = np.float32(l)
        sumlx += wx[i] * fl
        suml2 += w[i] * fl * fl
    scale = sumlx / suml2 if suml2 != F0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + P01 * np.float32(step)) / mx
        sumlx = F0
        suml2 = F0
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            fl = np.float32(l)
            sumlx += wx[i] * fl
            suml2 += w[i] * fl * fl
        if suml2 > F0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(**KJIT)
def make_q3_quants(n, nmax, x, L):
    """Q3_K's sub-block search (ggml make_q3_quants, do_rmse=true): start from
    round(-nmax*x/max), then up to 5 sweeps moving single values to the level that
    improves the x*x-weighted fit. L gets values 0 .. 2*nmax-1."""
    mx = F0
    amax = F0
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    iscale = np.float32(-nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l
        w = x[i] * x[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fli = np.float32(L[i])
            slx = sumlx - w * x[i] * fli
            if slx > F0:
                sl2 = suml2 - w * fli * fli
                new_l = nearest_int(x[i] * sl2 / slx)
                new_l = max(-nmax, min(nmax - 1, new_l))
                if new_l != L[i]:
                    fnl = np.float32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if sl2 > F0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > F0 else F0


@njit(**KJIT)
def make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad):
    """Asymmetric (scale, min) search: ggml make_qkx2_quants, and make_qkx3_quants
    when called with explicit weights. The two differ only in the flat-group test,
    `max == min` versus `max <= min`; max < min cannot happen (min is the smallest x,
    raised to 0 only when every x is positive), so one routine serves both.

    Tries inverse scales (nmax + rmin + rdelta*is)/(max - min), is = 0..nstep, solves
    the weighted least squares for (scale, min) at each, keeps the lowest error.
    Returns (scale, the_min) with the_min = -min >= 0; L gets 0..nmax."""
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F0:
        mn = F0
    if mx <= mn:
        for i in range(n):
            L[i] = 0
        return F0, -mn
    fnmax = np.float32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    best_error = F0
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        l = max(0, min(nmax, l))
        L[i] = l
        diff = scale * np.float32(l) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    for step in range(nstep + 1):
        iscale = (rmin + rdelta * np.float32(step) + fnmax) / (mx - mn)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            l = nearest_int(iscale * (x[i] - mn))
            l = max(0, min(nmax, l))
            Laux[i] = l
            w = weights[i]
            fl = np.float32(l)
            sum_l += w * fl
            sum_l2 += w * fl * fl
            sum_xl += w * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > F0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > F0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur_error = F0
            for i in range(n):
                diff = this_scale * np.float32(Laux[i]) + this_min - x[i]
                diff = abs(diff) if use_mad else diff * diff
                cur_error += weights[i] * diff
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(**KJIT)
def make_qp_quants(n, nmax, x, L, qw):
    """Quantize n non-negative numbers (sub-block scales or mins) to 0..nmax with one
    float step, weighted by qw (ggml make_qp_quants, used on the importance path).
    L is uint8: C stores its ints there with the same wrap-around."""
    mx = F0
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F0
    fnmax = np.float32(nmax)
    iscale = fnmax / mx
    for i in range(n):
        L[i] = nearest_int(iscale * x[i]) & 0xFF
    scale = F1 / iscale
    best_mse = F0
    for i in range(n):
        diff = x[i] - scale * np.float32(L[i])
        best_mse += qw[i] * diff * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (P01 * np.float32(step) + fnmax) / mx
        scale_is = F1 / iscale_is
        mse = F0
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * np.float32(l)
            mse += qw[i] * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        w = qw[i]
        fl = np.float32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _ in range(5):
        n_changed = 0
        for i in range(n):
            w = qw[i]
            fli = np.float32(L[i])
            slx = sumlx - w * x[i] * fli
            sl2 = suml2 - w * fli * fli
            if slx > F0 and sl2 > F0:
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != np.int64(L[i]):
                    fnl = np.float32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > F0 else F0


# ---- the 12-byte scale/min table shared by Q4_K and Q5_K --------------------------
#
# Eight 6-bit scales s0..s7 and eight 6-bit mins m0..m7 (bit 5 = MSB):
#
#   byte  0..3 : [s4 hi2 | s0..s3 (6 bits)]       bits 7-6 = bits 5-4 of s(j+4)
#   byte  4..7 : [m4 hi2 | m0..m3 (6 bits)]       bits 7-6 = bits 5-4 of m(j+4)
#   byte  8..11: [m(j+4) lo4 | s(j+4) lo4]        high nibble = m, low nibble = s
#
# i.e. sub-blocks 0-3 keep their 6 bits whole; sub-blocks 4-7 are split into a low
# nibble (bytes 8-11) and two high bits parked in the spare top bits of bytes 0-7.


@njit(**KJIT)
def pack_scale_min_k4(ls, lm, out, pos):
    for j in range(8):
        s = ls[j]
        m = lm[j]
        if j < 4:
            out[pos + j] = s
            out[pos + j + 4] = m
        else:
            out[pos + j + 4] = (s & 0xF) | ((m & 0xF) << 4)
            out[pos + j - 4] |= (s >> 4) << 6
            out[pos + j] |= (m >> 4) << 6


@njit(**KJIT)
def get_scale_min_k4(j, q, pos):
    if j < 4:
        return q[pos + j] & 63, q[pos + j + 4] & 63
    sc = (q[pos + j + 4] & 0xF) | ((q[pos + j - 4] >> 6) << 4)
    m = (q[pos + j + 4] >> 4) | ((q[pos + j] >> 6) << 4)
    return sc, m


# ---- 2-bit packing shared by Q2_K and Q3_K ------------------------------------------
#
# 64 bytes for 256 values in two halves of 128; in half h, byte 32*h + l holds
#   bits 1-0: v[128h + l]      bits 3-2: v[128h + l + 32]
#   bits 5-4: v[128h + l + 64] bits 7-6: v[128h + l + 96]


@njit(**KJIT)
def pack_2bit(L, out, pos):
    for h in range(2):
        j = 128 * h
        for l in range(32):
            out[pos + 32 * h + l] = (L[j + l] | (L[j + l + 32] << 2)
                                     | (L[j + l + 64] << 4) | (L[j + l + 96] << 6))
