"""The run's second process: the steps that can use several threads, run beside this one.

A one-image run does its steps in its own process, one after the other; most use one core
(the affine registration and N4 must: ITK's threaded sums would make their results depend on
the thread count). Two steps can use the others without changing a number:

- **deepbet's network** (torch, ``--omp-nthreads`` threads, as in this process): the helper
  imports torch and loads the network from the start of the run, on a core of its own, while
  this process waits for the validator, builds the workflow and conforms the image. In this
  process the same loading held the interpreter's lock and the skull strip waited for it.
- **the tissue warp** (:mod:`bids_brainage.features.tissue`): its SyN update is voxelwise,
  the same to the bit with 1-4 ITK threads (measured), but ITK fixes its thread count once
  per process, and this process has fixed it at one for the affine registration.

The helper is a plain ``python -c`` process (not multiprocessing, whose "spawn" imports the
caller's main script again) answering pickled requests on its stdin, one at a time, in
order: ``(module, function, args)`` of this package; they are written as they come, not each
after the answer before it. A caller that cannot reach it (it died,
it could not start) does the work itself, with the same numbers. Started once per process
and thread count (:func:`helper`), stopped at exit.
"""
from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import importlib
import logging
import os
import pickle
import subprocess
import sys
import threading

LOG = logging.getLogger("bids_brainage.participant")
# what reaching the helper can raise: it died (EOF, broken pipe), could not start (OSError)
UNREACHABLE = (OSError, EOFError, pickle.UnpicklingError)

_helpers: dict[int, Helper] = {}
_lock = threading.Lock()
# how many steps of this process wait for a helper's threads now (see waiting_for_cores)
_waiting = 0
_waiting_changed = threading.Condition()


class Helper:
    """One helper process with ``threads`` threads for torch and ITK."""

    def __init__(self, threads: int):
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads),
                   OMP_NUM_THREADS=str(threads))
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from bids_brainage.helper import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        # requests are written by a thread of this process, so that a caller goes on while a
        # large one is still being read; answers are read by another, in the same order.
        # A request is written without waiting for the answer before it: the helper goes
        # from one to the next even while this process cannot run Python (ANTs holds the
        # interpreter's lock for a whole registration: measured, the tissue warp's loading
        # waited 5 s behind an answer nobody here could read)
        self._sender = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="helper")
        self._pending: collections.deque = collections.deque()
        self._pending_lock = threading.Lock()
        self._broken: BaseException | None = None
        self._reader = threading.Thread(target=self._read_answers, name="helper-answers",
                                        daemon=True)
        self._reader.start()

    def call(self, module: str, function: str, *args):
        """``module.function(*args)`` in the helper; raises what it raised there (as a
        RuntimeError) or one of :data:`UNREACHABLE`."""
        return self.submit(module, function, *args).result()

    def submit(self, module: str, function: str, *args) -> concurrent.futures.Future:
        """:meth:`call` begun; the future's result is the call's."""
        answer = concurrent.futures.Future()
        request = pickle.dumps((module, function, args), protocol=pickle.HIGHEST_PROTOCOL)
        with self._pending_lock:
            if self._broken is not None:
                raise EOFError(f"the helper process is gone ({self._broken})")
            self._pending.append(answer)
            written = self._sender.submit(self._write, request)
        written.add_done_callback(lambda done: self._unsent(answer, done))
        return answer

    def _write(self, request: bytes) -> None:
        self.process.stdin.write(request)
        self.process.stdin.flush()

    def _unsent(self, answer, written) -> None:
        """A request that could not be written fails its caller (the helper died)."""
        exc = written.exception() if not written.cancelled() else EOFError("not sent")
        if exc is not None:
            self._fail(exc if isinstance(exc, UNREACHABLE) else OSError(str(exc)))

    def _read_answers(self) -> None:
        while True:
            try:
                ok, value = pickle.load(self.process.stdout)
            except (*UNREACHABLE, ValueError) as exc:  # ValueError: its pipe was closed
                self._fail(exc if isinstance(exc, UNREACHABLE) else EOFError(str(exc)))
                return
            with self._pending_lock:
                answer = self._pending.popleft() if self._pending else None
            if answer is None:
                continue
            if ok:
                answer.set_result(value)
            else:
                answer.set_exception(RuntimeError(value))

    def _fail(self, exc: BaseException) -> None:
        """The helper is gone: every answer still awaited fails with ``exc``."""
        with self._pending_lock:
            self._broken = self._broken or exc
            waiting, self._pending = list(self._pending), collections.deque()
        for answer in waiting:
            if not answer.done():
                answer.set_exception(exc)

    def stop(self) -> None:
        self._sender.shutdown(wait=False, cancel_futures=True)
        try:
            self.process.stdin.close()  # end of input: the helper exits
            self.process.wait(timeout=10)
        except (OSError, ValueError):
            pass
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self._reader.join(timeout=10)
            self.process.stdout.close()


