"""Small files packed into one map task (the default plan, ``pack_splits``): what a task sees, how it
fails, what is never packed, and that a packed job resumes. The same bytes on every executor are
checked by the contract suite (``test_small_files_packed_into_fewer_map_tasks_change_no_byte``)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mrkit
from mrkit.errors import JobFailed
from mrkit.storage import open_storage

N_FILES = 12


def small_files(folder: Path, poison: int | None = None) -> list[Path]:
    """N_FILES files of 10 lines each (``file<i> line<j>``); file ``poison`` has a bad line 7."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(N_FILES):
        lines = [f"file{i} line{j}" for j in range(10)]
        if i == poison:
            lines[7] = "poison"
        path = folder / f"f{i:02d}.txt"
        path.write_text("".join(line + "\n" for line in lines))
        paths.append(path)
    return paths


class Hooks(mrkit.Job):
    """Counts words, the mapper_init/mapper_final calls, and the files each task reads."""

    def mapper_init(self) -> None:
        self.files: set[str] = set()

    def mapper(self, line: str):
        name = Path(mrkit.context().input.path).name
        if line == "poison" or (
            name == "f11.txt" and Path(self.params.get("fail_flag", "/nonexistent")).exists()
        ):
            raise ValueError("a poisoned record")
        self.files.add(name)
        for word in line.split():
            yield word, 1

    def mapper_final(self):
        yield "mapper_final calls", 1
        yield "files per task", len(self.files)

    def reducer(self, key, values):
        return sum(values)


def test_a_packed_task_runs_its_hooks_once_and_names_each_file(tmp_path: Path) -> None:
    small_files(tmp_path / "in")
    res = mrkit.run(Hooks(), str(tmp_path / "in"), executor="processes", workers=2, n_reduce=1, quiet=True)
    out = dict(res)
    assert res.counters["map.tasks"] == 4  # two waves for each of the 2 workers
    assert out["mapper_final calls"] == 4  # once per task, not once per file
    assert out["files per task"] == N_FILES  # context().input.path followed the files
    assert all(out[f"file{i}"] == 10 for i in range(N_FILES))


def test_a_bad_record_in_a_packed_task_names_its_own_file_and_nothing_is_published(tmp_path: Path) -> None:
    small_files(tmp_path / "in", poison=7)
    with pytest.raises(JobFailed) as failed:
        mrkit.run(
            Hooks(),
            str(tmp_path / "in"),
            output=str(tmp_path / "out"),
            executor="processes",
            workers=2,
            policy=mrkit.RetryPolicy(max_attempts=1),
            quiet=True,
        )
    first = str(failed.value).splitlines()[0]
    assert "f07.txt bytes 0-115, record 7 (byte 84)" in first and "a poisoned record" in first, first
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"n_map": 6}, id="explicit-n_map"),
        pytest.param({"split_size": 10_000}, id="explicit-split_size"),
        pytest.param({"n_reduce": 0}, id="map-only"),
    ],
)
def test_a_plan_the_user_cut_or_a_map_only_job_is_not_packed(tmp_path: Path, options: dict) -> None:
    small_files(tmp_path / "in")
    job = mrkit.Job(mapper=lambda line: [(line.split()[0], 1)], reducer=lambda k, vs: sum(vs))
    res = mrkit.run(job, str(tmp_path / "in"), executor="inline", workers=2, quiet=True, **options)
    assert res.counters["map.tasks"] == N_FILES  # one per file: never fewer splits than files


def test_a_packed_job_that_failed_resumes_with_its_committed_tasks(tmp_path: Path) -> None:
    small_files(tmp_path / "in")
    flag = tmp_path / "fail"
    flag.touch()  # while it exists, the last file (in the last packed task) fails
    job = Hooks(params={"fail_flag": str(flag)})
    out = tmp_path / "out"
    options = dict(
        output=str(out),
        executor="processes",
        workers=2,
        n_reduce=2,
        job_id="packed-resume",
        policy=mrkit.RetryPolicy(max_attempts=1, speculative=False),
        quiet=True,
    )
    with pytest.raises(JobFailed, match="f11.txt"):
        mrkit.run(job, str(tmp_path / "in"), **options)
    state = open_storage(str(out / "_temporary"))
    committed = {k.split("/")[2] for k in state.list("packed-resume/map/") if k.endswith("/COMMIT")}
    assert committed and "map-00003" not in committed  # its neighbours may have finished or not
    flag.unlink()
    res = mrkit.run(job, str(tmp_path / "in"), resume=True, **options)
    assert res.counters["map.tasks_resumed"] == len(committed) and res.counters["map.tasks"] == 4
    assert dict(mrkit.read_output(str(out)))["file11"] == 10
