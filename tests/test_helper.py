"""The run's helper process: requests go out as they come, answers come back in order, and a
helper that dies fails what was asked of it (the caller then does the work itself)."""
from __future__ import annotations

import os
import time

import pytest


@pytest.fixture
def helper2():
    from bids_brainage import helper

    try:
        yield helper.helper(2)
    finally:
        helper.stop_helpers()


def test_answers_come_back_in_order(helper2, tmp_path):
    sources = []
    for number in range(5):
        sources.append(tmp_path / f"{number}.nii")
        sources[-1].write_bytes(bytes([number]) * (1000 + number))
    answers = [helper2.submit("bids_brainage.io", "gzip_file", str(s), f"{s}.gz")
               for s in sources]
    assert [a.result(timeout=60) for a in answers] == [f"{s}.gz" for s in sources]
    with pytest.raises(RuntimeError, match="not a bids_brainage function"):
        helper2.call("os", "getcwd")


def test_the_helper_goes_on_while_this_process_holds_the_interpreter(helper2, tmp_path):
    """The second request is in the helper's hands before the first one's answer is read:
    while this process runs a long C call that never lets its other threads run (as ANTs'
    registration does), the helper still does both."""
    big, small = tmp_path / "big.nii", tmp_path / "small.nii"
    big.write_bytes(os.urandom(1 << 20) * 24)  # ~0.3 s to compress
    small.write_bytes(b"x" * 1000)
    helper2.call("bids_brainage.io", "gzip_file", str(small), str(small) + ".warm")  # started
    first = helper2.submit("bids_brainage.io", "gzip_file", str(big), f"{big}.gz")
    second = helper2.submit("bids_brainage.io", "gzip_file", str(small), f"{small}.gz")
    time.sleep(0.1)  # the requests are written (this thread waits, the writer runs)
    sum(range(3 * 10**8))  # ~4 s holding the interpreter's lock: no answer is read meanwhile
    held_until = time.time()
    assert second.result(timeout=60) == f"{small}.gz" and first.done()
    assert os.path.getmtime(f"{small}.gz") < held_until - 0.5


def test_a_helper_that_dies_fails_what_was_asked_and_is_replaced(tmp_path):
    from bids_brainage import helper

    try:
        first = helper.helper(2)
        first.process.kill()
        first.process.wait()
        with pytest.raises(helper.UNREACHABLE):
            first.call("bids_brainage.io", "gzip_file", str(tmp_path / "a"), str(tmp_path / "b"))
        with pytest.raises(helper.UNREACHABLE):  # and every later request, at once
            first.submit("bids_brainage.io", "gzip_file", "a", "b").result(timeout=10)
        # run_there does the work here instead, and the next call starts a new helper
        src = tmp_path / "c.nii"
        src.write_bytes(b"y" * 100)
        done = helper.run_there(2, lambda: "here", "bids_brainage.io", "gzip_file",
                                str(src), f"{src}.gz")
        assert done() == "here"
        assert helper.helper(2) is not first
        assert helper.helper(2).call("bids_brainage.io", "gzip_file", str(src),
                                     f"{src}.gz") == f"{src}.gz"
    finally:
        helper.stop_helpers()


def test_loading_ahead_holds_off_while_a_step_waits_for_the_helpers_cores():
    """hold_off() returns at once unless a step is waiting_for_cores (deepbet's network in
    the helper); then it returns when the last such step is done."""
    import threading
    import time

    from bids_brainage.helper import hold_off, waiting_for_cores

    hold_off()  # nobody waits: at once
    returned = threading.Event()
    waiter = threading.Thread(target=lambda: (hold_off(), returned.set()))
    with waiting_for_cores():
        with waiting_for_cores():
            waiter.start()
            time.sleep(0.2)
            assert not returned.is_set()
        time.sleep(0.2)
        assert not returned.is_set()  # one step still waits
    assert returned.wait(5)
    waiter.join()
    with pytest.raises(ValueError):
        with waiting_for_cores():
            raise ValueError("a failed step")
    hold_off()  # released by the failure too