def serve() -> None:
    """The helper's loop: answer requests until stdin ends, then exit at once."""
    from bids_brainage.timeline import mark

    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the answers
    while True:
        try:
            module, function, args = pickle.load(requests)
        except EOFError:  # the caller is done: exit without the interpreter's teardown
            sys.stderr.flush()  # (half a second freeing what torch and ITK loaded)
            os._exit(0)
        mark("helper_start", function=function)
        try:
            if not module.startswith("bids_brainage."):
                raise ValueError(f"not a bids_brainage function: {module}.{function}")
            answer = (True, getattr(importlib.import_module(module), function)(*args))
        except Exception as exc:  # noqa: BLE001 - reported to the caller, who raises it
            answer = (False, f"{type(exc).__name__}: {exc}")
        pickle.dump(answer, answers, protocol=pickle.HIGHEST_PROTOCOL)
        answers.flush()
        mark("helper_end", function=function)


def helper(threads: int) -> Helper:
    """This process's helper with ``threads`` threads, started on first use."""
    with _lock:
        if threads not in _helpers:
            if not _helpers:
                atexit.register(stop_helpers)
            _helpers[threads] = Helper(threads)
        return _helpers[threads]


def load_ahead(threads: int, module: str, function: str, *args) -> bool:
    """Begin ``module.function(*args)`` (a loading step) in the helper and go on without its
    answer; False when the helper cannot be reached (the step that needs the load will then
    do the work here, and load it itself)."""
    try:
        helper(threads).submit(module, function, *args)
    except UNREACHABLE:
        return False
    return True


def run_there(threads: int, here, module: str, function: str, *args):
    """``module.function(*args)`` in the helper with ``threads`` threads, begun now; returns a
    function that gives its result, or ``here()``'s (the same work in this process) when the
    helper cannot be reached."""
    try:
        answer = helper(threads).submit(module, function, *args)
    except UNREACHABLE as exc:
        return _instead(here, threads, exc)

    def result():
        try:
            return answer.result()
        except UNREACHABLE as exc:
            return _instead(here, threads, exc)()

    return result


@contextlib.contextmanager
def waiting_for_cores():
    """Say, for the time of the block, that this process waits for a helper that uses every
    core it was given (deepbet's network on --omp-nthreads threads): loading ahead in this
    process holds off meanwhile (:func:`hold_off`), as a third busy thread on two cores
    made the network, the run's longest wait, 0.5 s slower (measured on a 1 mm head)."""
    global _waiting
    with _waiting_changed:
        _waiting += 1
    try:
        yield
    finally:
        with _waiting_changed:
            _waiting -= 1
            _waiting_changed.notify_all()


def hold_off() -> None:
    """Return once no step of this process is :func:`waiting_for_cores`."""
    with _waiting_changed:
        _waiting_changed.wait_for(lambda: _waiting == 0)


def _instead(here, threads: int, exc: Exception):
    LOG.debug("helper process unavailable (%s: %s): working in this process",
              type(exc).__name__, exc)
    stop_helper(threads)
    return here


def stop_helper(threads: int) -> None:
    with _lock:
        found = _helpers.pop(threads, None)
    if found is not None:
        found.stop()


def stop_helpers() -> None:
    """Stop every helper of this process (each exits when its input ends)."""
    for threads in list(_helpers):
        stop_helper(threads)
