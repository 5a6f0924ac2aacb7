"""Choose one type per tensor to minimise total predicted loss within a byte budget:
a multiple-choice knapsack.

1. Lagrangian relaxation. For a multiplier λ each tensor alone picks argmin loss + λ·bytes;
   only points on the lower convex hull of its (bytes, loss) options can win, and between
   consecutive hull points the pick changes at λ = Δloss/Δbytes (the segment's slope). So
   instead of bisecting λ numerically we sort all hull segments by slope, steepest first, and
   take them while they fit: that is the λ-solution at the largest-loss-reduction λ within
   budget (the exact breakpoint a bisection would converge to). The first segment that does
   not fit gives λ*.
2. Greedy fill: the bytes left over buy upgrades (to any option, hull or not) in order of
   loss decrease per byte, best first, while any fits.
3. Lower bound: the Lagrangian dual D(λ*) = Σ_i min_j (l_ij + λ* b_ij) − λ* B is <= the
   optimum for any λ* >= 0, so loss − D(λ*) bounds how far the result can be from exact.
4. Branch and bound (depth-first, tensors in name order, options by loss) with the LP
   bound of the remaining tensors, under a node limit: small instances are solved exactly
   (gap 0); for big ones the search usually stops at the limit and step 2's answer stands,
   with its gap reported.

Ties are broken by tensor name and then by the options' order (cheapest first), so the
same input gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BudgetError


@dataclass(frozen=True)
class Option:
    type: str
    nbytes: int
    loss: float


@dataclass
class Solution:
    picks: dict[str, Option]
    nbytes: int
    loss: float
    lower_bound: float  # no choice within the budget has a smaller total loss
    lam: float  # λ*: the loss a byte was worth at the budget
    exact: bool = False  # branch and bound finished: the picks are optimal
    nodes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def gap(self) -> float:
        return max(0.0, self.loss - self.lower_bound)


def _clean(options: list[Option]) -> list[Option]:
    """Options sorted by bytes (then type name); an option that costs more and loses no
    less than a cheaper one can never be chosen and is dropped."""
    out: list[Option] = []
    for o in sorted(options, key=lambda o: (o.nbytes, o.loss, o.type)):
        if out and o.loss >= out[-1].loss:
            continue
        out.append(o)
    return out


def _hull(opts: list[Option]) -> list[Option]:
    """Lower convex hull of (bytes, loss) over options already cleaned (bytes up, loss down)."""
    h: list[Option] = []
    for o in opts:
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            # b lies on or above the segment a -> o: drop it
            if (b.loss - a.loss) * (o.nbytes - a.nbytes) >= (o.loss - a.loss) * (b.nbytes - a.nbytes):
                h.pop()
            else:
                break
        h.append(o)
    return h


def _segments(items: dict[str, list[Option]]):
    """(slope, name, from option, to option) of every hull segment, steepest first."""
    segs = []
    for name, opts in items.items():
        h = _hull(opts)
        for a, b in zip(h, h[1:]):
            segs.append(((a.loss - b.loss) / (b.nbytes - a.nbytes), name, a, b))
    segs.sort(key=lambda s: (-s[0], s[1], s[2].nbytes))
    return segs


def _lagrangian(items: dict[str, list[Option]], budget: int):
    picks = {n: opts[0] for n, opts in items.items()}
    used = sum(o.nbytes for o in picks.values())
    lam = 0.0
    for slope, name, a, b in _segments(items):
        if picks[name] is not a:  # an earlier segment of this tensor did not fit: skip the rest
            continue
        extra = b.nbytes - a.nbytes
        if used + extra > budget:
            lam = slope
            break
        picks[name] = b
        used += extra
    return picks, used, lam


def _dual(items: dict[str, list[Option]], budget: int, lam: float) -> float:
    return sum(min(o.loss + lam * o.nbytes for o in opts) for opts in items.values()) - lam * budget


def _fill(items: dict[str, list[Option]], picks: dict[str, Option], used: int, budget: int) -> int:
    while True:
        best = None
        for name in sorted(items):
            cur = picks[name]
            for o in items[name]:
                extra = o.nbytes - cur.nbytes
                if extra <= 0 or o.loss >= cur.loss or used + extra > budget:
                    continue
                key = ((cur.loss - o.loss) / extra, -extra)
                if best is None or key > best[0]:
                    best = (key, name, o, extra)
        if best is None:
            return used
        _, name, o, extra = best
        picks[name] = o
        used += extra


def _lp_bound(names: list[str], items: dict[str, list[Option]], budget: int, hulls) -> float:
    """Minimum loss of the LP relaxation over `names` with `budget` bytes (inf when even the
    cheapest options do not fit): cheapest everywhere, then hull segments by slope, the last
    one taken fractionally."""
    base = sum(items[n][0].nbytes for n in names)
    if base > budget:
        return float("inf")
    loss = sum(items[n][0].loss for n in names)
    left = budget - base
    segs = sorted((s for n in names for s in hulls[n]), key=lambda s: -s[0])
    for slope, dl, db in segs:
        if db <= left:
            loss -= dl
            left -= db
        else:
            loss -= slope * left
            break
    return loss


def _branch_and_bound(items: dict[str, list[Option]], budget: int, incumbent: Solution, node_limit: int):
    names = sorted(items)
    hulls = {}
    for n in names:
        h = _hull(items[n])
        hulls[n] = [((a.loss - b.loss) / (b.nbytes - a.nbytes), a.loss - b.loss, b.nbytes - a.nbytes)
                    for a, b in zip(h, h[1:])]
    best = [incumbent.loss, dict(incumbent.picks)]
    nodes = [0]
    suffix_min = [0] * (len(names) + 1)
    for i in range(len(names) - 1, -1, -1):
        suffix_min[i] = suffix_min[i + 1] + items[names[i]][0].nbytes

    def go(i: int, used: int, loss: float, chosen: dict) -> bool:
        nodes[0] += 1
        if nodes[0] > node_limit:
            return False
        if i == len(names):
            if loss < best[0] - 1e-12 * max(1.0, abs(best[0])):
                best[0], best[1] = loss, dict(chosen)
            return True
        if loss + _lp_bound(names[i:], items, budget - used, hulls) >= best[0] - 1e-12 * max(1.0, abs(best[0])):
            return True
        name = names[i]
        for o in sorted(items[name], key=lambda o: (o.loss, o.nbytes)):
            if used + o.nbytes + suffix_min[i + 1] > budget:
                continue
            chosen[name] = o
            if not go(i + 1, used + o.nbytes, loss + o.loss, chosen):
                return False
            del chosen[name]
        return True

    done = go(0, 0, 0.0, {})
    return done, best[1], nodes[0]


def solve(options: dict[str, list[Option]], budget: int, *, node_limit: int = 20000) -> Solution:
    """Pick one option per name with Σ bytes <= budget, minimising Σ loss.
    Raises BudgetError (with the smallest achievable total) when nothing fits."""
    items = {n: _clean(list(o)) for n, o in sorted(options.items())}
    for n, o in items.items():
        if not o:
            raise ValueError(f"{n}: no options")
    smallest = sum(o[0].nbytes for o in items.values())
    if smallest > budget:
        raise _budget_error(budget, smallest)
    picks, used, lam = _lagrangian(items, budget)
    used = _fill(items, picks, used, budget)
    loss = sum(o.loss for o in picks.values())
    lb = max(_dual(items, budget, lam), 0.0 if lam else _dual(items, budget, 0.0))
    sol = Solution(picks, used, loss, min(lb, loss), lam)
    if sol.gap > 0 and node_limit > 0:
        done, bb_picks, nodes = _branch_and_bound(items, budget, sol, node_limit)
        sol.nodes = nodes
        bb_loss = sum(o.loss for o in bb_picks.values())
        if bb_loss < sol.loss:
            sol.picks, sol.loss, sol.nbytes = bb_picks, bb_loss, sum(o.nbytes for o in bb_picks.values())
        if done:
            sol.exact, sol.lower_bound = True, sol.loss
    else:
        sol.exact = sol.gap == 0
    return sol


def _budget_error(budget: int, smallest: int) -> BudgetError:
    err = BudgetError(f"the budget of {budget:,} bytes cannot be met: the smallest types give {smallest:,} bytes")
    err.smallest = smallest
    err.budget = budget
    return err
