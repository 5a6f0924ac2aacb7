"""The planner's prior without statistics: role weights and the output floor."""

from qconvert.plan.budget import Option
from qconvert.plan.sized import ROLE_WEIGHT, raise_floor, weighted_by_role


def opts():
    return [Option("IQ4_XS", 10, 4.0), Option("Q5_K", 14, 2.0), Option("Q6_K", 16, 1.0)]


def test_residual_writers_weigh_more():
    for name in ("blk.0.ffn_down.weight", "blk.3.attn_v.weight", "blk.1.attn_output.weight",
                 "blk.2.ffn_down_exps.weight"):
        assert [o.loss for o in weighted_by_role(name, opts())] == [4.0 * ROLE_WEIGHT, 2.0 * ROLE_WEIGHT,
                                                                    1.0 * ROLE_WEIGHT]
    for name in ("blk.0.attn_q.weight", "blk.0.ffn_up.weight", "output.weight", "token_embd.weight"):
        assert [o.loss for o in weighted_by_role(name, opts())] == [4.0, 2.0, 1.0]


def test_raise_floor_keeps_types_at_or_above():
    raised = raise_floor({"output.weight": opts(), "x": opts()}, "output.weight", "Q6_K")
    assert [o.type for o in raised["output.weight"]] == ["Q6_K"]
    assert len(raised["x"]) == 3
    assert raise_floor({"output.weight": opts()[:1]}, "output.weight", "Q6_K") is None
