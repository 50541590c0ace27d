"""The memory planner on its own: no two live tensors overlap, and the arena is close to the lower bound."""
from hypothesis import given, settings
from hypothesis import strategies as st

from kiln.engine.memory import ALIGNMENT, Lifetime, lower_bound, overlaps, plan_memory


def test_disjoint_lifetimes_share_memory():
    ts = [Lifetime(1000, 0, 1), Lifetime(1000, 2, 3), Lifetime(1000, 4, 5)]
    plan = plan_memory(ts)
    assert plan.offsets == (0, 0, 0)
    assert plan.arena_bytes == 1024 and plan.naive_bytes == 3 * 1024


def test_overlapping_lifetimes_get_separate_memory():
    ts = [Lifetime(512, 0, 2), Lifetime(512, 1, 3), Lifetime(256, 2, 2)]
    plan = plan_memory(ts)
    assert not overlaps(ts, plan)
    assert plan.lower_bound_bytes == 512 + 512 + 256
    assert plan.arena_bytes == plan.lower_bound_bytes


def test_chain_reuses_two_buffers():
    # A linear chain: each tensor is read only by the next step, so two buffers suffice.
    ts = [Lifetime(4096, i, i + 1) for i in range(20)]
    plan = plan_memory(ts)
    assert plan.arena_bytes == 2 * 4096
    assert not overlaps(ts, plan)


def test_offsets_are_aligned_and_empty_plan():
    plan = plan_memory([Lifetime(3, 0, 0), Lifetime(5, 0, 0)])
    assert all(o % ALIGNMENT == 0 for o in plan.offsets)
    assert plan_memory([]).arena_bytes == 0 and lower_bound([]) == 0


lifetimes = st.lists(
    st.tuples(st.integers(1, 1 << 20), st.integers(0, 40), st.integers(0, 10)).map(
        lambda t: Lifetime(t[0], t[1], t[1] + t[2])),
    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(lifetimes)
def test_random_plans_are_valid(ts):
    plan = plan_memory(ts)
    assert not overlaps(ts, plan), "two tensors alive at once share bytes"
    assert plan.arena_bytes >= plan.lower_bound_bytes
    assert plan.arena_bytes <= plan.naive_bytes
    for t, o in zip(ts, plan.offsets):
        assert o + t.size <= plan.arena_bytes
