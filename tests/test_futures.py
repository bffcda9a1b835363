"""mrkit.futures: map, map_reduce, submit and map_as_completed on the inline and processes executors."""

from __future__ import annotations

import functools
import itertools
import operator
import os
import signal
import threading
import time
from concurrent.futures import Future

import pytest

from mrkit import futures
from mrkit.errors import ConfigError, JobFailed, WorkerLost
from mrkit.execution import calls
from mrkit.execution.base import Executor
from mrkit.execution.inline import InlineExecutor
from mrkit.execution.processes import ProcessExecutor
from mrkit.model.task import TaskKind


@pytest.fixture(scope="module")
def processes():
    with ProcessExecutor(workers=2) as executor:
        yield executor


@pytest.fixture(params=["inline", "processes"])
def executor(request):
    if request.param == "inline":
        return InlineExecutor()
    return request.getfixturevalue("processes")


@pytest.fixture(autouse=True)
def no_default_left_behind():
    yield
    futures.shutdown()
    assert futures._Defaults.executor is None


class Recording(Executor):
    """Inline, with a pretend worker count, recording every spec; optionally loses first attempts."""

    name = "recording"

    def __init__(self, workers: int = 2, lose: int = 0) -> None:
        self.workers = workers
        self.lose = lose  # attempts numbered up to this fail with WorkerLost
        self.inner = InlineExecutor()
        self.specs = []

    def submit(self, spec):
        self.specs.append(spec)
        if spec.attempt <= self.lose:
            future = Future()
            future.set_exception(WorkerLost(f"{spec.task_id} attempt {spec.attempt} lost: worker was killed"))
            return future
        return self.inner.submit(spec)


def div_by_seven_minus(x):
    return 1 / (7 - x)


# -- map ----------------------------------------------------------------------------------------------


def test_map_is_ordered_and_takes_lambdas_and_closures(executor):
    offset = 1000
    assert list(futures.map(lambda x: x * x, range(50), executor=executor)) == [x * x for x in range(50)]
    assert list(futures.map(lambda x: x + offset, range(5), executor=executor, chunksize=2)) == [
        1000,
        1001,
        1002,
        1003,
        1004,
    ]
    words = iter(["b", "a", "c"] * 7)  # unsized: adaptive chunks, still in order
    assert list(futures.map(str.upper, words, executor=executor)) == ["B", "A", "C"] * 7


def test_map_zips_iterables_shortest_wins(executor):
    assert list(futures.map(operator.add, [1, 2, 3], (10, 20), executor=executor)) == [11, 22]
    gen = (x for x in itertools.count())
    three = futures.map(lambda a, b, c: a + b + c, gen, range(4), [0] * 9, executor=executor)
    assert list(three) == [0, 2, 4, 6]


def test_map_empty_and_single_item(executor):
    assert list(futures.map(abs, [], executor=executor)) == []
    assert list(futures.map(abs, [-3], executor=executor)) == [3]
    assert list(futures.map(operator.add, [], [1], executor=executor)) == []


def test_map_is_lazy_and_takes_an_infinite_input(executor):
    pulled = []

    def numbers():
        for n in itertools.count():
            pulled.append(n)
            yield n

    results = futures.map(lambda x: x * 2, numbers(), executor=executor)
    assert pulled == []  # nothing read before the first next()
    assert list(itertools.islice(results, 5)) == [0, 2, 4, 6, 8]
    assert len(pulled) < 5000  # a bounded window, not the whole (infinite) input
    del results  # dropping the iterator cancels the chunks still queued


def test_ten_thousand_tiny_tasks(executor):
    assert list(futures.map(lambda x: x + 1, range(10_000), executor=executor)) == list(range(1, 10_001))


def test_chunks_share_one_pickled_function_and_number_their_tasks():
    recording = Recording(workers=2)
    assert list(futures.map(lambda x: -x, range(20), executor=recording)) == [-x for x in range(20)]
    specs = recording.specs
    assert len(specs) == 7  # ceil(20 / (4 * 2)) = 3 items per chunk, as Pool.map would
    assert [s.task_id for s in specs] == [f"call-{i:06d}" for i in range(7)]
    assert all(s.kind is TaskKind.CALL for s in specs)
    assert len({s.call_fn for s in specs}) == 1 and len({s.call_digest for s in specs}) == 1
    assert len({s.job_id for s in specs}) == 1 and specs[0].job_id.startswith("futures-")
    assert len(list(futures.map(abs, range(20), executor=recording, chunksize=20))) == 20
    assert len(recording.specs) == 8


def test_map_raises_the_worker_exception_at_its_item(executor):
    results = futures.map(div_by_seven_minus, range(12), executor=executor, chunksize=3)
    assert [next(results) for _ in range(7)] == [1 / (7 - x) for x in range(7)]
    with pytest.raises(ZeroDivisionError) as info:
        next(results)
    error = info.value
    assert str(error) == "division by zero"
    note = error.__notes__[0]
    assert note.startswith("futures.map: item 7 raised ZeroDivisionError: division by zero (task call-000002")
    assert "div_by_seven_minus" in error.remote_traceback and "1 / (7 - x)" in error.remote_traceback
    assert isinstance(error.__cause__, futures.RemoteTraceback)
    assert "_MapChunk" not in error.remote_traceback  # starts in the user's code


