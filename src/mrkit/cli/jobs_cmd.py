"""``mrkit submit``/``status``/``logs``/``result``/``cancel``/``resume``/``jobs``: asynchronous jobs.

    mrkit submit JOB INPUT... --executor redis://host:port/db [--job-id ID] [run options]   prints the id
    mrkit status ID [--json]        phase, tasks done/total per phase, attempts, failures, workers
    mrkit logs ID [--follow]        task events and the user functions' output, per task
    mrkit result ID [--wait [--timeout S]]   the output, one JSON key TAB JSON value per line
    mrkit cancel ID
    mrkit resume ID [--wait [--timeout S]]   rerun what a failed or cancelled job had not committed
    mrkit jobs                      the jobs the executor's Redis knows, newest first

Every command but ``submit`` finds the job through ``--executor`` (or ``MRKIT_EXECUTOR``), which must
name an asynchronous executor; its job service (:mod:`mrkit.coordination.service`) provides
``handle(id)`` and ``list_jobs()``. Without it, ``status``, ``logs``, ``cancel`` and ``jobs`` read the
runs of this machine from the job registry (:mod:`mrkit.coordination.registry`).
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from typing import Any

import click

from mrkit.cli.options import apply_storage_options, parse_params, redis_password_option, run_options
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.service import JobService
from mrkit.errors import ConfigError, JobFailed
from mrkit.model.status import JobStatus

_EXECUTOR_OPTION = click.option(
    "--executor",
    envvar="MRKIT_EXECUTOR",
    required=True,
    help="The asynchronous executor the job was submitted to (redis://…).",
)


def _EXECUTOR(fn: Any) -> Any:
    """``--executor`` and ``--redis-password-file`` (a redis:// executor's password, out of argv)."""
    return redis_password_option(_EXECUTOR_OPTION(fn))


def _OPTIONAL_EXECUTOR(fn: Any) -> Any:
    """``--executor`` where a run of this machine (the job registry) is the default."""
    return redis_password_option(
        click.option(
            "--executor",
            envvar="MRKIT_EXECUTOR",
            default=None,
            help="The asynchronous executor the job was submitted to (redis://…); without it, a run "
            "of mrkit run on this machine, from the job registry.",
        )(fn)
    )


def _handle(job_id: str, executor: str | None) -> JobHandle:
    """The job ``job_id`` on ``executor``, or in the job registry of this machine when None."""
    if executor is not None:
        return _service(executor).handle(job_id)
    from mrkit.coordination.registry import RegistryJobHandle, registry_dir

    handle = RegistryJobHandle(job_id)
    if not registry_dir(job_id).joinpath("status.json").exists():
        raise ConfigError(
            f"no run {job_id} in the job registry {registry_dir()}: a submitted job needs --executor "
            "(or MRKIT_EXECUTOR) naming where it was submitted"
        )
    return handle


def _service(name: str) -> JobService:
    """The job service of the executor ``name`` (a one-sentence error when it has none)."""
    from mrkit.coordination.service import job_service
    from mrkit.execution.base import open_executor

    service = job_service(open_executor(name, workers=1))
    if service is None:
        raise ConfigError(
            f"executor {name!r} runs jobs in the submitting process; submitted jobs live on an "
            "asynchronous executor such as redis://host:port/db"
        )
    return service


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_ref", metavar="JOB")
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@run_options
@click.option(
    "--job-id",
    "job_id",
    default=None,
    help="The job's id (default: generated from its name); the commands that follow it take this id.",
)
def submit(job_ref: str, inputs: tuple[str, ...], **opts: Any) -> None:
    """Submit JOB over INPUT to an asynchronous executor and print the job id at once.

    The job advances without this process. Inputs given as local paths and a local -o folder must
    exist at the same path on every worker. Without -o the result stays in Redis: `mrkit result ID`.

    \b
    Example:
      mrkit submit examples/wordcount.py:WordCount /shared/texts --executor redis://127.0.0.1:6379/0
    """
    import mrkit
    from mrkit.cli.jobfile import load_request

    opts["params"] = parse_params(opts.pop("param"))
    apply_storage_options(opts.pop("storage_options"))
    if opts.pop("counters"):
        raise ConfigError(
            "--counters applies to mrkit run; a submitted job's counters: mrkit status ID --json"
        )
    job, run_inputs, options = load_request(job_ref, inputs, opts)
    executor = options.pop("executor", None)
    if not executor:
        raise ConfigError(
            "mrkit submit needs --executor (or MRKIT_EXECUTOR) naming an asynchronous executor, "
            "e.g. redis://127.0.0.1:6379/0"
        )
    ex = _service(executor).executor
    if options.get("output") is None:
        options.pop("format", None)
    handle = mrkit.submit(job, run_inputs, executor=ex, **options)
    click.echo(handle.id)
    follow = ex.name
    storage = options.get("storage")
    if storage and follow.startswith("lambda") and "storage=" not in follow:
        # A serverless job's state lives in its storage: the follow-up commands must name it too.
        follow += f"{'&' if '?' in follow else '?'}storage={storage}"
    click.echo(
        f"mrkit: watch it in the web dashboard: mrkit dashboard --executor {shlex.quote(follow)}", err=True
    )
    click.echo(
        f"mrkit: submitted {handle.id}; follow it with: "
        f"mrkit status {handle.id} --executor {shlex.quote(follow)}",
        err=True,
    )


def _print_status(st: JobStatus) -> None:
    click.echo(f"job       {st.id} ({st.name})")
    click.echo(f"state     {st.state}" + (f", phase {st.phase}" if st.phase else ""))
    if st.steps is not None:  # a multi-step job on a job service: the tasks below are its step's
        click.echo(f"step      {st.step} of {st.steps}")
    if st.state not in ("unknown", "lost") or st.map.total or st.reduce.total:
        for name, phase in (("map", st.map), ("reduce", st.reduce)):
            click.echo(
                f"{name:<9} {phase.done}/{phase.total} tasks done, {phase.attempts} attempts, "
                f"{phase.failures} failed, {phase.lost} lost"
            )
        click.echo(f"in flight {st.in_flight}")
        click.echo(f"workers   {', '.join(st.workers) or '(none yet)'}")
        if st.seconds is not None:
            click.echo(f"elapsed   {st.seconds:.1f}s")
        if st.output:
            click.echo(f"output    {st.output}")
        if st.dashboard:
            click.echo(f"dashboard {st.dashboard}")
        if st.cost is not None:  # a serverless job: requests, GB-seconds, estimated price
            from mrkit.coordination.cost import describe

            click.echo(f"cost      {describe(st.cost)}")
        for i, slow in enumerate(st.slowest):
            mark = " (straggler: over twice its phase's median)" if slow.get("straggler") else ""
            click.echo(
                f"{'slowest' if i == 0 else '':<9} {slow['task']} attempt {slow['attempt']}: "
                f"{slow['seconds']:.3f}s on {slow['worker']}{mark}"
            )
        if st.refused:
            click.echo(
                f"refused   {st.refused} entries did not verify or decode (mrkit logs ID says why); "
                "do the submitter and the workers share one secret (MRKIT_SECRET / --secret-file)?"
            )
    if st.error:
        click.echo(f"error     {st.error}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@_OPTIONAL_EXECUTOR
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
def status(job_id: str, executor: str | None, as_json: bool) -> None:
    """Show a job's phase, tasks done per phase, attempts, failures and workers: a submitted job
    (--executor), or a run of ``mrkit run`` on this machine (its job registry). --json prints the
    status with the job's task events (one object per attempt).

    Exits 1 when the job failed, was cancelled, was lost or is unknown.
    """
    handle = _handle(job_id, executor)
    st = handle.status()
    if as_json:
        out = st.to_dict()
        try:  # the task events too, one object per attempt (mrkit.coordination.events)
            out["events"] = [e.to_dict() for e in handle.events()]
        except (NotImplementedError, FileNotFoundError):
            pass
        click.echo(json.dumps(out, indent=1, sort_keys=True))
    else:
        _print_status(st)
    if st.ended_badly:
        sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@_OPTIONAL_EXECUTOR
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
def logs(job_id: str, executor: str | None, follow: bool) -> None:
    """Print a job's task events and the output of its user functions, per task (a run of this
    machine without --executor: one line per ended attempt)."""
    for line in _handle(job_id, executor).logs(follow=follow):
        click.echo(line)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@_EXECUTOR
@click.option("--wait", is_flag=True, help="Wait for the job to end instead of failing while it runs.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
def result(job_id: str, executor: str, wait: bool, timeout: float | None) -> None:
    """Print a finished job's output: one JSON key TAB JSON value per line."""
    handle = _service(executor).handle(job_id)
    if not wait:
        st = handle.status()
        if st["state"] == "running":
            tasks = st["tasks"]
            raise JobFailed(
                f"job {job_id} is still running (phase {st['phase']}: map {tasks['map']['done']}/"
                f"{tasks['map']['total']}, reduce {tasks['reduce']['done']}/{tasks['reduce']['total']}); "
                "use --wait to wait for it",
                job_id=job_id,
            )
    res = handle.wait(timeout)
    out = sys.stdout
    for k, v in res:
        out.write(f"{json.dumps(k, ensure_ascii=False)}\t{json.dumps(v, ensure_ascii=False, default=repr)}\n")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@_OPTIONAL_EXECUTOR
def cancel(job_id: str, executor: str | None) -> None:
    """Cancel a submitted job, or a run of this machine (without --executor); nothing is
    published, and `mrkit resume ID` can continue a submitted one."""
    handle = _handle(job_id, executor)
    if handle.cancel():
        click.echo(f"cancelled {job_id}")
    elif handle.status().state == "running":
        click.echo(f"job {job_id} is already publishing its output: too late to cancel", err=True)
    else:
        click.echo(f"job {job_id} had already ended; nothing to cancel", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("job_id", metavar="ID")
@_EXECUTOR
@click.option("--wait", is_flag=True, help="Wait for the resumed job to end; exit 1 if it fails again.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
def resume(job_id: str, executor: str, wait: bool, timeout: float | None) -> None:
    """Resume a failed or cancelled submitted job: keep every committed task, run the rest.

    Prints the job id, as `mrkit submit` does. Exits 2 when the job cannot be resumed (unknown or
    expired, still running, already done, its data gone). Works for Redis and serverless jobs.

    \b
    Example:
      mrkit resume wordcount-20260101-120000-1a2b3c4d5e --executor redis://127.0.0.1:6379/0 --wait
      mrkit resume wc1 --executor 'lambda://mrkit-fn?storage=s3://bucket/mrkit' --wait
    """
    import mrkit

    handle = mrkit.resume(job_id, executor=_service(executor).executor)
    click.echo(handle.id)
    if not wait:
        click.echo(
            f"mrkit: resumed {handle.id}; follow it with: "
            f"mrkit status {handle.id} --executor {shlex.quote(executor)}",
            err=True,
        )
        return
    res = handle.wait(timeout)
    click.echo(f"mrkit: job {handle.id} done in {res.seconds:.1f}s", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_OPTIONAL_EXECUTOR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per job.")
def jobs(executor: str | None, as_json: bool) -> None:
    """List the jobs the executor knows, newest first (without --executor: the runs of this
    machine, from the job registry)."""
    from mrkit.coordination.registry import list_runs

    for st in _service(executor).list_jobs() if executor is not None else list_runs():
        if as_json:
            click.echo(json.dumps(st.to_dict(), sort_keys=True))
            continue
        tasks = st["tasks"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st["submitted"] or 0))
        maps, reduces = tasks["map"], tasks["reduce"]
        click.echo(
            f"{st['id']}  {st['state']:<9} {st['phase']:<9} map {maps['done']}/{maps['total']} "
            f"reduce {reduces['done']}/{reduces['total']}  submitted {when}"
        )
