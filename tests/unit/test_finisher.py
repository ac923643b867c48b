"""tasks.finisher.Finisher: one job's tail at a time, never more than one behind."""

from __future__ import annotations

import threading

from tasks.finisher import Finisher


def test_submit_waits_for_the_previous_finish() -> None:
    finisher = Finisher()
    release = threading.Event()
    order: list[str] = []
    finisher.submit(lambda: (release.wait(10), order.append("first")))
    assert not finisher.drain(0.05)  # the first is still finishing

    second = threading.Thread(target=finisher.submit, args=(lambda: order.append("second"),))
    second.start()
    second.join(0.1)
    assert second.is_alive()  # held at the hand-off: at most one job is finishing
    release.set()
    second.join(10)
    assert finisher.drain(10)
    assert order == ["first", "second"]


def test_a_crashing_finish_does_not_wedge_the_next() -> None:
    finisher = Finisher()

    def boom() -> None:
        raise RuntimeError("bug")

    finisher.submit(boom)
    assert finisher.drain(10)
    done = threading.Event()
    finisher.submit(done.set)
    assert done.wait(10)
