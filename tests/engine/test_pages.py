"""Page allocator and scheduler bookkeeping under random request/abort sequences."""

from hypothesis import given, settings
from hypothesis import strategies as st

from autoglm_jax.engine.pages import PageAllocator, page_hashes
from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.engine.scheduler import Request, Scheduler


def test_prefix_pages_are_shared_and_evicted_lru():
    a = PageAllocator(6, 4)
    tokens = list(range(12))
    hashes = page_hashes(tokens, 4)
    pages = a.allocate(3)
    for p, h in zip(pages, hashes):
        a.register(p, h)
    a.free(pages)
    assert a.num_free == 5
    assert a.lookup(hashes[:2]) == pages[:2]
    assert a.hit_rate == 1.0
    a.free(pages[:2])
    # Other content: the first pages taken are the free ones, then the LRU cached one.
    fresh = a.allocate(4)
    assert pages[2] in fresh and not set(pages[:2]) & set(fresh[:2])
    assert page_hashes([9] + tokens[1:], 4)[0] != hashes[0]
    assert page_hashes(tokens, 4, extra=b"img")[0] != hashes[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "step", "abort", "step", "step"]),
            st.integers(1, 40),
            st.integers(0, 1000),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(8, 40),
    st.sampled_from([2, 4, 8]),
    st.booleans(),
)
def test_allocator_invariants_under_random_requests(ops, num_pages, page_size, prefix):
    alloc = PageAllocator(num_pages, page_size, enable_prefix_caching=prefix)
    sched = Scheduler(
        alloc, max_num_seqs=4, max_num_batched_tokens=24, max_model_len=64, policy="priority"
    )
    live: list[Request] = []
    for i, (op, n, r) in enumerate(ops):
        if op == "add":
            prompt = [r % 7] * 3 + list(range(n))  # shared starts exercise the prefix cache
            req = Request(f"r{i}", prompt, SamplingParams(max_tokens=5), 0, float(i), r % 3)
            sched.add(req)
            live.append(req)
        elif op == "abort" and live:
            sched.finish(live[r % len(live)], "abort")
        else:
            out = sched.schedule()
            for c in out.chunks:
                req = c.request
                req.num_computed_tokens += c.num_tokens
                sched.register_computed_pages(req)
                if c.samples:
                    req.output_token_ids.append(r % 50)
                    if len(req.output_token_ids) >= 5:
                        sched.finish(req, "length")
        alloc.check_invariants(sched.held_pages)
        live = [q for q in live if not q.is_finished]
    for q in list(live):
        sched.finish(q, "abort")
    alloc.check_invariants([])
    assert alloc.num_free == num_pages - 1
