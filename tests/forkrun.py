"""Run an entry-point script the way `python script.py ARGS` does, in a child forked from an interpreter that has
already imported the heavy third-party packages (torch, numpy, PIL, omegaconf).

A bad-input case is mostly interpreter start-up: importing torch takes seconds on two busy cores, and the check
under test then fails within milliseconds. The child runs the script as `__main__` with its own argv, working
folder, environment and stdout/stderr files, imports every project module itself (nothing of the project is loaded
in the parent), and its exit code is what `sys.exit` gave. `BAD_INPUT_FRESH=1` makes tests/test_bad_input.py start
a fresh interpreter per case instead.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

PARENT = r"""
import json, os, runpy, sys, traceback
import numpy, omegaconf, PIL.Image, torch, yaml  # third-party only: the project is imported by each child
sys.stdout.write("ready\n"); sys.stdout.flush()
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(job["cwd"])
            os.environ.clear()
            os.environ.update(job["env"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, job["stdout"], os.O_WRONLY | os.O_CREAT),
                                    (2, job["stderr"], os.O_WRONLY | os.O_CREAT)):
                f = os.open(path, flags, 0o644)
                os.dup2(f, fd)
                os.close(f)
            sys.argv = [job["script"], *job["argv"]]
            sys.path[0] = os.path.dirname(job["script"])
            try:
                runpy.run_path(job["script"], run_name="__main__")
                code = 0
            except SystemExit as e:
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except Exception:
                    pass
            os._exit(code)
    sys.stdout.write(json.dumps({"pid": pid}) + "\n"); sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n"); sys.stdout.flush()
"""


class ForkRunner:
    """One parent interpreter; `run` executes one script at a time in a fresh child of it."""

    def __init__(self, env: dict, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=cwd)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._line(300) == "ready", "the fork parent did not start"

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # the parent is gone

    def _line(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def run(self, cmd: list[str], cwd: Path, env: dict, logs: Path, timeout: float) -> subprocess.CompletedProcess:
        """cmd = [python, script, *argv] as for subprocess.run; stdout/stderr are kept in files under `logs`."""
        out, err = logs / "stdout.txt", logs / "stderr.txt"
        job = {"script": str(cmd[1]), "argv": [str(a) for a in cmd[2:]], "cwd": str(cwd), "env": env,
               "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._line(60))["pid"]
        line = self._line(timeout)
        if line is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._line(60)
            raise subprocess.TimeoutExpired(cmd, timeout)
        rc = json.loads(line)["rc"]
        return subprocess.CompletedProcess(cmd, rc, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
