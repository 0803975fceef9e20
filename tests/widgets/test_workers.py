"""LatestRequestWorker: newest request wins, stale results dropped, delivered on the GUI thread."""
import threading
import time

import pytest

from napari_ultratinysam.widgets.workers import LatestRequestWorker


@pytest.fixture
def worker(qtbot):
    w = LatestRequestWorker()
    yield w
    w.close()


def _collect(worker):
    got, dropped = [], []
    worker.dropped.connect(lambda seq, g: dropped.append(seq))
    return got, dropped


def test_result_delivered_on_gui_thread(worker, qtbot):
    gui = threading.current_thread()
    seen = {}

    def fn():
        seen["worker"] = threading.current_thread()
        return 42

    with qtbot.waitSignal(worker.delivered, timeout=3000):
        worker.submit("g", fn, on_done=lambda v: seen.update(value=v, thread=threading.current_thread()))
    assert seen["value"] == 42 and seen["thread"] is gui and seen["worker"] is not gui
    assert not worker.is_busy()


def test_slow_stale_request_is_dropped(worker, qtbot):
    got, dropped = _collect(worker)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.3)
        return "old"

    s1 = worker.submit("preview", slow, on_done=got.append)
    assert started.wait(2)
    s2 = worker.submit("preview", lambda: "new", on_done=got.append)
    with qtbot.waitSignal(worker.delivered, timeout=3000):
        pass
    qtbot.wait(50)
    assert got == ["new"] and s1 in dropped and s2 not in dropped


def test_pending_requests_coalesce(worker, qtbot):
    got, dropped = _collect(worker)
    gate = threading.Event()
    ran = []
    worker.submit("preview", lambda: gate.wait(2) and ran.append("blocker"), strict=False)
    time.sleep(0.05)
    seqs = [worker.submit("preview", (lambda i=i: ran.append(i) or i), strict=False, on_done=got.append)
            for i in range(5)]
    gate.set()
    qtbot.waitUntil(lambda: got == [4], timeout=3000)
    assert ran == ["blocker", 4]  # replaced requests never ran
    assert set(seqs[:4]) <= set(dropped)


def test_lenient_result_still_shown_while_newer_pending(worker, qtbot):
    """Hover: a result is shown even if the mouse moved on meanwhile (else a moving cursor would see nothing)."""
    got, _ = _collect(worker)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.2)
        return "h1"

    worker.submit("preview", slow, strict=False, on_done=got.append)
    assert started.wait(2)
    worker.submit("preview", lambda: "h2", strict=False, on_done=got.append)
    qtbot.waitUntil(lambda: got == ["h1", "h2"], timeout=3000)


def test_strict_wins_over_lenient(worker, qtbot):
    got, dropped = _collect(worker)
    started = threading.Event()

    def slow_hover():
        started.set()
        time.sleep(0.2)
        return "hover"

    worker.submit("preview", slow_hover, strict=False, on_done=got.append)
    assert started.wait(2)
    worker.submit("preview", lambda: "click", strict=True, on_done=got.append)
    late = worker.submit("preview", lambda: "hover2", strict=False, on_done=got.append)  # click pending: rejected
    qtbot.waitUntil(lambda: got == ["click"], timeout=3000)
    qtbot.wait(50)
    assert got == ["click"] and late in dropped


def test_cancel_drops_in_flight_and_pending(worker, qtbot):
    got, dropped = _collect(worker)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.2)
        return 1

    worker.submit("preview", slow, on_done=got.append)
    assert started.wait(2)
    worker.submit("preview", lambda: 2, on_done=got.append)
    worker.cancel("preview")
    qtbot.waitUntil(lambda: not worker.is_busy("preview"), timeout=3000)
    qtbot.wait(50)
    assert got == []
    worker.submit("preview", lambda: 3, on_done=got.append)
    qtbot.waitUntil(lambda: got == [3], timeout=3000)


def test_groups_are_independent_and_fifo(worker, qtbot):
    order = []
    gate = threading.Event()
    worker.submit("x", lambda: gate.wait(2))
    time.sleep(0.05)
    worker.submit("embed", lambda: order.append("embed") or "e", on_done=order.append)
    worker.submit("preview", lambda: order.append("preview") or "p", on_done=order.append)
    gate.set()
    qtbot.waitUntil(lambda: len(order) == 4, timeout=3000)
    assert order.index("embed") < order.index("preview")
    assert "e" in order and "p" in order


def test_errors_reach_on_error(worker, qtbot):
    errs = []

    def boom():
        raise ValueError("bad image")

    with qtbot.waitSignal(worker.delivered, timeout=3000):
        worker.submit("embed", boom, on_error=errs.append)
    assert isinstance(errs[0], ValueError) and "bad image" in str(errs[0])
    got = []
    with qtbot.waitSignal(worker.delivered, timeout=3000):
        worker.submit("embed", lambda: "ok", on_done=got.append)  # the thread survived
    assert got == ["ok"]


def test_busy_signal_and_close(qtbot):
    w = LatestRequestWorker()
    states = []
    w.busy_changed.connect(lambda g, b: states.append((g, b)))
    with qtbot.waitSignal(w.delivered, timeout=3000):
        w.submit("embed", lambda: time.sleep(0.05))
    assert states == [("embed", True), ("embed", False)]
    w.close()
    assert w.closed and not w._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit("embed", lambda: 1)
