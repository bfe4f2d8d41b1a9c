"""The local launcher: the method on one machine, for the demo, the benchmarks and the tests.

Kubeflow runs a search as pods; on one machine the same ``adaseg`` commands run as
child processes. This module is the one place that starts them:

* :class:`ChildProcesses` starts children that cannot outlive their parent (Linux's
  ``PR_SET_PDEATHSIG``: a parent killed by SIGKILL or a closed terminal takes its
  controller and workers with it) and stops them in order (SIGTERM, then SIGKILL);
* :func:`start_controller` runs ``adaseg serve`` on a free port, waits for
  ``/readyz`` and returns a :class:`ControllerProcess` that can be stopped, killed
  (kill -9, as a node failure would) and restarted on the same port and store;
* :func:`adaseg`, :func:`worker_argv`, :func:`transfer_argv` and :func:`train_argv`
  build the commands, so their flags are spelled once;
* :func:`find_or_create_run` and :func:`follow` create (or resume) a run by name and
  print its progress until it ends;
* :func:`stop_signals_as_interrupt` turns SIGTERM and SIGHUP into KeyboardInterrupt,
  so an orchestrator's ``finally`` blocks run however it is ended, and
  :func:`exclusive` keeps a second orchestrator off the same outputs.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from controller_service.contract.client import ControllerClient
from controller_service.contract.schemas import RunRecord
from controller_service.net import free_port

READY_TIMEOUT = 60.0  # seconds for a controller to answer /readyz (it may wait for a lease)
STOP_TIMEOUT = 15.0
_PR_SET_PDEATHSIG = 1


def adaseg(*args: str) -> list[str]:
    """argv for an `adaseg` sub-command in this interpreter (works without the script on PATH)."""
    return [sys.executable, "-m", "controller_service", *args]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # not Linux: no libc.so.6, and children still stop with the parent's finally blocks
    with suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcesses:
    """Processes started by an orchestrator, each in its own session so Ctrl-C reaches the
    orchestrator first and it stops them in order; each dies with its parent (SIGTERM).

    ``die_with_parent`` False: for a child started from a short-lived thread (the kernel
    signals the child when the *thread* that forked it ends)."""

    def __init__(self, die_with_parent: bool = True) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.die_with_parent = die_with_parent

    def start(
        self, argv: Sequence[str], log: Path | None = None, **kwargs: Any
    ) -> subprocess.Popen:
        stdout: Any = kwargs.pop("stdout", None)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            stdout = open(log, "ab")  # noqa: SIM115 - owned by the child process
        proc = subprocess.Popen(
            list(argv),
            stdout=stdout,
            stderr=subprocess.STDOUT if log is not None else kwargs.pop("stderr", None),
            start_new_session=True,
            preexec_fn=_die_with_parent if self.die_with_parent else None,
            **kwargs,
        )
        if log is not None:
            stdout.close()  # the child has its own copy
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], **kwargs: Any) -> None:
        """Run to completion in the foreground (its progress on our terminal)."""
        proc = self.start(argv, **kwargs)
        code = proc.wait()
        self.procs.remove(proc)
        if code != 0:
            raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... failed with exit code {code}")

    def reap(self) -> list[subprocess.Popen]:
        """The processes that have exited since the last call, forgotten from now on."""
        done = [proc for proc in self.procs if proc.poll() is not None]
        for proc in done:
            self.procs.remove(proc)
        return done

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@contextmanager
def child_processes() -> Iterator[ChildProcesses]:
    children = ChildProcesses()
    try:
        yield children
    finally:
        children.stop_all()


@contextmanager
def stop_signals_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP (a closed terminal) raise KeyboardInterrupt, so an
    orchestrator runs its ``finally`` blocks and stops its children however it is ended."""

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Busy(RuntimeError):
    """Another orchestrator holds the lock (it names its pid)."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released when the process ends, however)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise Busy(f"{what} is in use by process {holder} ({path}); stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


# -- the controller ---------------------------------------------------------------------------


@dataclass
class ControllerProcess:
    """A running ``adaseg serve`` process and how to talk to it."""

    url: str
    store_uri: str
    proc: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    log_path: Path
    token: str | None = None
    _spawn: Callable[[], subprocess.Popen[bytes]] = field(default=None, repr=False)  # type: ignore[assignment]

    def client(self, **kwargs: Any) -> ControllerClient:
        return ControllerClient(self.url, token=self.token, **kwargs)

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no shutdown code runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM and wait (the graceful shutdown); SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """Stop if still running, then start again on the same port and store."""
        self.stop()
        self.proc = self._spawn()
        self.wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"controller exited with {self.proc.returncode}; log:\n{self.log()[-3000:]}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"controller not ready after {timeout:g} s; log:\n{self.log()[-3000:]}")


def start_controller(
    store_uri: str,
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    token: str | None = None,
    port: int | None = None,
    children: ChildProcesses | None = None,
) -> ControllerProcess:
    """Start ``adaseg serve`` on ``port`` (default: a free one) of 127.0.0.1 and wait until it
    is ready. ``env`` is added to this process's environment (e.g. ``ADASEG_S3_*``); ``token``
    sets ``ADASEG_TOKEN`` (unset otherwise). With ``children``, it is stopped with them."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ADASEG_TOKEN", None)
    if token:
        full_env["ADASEG_TOKEN"] = token
    port = port or free_port()
    argv = adaseg("serve", "--store", store_uri, "--host", "127.0.0.1", "--port", str(port))
    launcher = children or ChildProcesses()

    def spawn() -> subprocess.Popen[bytes]:
        return launcher.start(argv, log=log_path, env=full_env)

    controller = ControllerProcess(
        url=f"http://127.0.0.1:{port}",
        store_uri=store_uri,
        proc=spawn(),
        port=port,
        env=full_env,
        log_path=log_path,
        token=token,
        _spawn=spawn,
    )
    controller.wait_ready()
    return controller


