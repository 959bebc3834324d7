"""The engine thread's handoff to the server's event loop (serve/handoff.py): every item
arrives, in order, in its own queue; many items posted before the loop runs cost one wakeup;
a closed loop drops them without an error."""

import asyncio
import threading

from fractal_flood.serve.handoff import Handoff


def test_items_posted_before_the_loop_runs_arrive_in_order_with_one_wakeup():
    async def main():
        loop = asyncio.get_running_loop()
        h = Handoff(loop)
        a, b = asyncio.Queue(), asyncio.Queue()
        t = threading.Thread(target=lambda: [h.post(a if i % 3 else b, i) for i in range(30)])
        t.start()
        t.join()  # all posted while the loop sat in this coroutine: one drain scheduled
        got_a = [await a.get() for _ in range(20)]
        got_b = [await b.get() for _ in range(10)]
        return h.wakeups, got_a, got_b

    wakeups, got_a, got_b = asyncio.run(main())
    assert wakeups == 1
    assert got_a == [i for i in range(30) if i % 3] and got_b == list(range(0, 30, 3))


def test_no_item_is_lost_while_the_loop_drains_as_they_come():
    n, queues = 20_000, 3

    async def main():
        loop = asyncio.get_running_loop()
        h = Handoff(loop)
        qs = [asyncio.Queue() for _ in range(queues)]
        t = threading.Thread(target=lambda: [h.post(qs[i % queues], i) for i in range(n)])
        t.start()
        got = [[] for _ in range(queues)]
        for k in range(n):
            q = k % queues
            got[q].append(await asyncio.wait_for(qs[q].get(), 30))
        t.join()
        return h.wakeups, got

    wakeups, got = asyncio.run(main())
    for q in range(queues):
        assert got[q] == list(range(q, n, queues))
    assert 1 <= wakeups <= n


def test_a_closed_loop_drops_the_items_without_an_error():
    loop = asyncio.new_event_loop()
    h = Handoff(loop)
    loop.close()
    q = asyncio.Queue()
    h.post(q, 1)
    h.post(q, 2)
    assert q.empty() and h.wakeups == 0