class Unpicklable(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArguments(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_unpicklable(x):
    if x == 2:
        raise Unpicklable("holding a lock")
    return x


def test_exceptions_that_do_not_travel_become_call_failed(executor):
    with pytest.raises(futures.CallFailed) as info:
        list(futures.map(raise_unpicklable, range(4), executor=executor))
    error = info.value
    assert isinstance(error, JobFailed)
    assert str(error).startswith("futures.map: item 2 raised Unpicklable: holding a lock (task call-")
    assert "raise_unpicklable" in error.remote_traceback and error.job_id.startswith("futures-")

    def two(x):
        raise NeedsTwoArguments(x, "b")

    with pytest.raises(futures.CallFailed, match=r"item 0 raised NeedsTwoArguments: 0 and b"):
        list(futures.map(two, [0], executor=executor))


def test_a_result_that_cannot_be_pickled_fails_the_call(executor):
    # The worker's runtime reports this one (ok=False): there is no user exception to raise again.
    with pytest.raises(futures.CallFailed, match=r"call-000000 of job \S+ failed in worker \S+: TypeError"):
        list(futures.map(lambda x: threading.Lock(), [1], executor=executor))


def test_bad_arguments_fail_at_once():
    with pytest.raises(TypeError, match="needs a callable"):
        futures.map(42, [1], executor="inline")
    with pytest.raises(TypeError, match="at least one iterable"):
        futures.map(abs, executor="inline")
    with pytest.raises(ConfigError, match="chunksize"):
        futures.map(abs, [1], executor="inline", chunksize=0)
    with pytest.raises(ConfigError, match="unknown executor"):
        futures.map(abs, [1], executor="nope")
    with pytest.raises(TypeError, match="cannot pickle the arguments from item 0"):
        list(futures.map(lambda x: x, [threading.Lock()], executor="inline"))


# -- lost workers -------------------------------------------------------------------------------------


def test_a_chunk_whose_worker_was_lost_runs_again():
    recording = Recording(workers=1, lose=2)
    assert list(futures.map(lambda x: x + 1, range(6), executor=recording, chunksize=3)) == list(range(1, 7))
    assert sorted((s.task_id, s.attempt) for s in recording.specs) == [
        ("call-000000", 1),
        ("call-000000", 2),
        ("call-000000", 3),
        ("call-000001", 1),
        ("call-000001", 2),
        ("call-000001", 3),
    ]


def test_a_chunk_lost_every_time_fails_the_call():
    with pytest.raises(
        futures.CallFailed,
        match=r"task call-000000 of job \S+ \(items 0-1\) lost its "
        r"worker 3 times; last: call-000000 attempt 3 lost",
    ):
        list(futures.map(abs, [1, 2], executor=Recording(lose=3), chunksize=2))


def test_user_exceptions_are_not_retried():
    recording = Recording()
    with pytest.raises(ZeroDivisionError):
        list(futures.map(div_by_seven_minus, [7], executor=recording))
    assert len(recording.specs) == 1


def test_a_killed_worker_is_replaced_and_its_chunk_rerun(processes, tmp_path):
    marker = str(tmp_path / "killed-once")

    def die_once(x):
        if x == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            # Killed from outside, as the OOM killer would: a lost worker, re-run. (An os._exit of the
            # task's own would be a poison task: a failed call, see test_launcher / docs/faults.md.)
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 10

    results = futures.map(die_once, range(8), executor=processes, chunksize=2)
    assert list(results) == [x * 10 for x in range(8)]
    assert os.path.exists(marker)


# -- map_reduce ---------------------------------------------------------------------------------------


def test_map_reduce_seed_002(executor):
    a, b = range(1, 101), range(101, 201)
    assert futures.map_reduce(operator.mul, operator.add, a, b, executor=executor) == 843350
    assert futures.mapReduce is futures.map_reduce
    assert functools.reduce(operator.add, futures.map(operator.mul, a, b, executor=executor)) == 843350


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_map_reduce_keeps_order_for_non_commutative_operations(executor, chunksize):
    words = [f"w{i}," for i in range(61)]
    expected = functools.reduce(operator.add, map(str.upper, words))
    total = futures.map_reduce(str.upper, operator.add, words, executor=executor, chunksize=chunksize)
    assert total == expected
    # list concatenation: associative, not commutative; with chunks of one, the partials are folded
    # by a level of tasks before the caller adds the last few
    pairs = futures.map_reduce(
        lambda x, y: [(x, y)], operator.add, range(61), "abcdefgh" * 8, executor=executor, chunksize=chunksize
    )
    assert pairs == list(zip(range(61), "abcdefgh" * 8, strict=False))


def test_map_reduce_empty_single_and_initializer(executor):
    with pytest.raises(TypeError, match="empty input with no initializer"):
        futures.map_reduce(abs, operator.add, [], executor=executor)
    assert futures.map_reduce(abs, operator.add, [], executor=executor, initializer=0) == 0
    assert futures.map_reduce(lambda s: s * 2, operator.add, ["x"], executor=executor) == "xx"
    assert futures.map_reduce(str, operator.add, range(3), executor=executor, initializer=">") == ">012"


def test_map_reduce_errors_name_the_function_and_item(executor):
    with pytest.raises(ZeroDivisionError) as info:
        futures.map_reduce(div_by_seven_minus, operator.add, range(10), executor=executor, chunksize=4)
    assert info.value.__notes__[0].startswith("futures.map_reduce: map_fn on item 7 raised ZeroDivisionError")

    def picky(x, y):
        if y == 5:
            raise ValueError("no fives")
        return x + y

    with pytest.raises(ValueError, match="no fives") as info:
        futures.map_reduce(abs, picky, range(10), executor=executor, chunksize=4)
    assert "reduce_fn combining item 5 raised ValueError: no fives" in info.value.__notes__[0]


def test_partials_are_reduced_in_a_tree_of_tasks():
    recording = Recording(workers=2)
    assert futures.map_reduce(abs, operator.add, range(40), executor=recording, chunksize=1) == sum(range(40))
    fold_specs = [s for s in recording.specs if s.call_fn != recording.specs[0].call_fn]
    # 40 partials -> 2 tasks (one per worker) -> 2 values, which the caller adds
    assert len(recording.specs) == 42 and len(fold_specs) == 2
    assert [s.task_id for s in fold_specs] == ["call-000040", "call-000041"]


# -- submit, map_as_completed, the default executor -----------------------------------------------------


def test_submit_returns_a_future_of_the_value(executor):
    with futures.using(executor):
        future = futures.submit(pow, 2, 10)
        assert isinstance(future, Future)
        assert future.result(timeout=10) == 1024
        assert futures.submit(lambda a, *, b: a - b, 10, b=3).result(timeout=10) == 7
        failing = futures.submit(div_by_seven_minus, 7)
        error = failing.exception(timeout=10)
        assert isinstance(error, ZeroDivisionError)
        assert error.__notes__[0].startswith("futures.submit: div_by_seven_minus() raised ZeroDivisionError")


def test_map_as_completed_yields_every_result(executor):
    results = list(futures.map_as_completed(lambda x: x * 3, range(25), executor=executor))
    assert sorted(results) == [x * 3 for x in range(25)]


def test_map_as_completed_does_not_wait_for_a_slow_item(processes):
    def nap(seconds):
        time.sleep(seconds)
        return seconds

    order = list(futures.map_as_completed(nap, [1.0, 0, 0, 0], executor=processes, chunksize=1))
    assert sorted(order) == [0, 0, 0, 1.0] and order[0] == 0


def test_set_get_using_and_shutdown():
    inline = InlineExecutor()
    assert futures.set_executor(inline) is inline
    assert futures.get_executor() is inline
    assert list(futures.map(abs, [-1])) == [1]
    with futures.using("inline") as temporary:
        assert futures.get_executor() is temporary and temporary is not inline
    assert futures.get_executor() is inline
    with pytest.raises(ConfigError, match="workers= applies to an executor name"):
        futures.set_executor(inline, workers=2)
    opened = futures.set_executor("inline", workers=1)
    assert opened.name == "inline" and futures.get_executor() is opened
    futures.shutdown()
    assert futures._Defaults.executor is None


def test_named_executors_are_opened_once_and_shut_down():
    list(futures.map(abs, [1], executor="inline"))
    first = futures._Defaults.named["inline"]
    list(futures.map(abs, [1], executor="inline"))
    assert futures._Defaults.named["inline"] is first
    futures.shutdown()
    assert futures._Defaults.named == {}


def test_values_sent_to_workers_survive_pickling():
    import pickle

    import cloudpickle

    scale = 3
    times = lambda x: x * scale  # a closure, as users write them
    for program, args in [
        (calls.MapChunk(times, star=True), ([(1,), (2,)],)),
        (calls.MapChunk(times, star=False), ([1, 2],)),
        (calls.ReduceChunk(times, operator.add, star=True), ([(1,), (2,)],)),
        (calls.ReduceChunk(times, operator.add, star=False), ([1, 2],)),
        (calls.Fold(operator.add), ([1, 2, 3],)),
    ]:
        again = pickle.loads(cloudpickle.dumps(program))
        assert again(*args)[1] is None
    error = pickle.loads(pickle.dumps(futures.CallFailed("boom", job_id="futures-1", remote_traceback="tb")))
    assert type(error) is futures.CallFailed and (str(error), error.remote_traceback) == ("boom", "tb")
    assert "tb" in str(pickle.loads(pickle.dumps(futures.RemoteTraceback("tb"))))
