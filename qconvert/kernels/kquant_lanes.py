"""The K-quant scale searches run on many sub-blocks at once ("lanes"), numba side.

llama.cpp searches one sub-block at a time, and inside one sub-block every float32 sum
must run in C's order, so the search cannot be vectorised along a sub-block. Sub-blocks
are independent of each other, though. Here NL of them (several super-blocks' worth)
are laid out transposed, xt[i, lane] = element i of sub-block `lane`, and every loop
runs over the lanes innermost with a fixed trip count: each lane performs exactly the
scalar routine's sequence of float32 operations (so the bytes stay llama.cpp's), while
LLVM turns the lane loop into AVX2/AVX-512 vector code. Branches of the scalar routine
become per-lane selects; decisions the scalar code takes by `if` are kept in `par` rows.

The per-lane arrays live in rows of a few 2-D scratch arrays (see `lane_scratch`) rather
than in many 1-D ones: fewer distinct arrays means fewer run-time overlap checks in the
vectorised loops. Scratch is allocated once per parallel work item, never per block.

A searched quant row L is a pure function of the inverse scale (and, for the asymmetric
search, the minimum) that produced it, so the searches remember the best (iscale, min)
per lane and quantize once at the end instead of copying candidate rows around.

NumPy twins of the whole encoders are in kernels/reference (they already work on stacks
of sub-blocks); tests/kernels/test_kquants.py holds both to llama.cpp's bytes.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from .kquant_common import F0, F1, GROUP_MAX_EPS, KJIT, MAGIC, P01, _f32_bits_i32, njit

NL = 64  # lanes per search: 4 AVX-512 or 8 AVX2 vectors of float32
NPAR = 24  # per-lane scalar rows in `par`


@njit(inline="always", **KJIT)
def near32(f):
    """kquant_common.nearest_int in int32, so that it vectorises 16 (not 8) wide."""
    v = np.float32(f + MAGIC)
    return np.int32(np.int32(_f32_bits_i32(v) & np.int32(0x7FFFFF)) - np.int32(0x400000))


@njit(**KJIT)
def lane_scratch(n):
    """(xt, wt, ft, par, acc, Lt) for sub-blocks of n: inputs, weights, a candidate's
    quants as floats, per-lane scalars, per-lane sums, the result quants."""
    return (np.zeros((n, NL), np.float32), np.zeros((n, NL), np.float32),
            np.zeros((n, NL), np.float32), np.zeros((NPAR, NL), np.float32),
            np.zeros((4, NL), np.float32), np.zeros((n, NL), np.int32))


# par rows of qkx_lanes; _MN .. _BMN are pairs, the current value in row + parity
# (see absmax_lanes for why); the results go to rows 6 (scale) and 0 (the_min)
_MX, _SW, _SX, _ISC, _TSC, _TMN, _ERR, _D, _MN0 = 1, 2, 3, 4, 9, 10, 11, 12, 13
_MN, _BEST, _SCALE, _BISC, _BMN = 14, 16, 18, 20, 22


@njit(**KJIT)
def qkx_lanes(n, nmax, xt, wt, rmin, rdelta, nstep, use_mad, ft, par, acc, Lt):
    """kquant_common.make_qkx_quants on NL lanes of n elements (weights wt).
    Leaves each lane's scale in par[6] and the_min (= -min >= 0) in par[0], its quants
    0..nmax in Lt."""
    fnmax = np.float32(nmax)
    inmax = np.int32(nmax)
    izero = np.int32(0)
    for k in range(NL):
        par[_MN, k] = xt[0, k]
        par[_BEST, k] = xt[0, k]  # the running max until the search starts
        par[_SW, k] = wt[0, k]
        par[_SX, k] = wt[0, k] * xt[0, k]
    for i in range(1, n):
        r = (i - 1) & 1
        for k in range(NL):
            x = xt[i, k]
            w = wt[i, k]
            mn = par[_MN + r, k]
            mx = par[_BEST + r, k]
            par[_MN + 1 - r, k] = x if x < mn else mn
            par[_BEST + 1 - r, k] = x if x > mx else mx
            par[_SW, k] += w
            par[_SX, k] += w * x
    r = (n - 1) & 1
    for k in range(NL):
        mn = par[_MN + r, k]
        mn = F0 if mn > F0 else mn
        mx = par[_BEST + r, k]
        par[_MX, k] = mx
        par[_MN, k] = mn
        par[_MN0, k] = mn
        isc = fnmax / (mx - mn)
        par[_BISC, k] = isc
        par[_BMN, k] = mn
        par[_SCALE, k] = F1 / isc
        par[_BEST, k] = F0
    for i in range(n):
        for k in range(NL):
            x = xt[i, k]
            mn = par[_MN, k]
            l = max(izero, min(inmax, near32(par[_BISC, k] * (x - mn))))
            diff = par[_SCALE, k] * np.float32(l) + mn - x
            diff = abs(diff) if use_mad else diff * diff
            par[_BEST, k] += wt[i, k] * diff
    r = 0
    if nstep >= 1:
        for step in range(nstep + 1):
            _qkx_step(n, fnmax, inmax, xt, wt, rmin + rdelta * np.float32(step) + fnmax,
                      use_mad, ft, par, acc, r)
            r = 1 - r
    for i in range(n):
        for k in range(NL):
            l = max(izero, min(inmax, near32(par[_BISC + r, k] * (xt[i, k] - par[_BMN + r, k]))))
            # a flat lane (max == min) keeps L = 0, scale 0 and its first min
            Lt[i, k] = izero if par[_MX, k] <= par[_MN0, k] else l
    for k in range(NL):
        flat = par[_MX, k] <= par[_MN0, k]
        par[6, k] = F0 if flat else par[_SCALE + r, k]
        par[0, k] = -(par[_MN0, k] if flat else par[_MN + r, k])


@njit(inline="always", **KJIT)
def _qkx_step(n, fnmax, inmax, xt, wt, num, use_mad, ft, par, acc, r):
    """One candidate inverse scale num/(max - min) of make_qkx_quants, in every lane;
    the running values are read from rows + r and written to rows + 1 - r."""
    izero = np.int32(0)
    for k in range(NL):
        par[_ISC, k] = num / (par[_MX, k] - par[_MN + r, k])
        acc[0, k] = F0
        acc[1, k] = F0
        acc[2, k] = F0
    for i in range(n):
        for k in range(NL):
            x = xt[i, k]
            w = wt[i, k]
            l = max(izero, min(inmax, near32(par[_ISC, k] * (x - par[_MN + r, k]))))
            fl = np.float32(l)
            ft[i, k] = fl
            acc[0, k] += w * fl
            acc[1, k] += w * fl * fl
            acc[2, k] += w * fl * x
    for k in range(NL):
        sl = acc[0, k]
        sl2 = acc[1, k]
        sxl = acc[2, k]
        sw = par[_SW, k]
        sx = par[_SX, k]
        D = sw * sl2 - sl * sl
        tsc = (sw * sxl - sx * sl) / D
        tmn = (sl2 * sx - sl * sxl) / D
        pos = tmn > F0
        par[_TSC, k] = sxl / sl2 if pos else tsc
        par[_TMN, k] = F0 if pos else tmn
        par[_D, k] = D
        par[_ERR, k] = F0
    for i in range(n):
        for k in range(NL):
            diff = par[_TSC, k] * ft[i, k] + par[_TMN, k] - xt[i, k]
            diff = abs(diff) if use_mad else diff * diff
            par[_ERR, k] += wt[i, k] * diff
    w_ = 1 - r
    for k in range(NL):
        better = (par[_D, k] > F0) & (par[_ERR, k] < par[_BEST + r, k])
        par[_BEST + w_, k] = par[_ERR, k] if better else par[_BEST + r, k]
        par[_SCALE + w_, k] = par[_TSC, k] if better else par[_SCALE + r, k]
        par[_BISC + w_, k] = par[_ISC, k] if better else par[_BISC + r, k]
        par[_BMN + w_, k] = par[_MN + r, k] if better else par[_BMN + r, k]
        par[_MN + w_, k] = par[_TMN, k] if better else par[_MN + r, k]


# par rows of qx_lanes (and, the first three, of q3_lanes); pairs as in qkx_lanes
_AMAX, _XMAX, _QSCALE, _QISC = 0, 1, 2, 5
_QSC, _QBEST, _QBISC = 6, 8, 10


@njit(**KJIT)
def qx_lanes(n, nmax, xt, wt, ft, par, acc, Lt):
    """kquant_common.make_qx_quants (rmse_type 1) on NL lanes of n elements, weights wt
    (the importance, or x*x). ft is scratch for w*x. Leaves each lane's scale in par[2]
    and its quants 0..2*nmax-1 in Lt."""
    fnmax = np.float32(nmax)
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    absmax_lanes(n, xt, par)
    for i in range(n):
        for k in range(NL):
            ft[i, k] = wt[i, k] * xt[i, k]
    for k in range(NL):
        par[_QBISC, k] = np.float32(-nmax) / par[_XMAX, k]
        acc[0, k] = F0
        acc[1, k] = F0
    _qx_sums(n, lo, hi, xt, wt, ft, par[_QBISC], acc)
    for k in range(NL):
        sumlx = acc[0, k]
        suml2 = acc[1, k]
        scale = sumlx / suml2 if suml2 != F0 else F0
        par[_QSC, k] = scale
        par[_QBEST, k] = scale * sumlx
    isc = par[_QISC]
    r = 0
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(fnmax + P01 * np.float32(step))
        for k in range(NL):
            isc[k] = num / par[_XMAX, k]
            acc[0, k] = F0
            acc[1, k] = F0
        _qx_sums(n, lo, hi, xt, wt, ft, isc, acc)
        w_ = 1 - r
        for k in range(NL):
            sumlx = acc[0, k]
            suml2 = acc[1, k]
            better = (suml2 > F0) & (sumlx * sumlx > par[_QBEST + r, k] * suml2)
            scale = sumlx / suml2
            par[_QSC + w_, k] = scale if better else par[_QSC + r, k]
            par[_QBEST + w_, k] = scale * sumlx if better else par[_QBEST + r, k]
            par[_QBISC + w_, k] = isc[k] if better else par[_QBISC + r, k]
        r = w_
    for i in range(n):
        for k in range(NL):
            l = max(lo, min(hi, near32(par[_QBISC + r, k] * xt[i, k])))
            Lt[i, k] = np.int32(0) if par[_AMAX, k] < GROUP_MAX_EPS else l - lo
    for k in range(NL):
        par[_QSCALE, k] = F0 if par[_AMAX, k] < GROUP_MAX_EPS else par[_QSC + r, k]


@njit(inline="always", **KJIT)
def _qx_sums(n, lo, hi, xt, wt, wxt, isc, acc):
    """acc[0] = sum w*x*l, acc[1] = sum w*l*l for l = clamp(round(isc*x)), per lane."""
    for i in range(n):
        for k in range(NL):
            fl = np.float32(max(lo, min(hi, near32(isc[k] * xt[i, k]))))
            acc[0, k] += wxt[i, k] * fl
            acc[1, k] += wt[i, k] * fl * fl


# further par rows of q3_lanes: _SUMLX and _SUML2 are pairs (see absmax_lanes)
_Q3ISC, _SUMLX, _SUML2, _CHANGED = 4, 8, 10, 12


@njit(**KJIT)
def absmax_lanes(n, xt, par):
    """par[0] = the largest |x| of each lane, par[1] = the first x reaching it (C's
    strict >). A running value updated by select goes through two rows, read from one
    and written to the other in turn: a store of select(c, v, the stored value) back to
    the same place becomes a masked vector store, which stalls the next load of that
    place (3-9x slower on the test machine's AVX-512)."""
    for k in range(NL):
        par[16, k] = F0
        par[18, k] = F0
    for i in range(n):
        r = i & 1
        for k in range(NL):
            x = xt[i, k]
            ax = abs(x)
            old = par[16 + r, k]
            up = ax > old
            par[17 - r, k] = ax if up else old
            par[19 - r, k] = x if up else par[18 + r, k]
    r = n & 1
    for k in range(NL):
        par[_AMAX, k] = par[16 + r, k]
        par[_XMAX, k] = par[18 + r, k]


@njit(**KJIT)
def q3_lanes(n, nmax, xt, wt, ft, par, Lt):
    """kquant_common.make_q3_quants on NL lanes of n elements. Leaves each lane's scale
    in par[2] and its quants 0..2*nmax-1 in Lt; wt and ft are scratch. A sweep that
    changes nothing in a lane would change nothing again, so lanes simply run until
    none changes (C stops each sub-block at its first quiet sweep; same result).
    The quants (as floats) and the two sums alternate between two copies, see
    absmax_lanes for why."""
    lo = np.int32(-nmax)
    hi = np.int32(nmax - 1)
    absmax_lanes(n, xt, par)
    for k in range(NL):
        par[_Q3ISC, k] = np.float32(-nmax) / par[_XMAX, k]
        par[_SUMLX, k] = F0
        par[_SUML2, k] = F0
    for i in range(n):
        for k in range(NL):
            x = xt[i, k]
            fl = np.float32(max(lo, min(hi, near32(par[_Q3ISC, k] * x))))
            ft[i, k] = fl
            w = x * x
            par[_SUMLX, k] += w * x * fl
            par[_SUML2, k] += w * fl * fl
    cur = ft
    nxt = wt
    t = 0
    for _ in range(5):
        for k in range(NL):
            par[_CHANGED, k] = F0
        for i in range(n):
            r = t & 1
            t += 1
            for k in range(NL):
                x = xt[i, k]
                w = x * x
                fli = cur[i, k]
                sumlx = par[_SUMLX + r, k]
                suml2 = par[_SUML2 + r, k]
                slx = sumlx - w * x * fli
                sl2 = suml2 - w * fli * fli
                fnl = np.float32(max(lo, min(hi, near32(x * sl2 / slx))))
                slx2 = slx + w * x * fnl
                sl22 = sl2 + w * fnl * fnl
                # & rather than `and`: no branches, so the lane loop vectorises
                ok = ((slx > F0) & (fnl != fli) & (sl22 > F0)
                      & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
                nxt[i, k] = fnl if ok else fli
                par[_SUMLX + 1 - r, k] = slx2 if ok else sumlx
                par[_SUML2 + 1 - r, k] = sl22 if ok else suml2
                par[_CHANGED, k] += np.float32(ok)
        cur, nxt = nxt, cur
        moved = F0
        for k in range(NL):
            moved += par[_CHANGED, k]
        if moved == F0:
            break
    r = t & 1
    for i in range(n):
        for k in range(NL):
            l = np.int32(cur[i, k]) - lo
            Lt[i, k] = np.int32(0) if par[_AMAX, k] < GROUP_MAX_EPS else l
    for k in range(NL):
        suml2 = par[_SUML2 + r, k]
        s = par[_SUMLX + r, k] / suml2 if suml2 > F0 else F0
        par[_QSCALE, k] = F0 if par[_AMAX, k] < GROUP_MAX_EPS else s


@njit(**KJIT)
def load_lanes(x, b0, nb, sub, xt):
    """xt[i, g*per + j] = x[b0 + g, sub*j + i]: super-block g's sub-block j (of `sub`
    elements, per = 256/sub of them) into lane g*per + j; lanes of g >= nb get zeros."""
    per = 256 // sub
    for g in range(NL // per):
        for j in range(per):
            k = g * per + j
            if g < nb:
                for i in range(sub):
                    xt[i, k] = x[b0 + g, sub * j + i]
            else:
                for i in range(sub):
                    xt[i, k] = F0


@njit(**KJIT)
def importance_lanes(x, qw, b0, nb, sub, factor, xt, wt, sw, sig):
    """llama.cpp's *_impl weights qw * sqrt(sigma2 + x*x) into wt, sigma2 = factor * (the
    super-block's sum of x*x, in element order) / 256; sw gets each lane's sum of weights.
    xt must hold the lanes already; sig is scratch of NL floats."""
    per = 256 // sub
    load_lanes(qw, b0, nb, sub, wt)
    for g in range(NL // per):
        sig[g] = F0
    for l in range(256):
        for g in range(nb):
            sig[g] += x[b0 + g, l] * x[b0 + g, l]
    f = np.float32(factor)
    for g in range(NL // per):
        sig[g] = f * sig[g] / np.float32(256)
    for k in range(NL):
        sig[NL - 1 - k] = sig[(NL - 1 - k) // per]  # spread block values over their lanes
    for i in range(sub):
        for k in range(NL):
            v = xt[i, k]
            wt[i, k] = wt[i, k] * np.sqrt(sig[k] + v * v)
    for k in range(NL):
        sw[k] = F0
    for i in range(sub):
        for k in range(NL):
            sw[k] += wt[i, k]


# ---- running the groups on threads ----------------------------------------------------
#
# Python threads, not prange: a parallel numba function links and re-optimizes all the
# code it calls once more, which for these searches cost ~3 s of compilation per type;
# the group encoders are nogil, so the threads run them in parallel all the same.

_pools: dict = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="qconvert-kquant")
        return _pools[threads]


def run_groups(encode_groups, x, qw, has_qw, group, type_size):
    """Encode every super-block (row) of x: encode_groups(x, qw, has_qw, first, last,
    out) on ranges of lane groups (`group` super-blocks each), on numba's thread count
    (NUMBA_NUM_THREADS / numba.set_num_threads), four ranges per thread so that a thread
    slowed by other work is made up by the rest."""
    n = x.shape[0]
    out = np.empty((n, type_size), np.uint8)
    n_groups = -(-n // group)
    threads = max(1, min(numba.get_num_threads(), n_groups // 4))
    if threads == 1:
        encode_groups(x, qw, has_qw, 0, n_groups, out)
        return out
    n_items = 4 * threads
    cuts = [n_groups * i // n_items for i in range(n_items + 1)]
    jobs = [_pool(threads).submit(encode_groups, x, qw, has_qw, cuts[i], cuts[i + 1], out)
            for i in range(n_items)]
    for j in jobs:
        j.result()
    return out