# -- the trainers -----------------------------------------------------------------------------


def _flags(options: Mapping[str, Any]) -> list[str]:
    """``{"batch_size": 16, "no_amp": True}`` -> ``--batch-size 16 --no-amp`` (None skipped)."""
    argv: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        argv.append(f"--{name.replace('_', '-')}")
        if value is not True:
            argv.append(str(value))
    return argv


def worker_argv(
    controller_url: str, run_id: str, data: Path | str, store_uri: str, worker_id: str, **flags: Any
) -> list[str]:
    """``adaseg worker`` for one run; ``flags`` are any other flags of the command."""
    return adaseg(
        "worker", "--controller", controller_url, "--run", run_id, "--data", str(data),
        "--store", store_uri, "--worker-id", worker_id, *_flags(flags),
    )  # fmt: skip


def transfer_argv(
    controller_url: str,
    policy_run: str,
    data: Path | str,
    store_uri: str,
    epochs: int,
    **flags: Any,
) -> list[str]:
    """``adaseg transfer``: a fresh model trained with a finished run's policy."""
    return adaseg(
        "transfer", "--controller", controller_url, "--policy-run", policy_run,
        "--data", str(data), "--store", store_uri, "--epochs", str(epochs), *_flags(flags),
    )  # fmt: skip


def train_argv(
    strategy: str, data: Path | str, store_uri: str, epochs: int, **flags: Any
) -> list[str]:
    """``adaseg train``: a static weighting strategy (the baselines)."""
    return adaseg(
        "train", "--strategy", strategy, "--data", str(data), "--store", store_uri,
        "--epochs", str(epochs), *_flags(flags),
    )  # fmt: skip


# -- a run --------------------------------------------------------------------------------------


def find_or_create_run(
    client: ControllerClient, name: str, loss_names: Sequence[str], **options: Any
) -> tuple[RunRecord, bool]:
    """The run called ``name`` (resumed), or a new one with ``options``; and whether it is new."""
    for run in client.list_runs():
        if run.name == name:
            return run, False
    return client.create_run(list(loss_names), name=name, **options), True


def follow(
    client: ControllerClient,
    run_id: str,
    *,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 1.0,
    show: Callable[[str], None] = lambda line: print(line, flush=True),
) -> RunRecord:
    """Print the run's progress (round, members done, best PQ, rate, ETA) whenever it changes,
    until it finishes; RuntimeError if it fails or ``alive()`` turns false (every worker died)."""
    started = time.monotonic()
    done_before: int | None = None
    last = ""
    while True:
        run = client.get_run(run_id)  # the small record: no history
        total = 1 + run.population * run.rounds
        done = run.members_done
        done_before = done if done_before is None else done_before  # a resumed run's past
        elapsed = time.monotonic() - started
        per_minute = (done - done_before) / elapsed * 60 if done > done_before else None
        eta = f"{(total - done) / per_minute * 60:.0f}s" if per_minute else "?"
        rate = f"{per_minute:.1f} members/min" if per_minute else "?"
        best = f"{run.best.pq:.2f}" if run.best else "None"
        line = f"round {run.round}/{run.rounds}  members done {done}/{total}  best PQ {best}"
        if line != last:
            show(f"{line}  elapsed {elapsed:.0f}s  rate {rate}  ETA {eta}")
            last = line
        if run.status == "finished":
            return run
        if run.status == "failed":
            raise RuntimeError(f"run {run_id} failed: {run.failure}")
        if not alive():
            raise RuntimeError(f"every worker of run {run_id} exited before it finished")
        time.sleep(interval)


def env_with_threads(threads: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A child's environment: this process's, read now (it may hold ADASEG_S3_* set after
    import), with ``threads`` intra-op threads."""
    return {**os.environ, **(extra or {}), "OMP_NUM_THREADS": str(threads)}
