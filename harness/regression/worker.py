"""A measuring worker: a fresh process that holds a :class:`~harness.regression.measure.Session`.

``python -m harness.regression.worker`` reads one JSON request per line on stdin and answers
one JSON line on stdout: ``setup`` (plugin recipe, entries, round settings; answers the
targets), ``block`` (one round of one target; answers its samples), ``quit``. The driver side
is :class:`WorkerSession`, which reads like a ``Session``.

Two reasons for a process of its own: a baseline and a check are measured the same way, in a
process that did nothing before (not in the heap, caches and threads training left behind);
and ``bench check --against REV`` runs one worker on the base revision's code and one on the
candidate's, side by side in the same job. A worker of another source tree is started with
that tree first on ``PYTHONPATH`` (its ``harness`` and built-in ``plugins``); installed
entry-point plugins are the same for both.
"""
from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Optional

PROTOCOL = 2  # 2: rounds time calls of a once-loaded model; calibration images passed


def _reps_out(reps: dict) -> list:
    return [[*k, v] for k, v in reps.items()]


def _reps_in(rows) -> dict:
    return {tuple(r[:3]): r[3] for r in rows or ()}


#: OpenMP threads of a measuring worker sleep as soon as their work is done (unless the user
#: set ``OMP_WAIT_POLICY``). With the default policy, libgomp's threads spin after every
#: parallel region and that spinning is CPU time of the process: it landed in whatever was
#: timed next (the probe's few ``torch.mm`` calls, an ONNX Runtime call), and the paired
#: log-ratios of sub-millisecond ONNX Runtime targets read sd 2.9 (probe-normalized) instead
#: of 0.3 on an idle 2-core EPYC (docs/ci-check.md). Both sides of a check run this way.
WAIT_POLICY = "PASSIVE"


def worker_environment(base: dict) -> dict:
    """The environment of a measuring worker: ``base`` with ``OMP_WAIT_POLICY`` set to
    :data:`WAIT_POLICY` where ``base`` does not set it."""
    env = dict(base)
    env.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    return env


class WorkerError(RuntimeError):
    """The worker failed or died; the message carries its error and its stderr's tail."""


class WorkerSession:
    """A :class:`~harness.regression.measure.Session` in a fresh worker process.

    Args:
        entries, rs, only, probe_reps, calibration: as the ``Session`` takes them.
        plugins: the driver's plugin system; the worker rebuilds it from its recipe
            (built-ins and entry points of the worker's tree, plus what the driver registered).
        tree: a source tree (with ``harness/`` and ``plugins/``) whose code the worker runs;
            ``None``: the code this process runs.
        recipe: a :class:`harness.run.executor.PluginRecipe` to use instead of ``plugins``'.
        wait: wait for the worker's set-up here; ``False`` returns as soon as the set-up is
            sent, so several workers set up at once, and :meth:`ready` waits for it (the
            attributes below exist only then).
    """

    def __init__(self, entries: list[dict], rs, only: Optional[set] = None,
                 probe_reps: Optional[dict] = None, plugins=None, tree: Optional[Path] = None,
                 recipe=None, calibration: Optional[dict] = None, wait: bool = True):
        from ..run.executor import recipe_for

        if recipe is None:
            recipe = recipe_for(plugins) if plugins is not None else None
        env = worker_environment(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [
                p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self._err = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "harness.regression.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._err, text=True, env=env,
            cwd=str(tree) if tree is not None else None)
        self._ready = False
        self._send({"cmd": "setup", "protocol": PROTOCOL, "entries": entries,
                    "rs": asdict(rs), "only": [list(t) for t in only or ()],
                    "all": only is None, "probe_reps": _reps_out(probe_reps or {}),
                    "calibration": {k: str(v) for k, v in (calibration or {}).items()},
                    "recipe": base64.b64encode(pickle.dumps(recipe)).decode()})
        if wait:
            self.ready()

    def ready(self) -> "WorkerSession":
        """Wait for the worker's set-up (once) and take its answer: targets, static facts,
        probe repetitions, code and keys."""
        if not self._ready:
            reply = self._receive("setup")
            self._ready = True
            self.targets = [tuple(t) for t in reply["targets"]]
            self.static = reply["static"]
            self.counter = reply["counter"]
            self.probe_reps = _reps_in(reply["probe_reps"])
            self.code = reply["code"]
            self.keys = reply["keys"]
        return self

    def _send(self, request: dict) -> None:
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is gone: _receive says so, with its stderr

    def _call(self, request: dict) -> dict:
        self._send(request)
        return self._receive(request["cmd"])

    def _receive(self, cmd: str) -> dict:
        try:
            line = self._proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self._proc.wait()
            raise WorkerError(f"the measuring worker exited (status {self._proc.returncode}) "
                              f"during {cmd}: {self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"measuring worker: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def _stderr_tail(self, n: int = 2000) -> str:
        self._err.seek(0)
        return self._err.read()[-n:].strip() or "(nothing on stderr)"

    def block(self, i: int, keys: Optional[list] = None) -> dict:
        return self._call({"cmd": "block", "target": i, "keys": keys})["samples"]

    def close(self) -> None:
        if self._proc.poll() is None and not self._ready:  # still setting up: nothing to keep
            self._proc.kill()
            self._proc.wait()
        if self._proc.poll() is None:
            try:
                self._call({"cmd": "quit"})
            except WorkerError:
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _setup(req: dict):
    import harness

    from ..run.executor import build_plugins
    from .measure import Session
    from .settings import RoundSettings

    recipe = pickle.loads(base64.b64decode(req["recipe"]))
    if recipe is not None:
        # folders of other source trees (their harness/) must not shadow this tree's code
        recipe = type(recipe)(disabled=recipe.disabled, extras=recipe.extras, sys_path=tuple(
            p for p in recipe.sys_path if not (Path(p) / "harness" / "__init__.py").exists()))
        plugins = build_plugins(recipe)
    else:
        from ..api.manager import get_plugins
        plugins = get_plugins()
    only = None if req["all"] else {tuple(t) for t in req["only"]}
    session = Session(plugins, req["entries"], RoundSettings(**req["rs"]), only=only,
                      probe_reps=_reps_in(req["probe_reps"]), calibration=req["calibration"])
    reply = {"targets": [list(t) for t in session.targets], "static": session.static,
             "keys": session.keys,
             "counter": session.counter, "probe_reps": _reps_out(session.probe_reps),
             "code": str(Path(harness.__file__).resolve().parents[1])}
    return session, reply


def serve(stdin=sys.stdin, stdout=sys.stdout) -> int:
    """The worker's loop (``python -m harness.regression.worker``)."""
    session = None
    for line in stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "setup":
                if req.get("protocol") != PROTOCOL:
                    raise ValueError(f"the driver speaks protocol {req.get('protocol')}, this "
                                     f"worker {PROTOCOL}: the two revisions are too far apart")
                session, reply = _setup(req)
            elif req["cmd"] == "block":
                reply = {"samples": session.block(req["target"], req.get("keys"))}
            elif req["cmd"] == "quit":
                stdout.write("{}\n")
                stdout.flush()
                break
            else:
                raise ValueError(f"unknown request {req['cmd']!r}")
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        stdout.write(json.dumps(reply, default=str) + "\n")
        stdout.flush()
    if session is not None:
        session.close()
    return 0


if __name__ == "__main__":
    # keep stdout for the protocol: anything a library prints goes to stderr
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    from ..measure.allocator import tune
    tune()  # allocate as `bench` does
    sys.exit(serve(sys.stdin, out))
