"""Latest-request-wins background worker for the annotator (embedding, click prediction, hover prediction).

One background thread runs every request in order, so the (not thread-safe) predictor is only ever touched by one
thread. Requests belong to a *group* ("model", "embed", "preview"); each gets a sequence number.

- Coalescing: a group holds at most ONE pending (not yet started) request; a newer one replaces it, and the
  replaced request never runs. With one thread this also throttles hover: at most one prediction in flight, and
  the next one is always for the newest mouse position.
- Staleness: a *strict* request (a click, a box, an embedding) is dropped when any newer request of its group was
  submitted before its result reaches the GUI thread. A *lenient* request (hover) is dropped only when a newer
  strict request exists or a newer result was already shown, so a moving cursor still sees masks.
- ``cancel(group)``: drops everything submitted so far in the group (pending and in flight).
- Results are delivered on the GUI thread through a Qt signal (queued connection); the check is repeated there, so
  a result overtaken while the signal was queued is dropped too. The GUI thread never waits on the worker.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from qtpy.QtCore import QObject, Signal

log = logging.getLogger(__name__)


@dataclass
class Request:
    seq: int
    group: str
    fn: Callable[[], Any]
    strict: bool = True
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Reply:
    seq: int
    group: str
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    submitted: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    received: float = 0.0  # when the GUI thread took the reply (finished -> received: Qt's queued signal)


class _GroupState:
    __slots__ = ("pending", "newest", "newest_strict", "cancelled_upto", "delivered_upto")

    def __init__(self):
        self.pending: Request | None = None
        self.newest = 0
        self.newest_strict = 0
        self.cancelled_upto = 0
        self.delivered_upto = 0


class LatestRequestWorker(QObject):
    """See the module docstring. Create it on the GUI thread; call ``submit``/``cancel``/``close`` from there."""

    _reply = Signal(object)  # internal: worker thread -> GUI thread
    delivered = Signal(object)  # Reply, after its callback ran
    dropped = Signal(int, str)  # seq, group: a stale or replaced request (tests and diagnostics)
    busy_changed = Signal(str, bool)  # group, whether it has work pending or in flight

    def __init__(self, name: str = "utsam-worker", parent: QObject | None = None):
        super().__init__(parent)
        self._cond = threading.Condition()
        self._groups: dict[str, _GroupState] = {}
        self._seq = 0
        self._closed = False
        self._running: Request | None = None
        self._requests: dict[int, Request] = {}  # submitted, not yet delivered/dropped (GUI thread only)
        self._busy: dict[str, bool] = {}
        self._reply.connect(self._deliver)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------ GUI thread
    def submit(self, group: str, fn: Callable[[], Any], *, strict: bool = True,
               on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> int:
        """Queue ``fn`` (runs on the worker thread); ``on_done(value)`` / ``on_error(exc)`` run on the GUI thread,
        only if the result is still current. Returns the request's sequence number."""
        with self._cond:
            if self._closed:
                raise RuntimeError("worker is closed")
            self._seq += 1
            req = Request(self._seq, group, fn, strict, on_done, on_error)
            g = self._groups.setdefault(group, _GroupState())
            replaced = g.pending
            if replaced is not None and replaced.strict and not strict:
                # a lenient request (hover) never displaces a pending strict one (a click): drop the new one
                rejected = True
            else:
                rejected = False
                g.pending = req
                g.newest = req.seq
                if strict:
                    g.newest_strict = req.seq
                self._requests[req.seq] = req
                self._cond.notify()
        if rejected:
            self.dropped.emit(req.seq, group)
            return req.seq
        if replaced is not None:
            self._requests.pop(replaced.seq, None)
            self.dropped.emit(replaced.seq, group)
        self._update_busy(group)
        return req.seq

    def cancel(self, group: str) -> None:
        """Drop every request of ``group`` submitted so far (pending ones never run; running ones are discarded)."""
        with self._cond:
            g = self._groups.setdefault(group, _GroupState())
            g.cancelled_upto = self._seq
            replaced, g.pending = g.pending, None
        if replaced is not None:
            self._requests.pop(replaced.seq, None)
            self.dropped.emit(replaced.seq, group)
        self._update_busy(group)

    def is_busy(self, group: str | None = None) -> bool:
        return any(r.group == group or group is None for r in self._requests.values())

    def is_pending(self, seq: int) -> bool:
        """Whether request ``seq`` is still queued or running (neither delivered nor dropped)."""
        return seq in self._requests

    def is_current(self, seq: int, group: str, strict: bool = True) -> bool:
        with self._cond:
            return not self._stale_locked(seq, group, strict)

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            for g in self._groups.values():
                g.pending = None
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._requests.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    # -------------------------------------------------------------------------------------------- worker thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not any(g.pending for g in self._groups.values()):
                    self._cond.wait()
                if self._closed:
                    return
                # oldest pending request first (FIFO across groups)
                req = min((g.pending for g in self._groups.values() if g.pending), key=lambda r: r.seq)
                self._groups[req.group].pending = None
                stale = self._stale_locked(req.seq, req.group, req.strict)
                self._running = req
            reply = Reply(req.seq, req.group, submitted=req.submitted, started=time.perf_counter())
            if not stale:
                try:
                    reply.value = req.fn()
                except BaseException as exc:  # noqa: BLE001 - reported to the GUI thread, never swallowed
                    reply.error = exc
                    reply.traceback = traceback.format_exc()
            else:
                reply.error = _Stale()
            reply.finished = time.perf_counter()
            with self._cond:
                self._running = None
                if self._closed:
                    return
            try:
                self._reply.emit(reply)
            except RuntimeError:  # the QObject was deleted with its widget: nobody is listening any more
                return

    # -------------------------------------------------------------------------------------------------- helpers
    def _stale_locked(self, seq: int, group: str, strict: bool) -> bool:
        g = self._groups.get(group)
        if g is None:
            return False
        if seq <= g.cancelled_upto or seq < g.delivered_upto or g.newest_strict > seq:
            return True
        return strict and g.newest > seq

    def _deliver(self, reply: Reply) -> None:  # GUI thread
        reply.received = time.perf_counter()
        req = self._requests.pop(reply.seq, None)
        with self._cond:
            stale = (req is None or isinstance(reply.error, _Stale)
                     or self._stale_locked(reply.seq, reply.group, req.strict))
            if not stale:
                self._groups[reply.group].delivered_upto = reply.seq
        if stale:
            self.dropped.emit(reply.seq, reply.group)
            self._update_busy(reply.group)
            return
        try:
            if reply.error is not None:
                log.warning("worker %s request %d failed:\n%s", reply.group, reply.seq, reply.traceback)
                if req.on_error is not None:
                    req.on_error(reply.error)
            elif req.on_done is not None:
                req.on_done(reply.value)
        finally:
            self._update_busy(reply.group)
            self.delivered.emit(reply)

    def _update_busy(self, group: str) -> None:
        busy = self.is_busy(group)
        if self._busy.get(group) != busy:
            self._busy[group] = busy
            self.busy_changed.emit(group, busy)


class _Stale(Exception):
    """Marker: the request was stale when the worker reached it and did not run."""
