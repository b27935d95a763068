"""Run the tools a flow strings together (dvc, git) as child processes: output streamed to the flow's
log, a failure is one line with the tool's own last words, and the child never outlives us."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from wsss.errors import WsssError
from wsss.prefect_env import die_with_parent


class CommandError(WsssError):
    """A tool the flow ran failed: names the step, the exit code and the tool's last error line."""


# SIGTERM, not SIGKILL, when the flow dies: the stages end their MLflow runs and keep finished outputs
_TERM_WITH_PARENT = die_with_parent(signal.SIGTERM)


def run(cmd: list[str], cwd: str | Path, what: str, log: Callable[[str], None] | None = None,
        env: dict | None = None, ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run `cmd`, each output line to `log`; return the output. Ctrl-C/SIGTERM reach the child (same
    process group), which is waited for; a failure raises CommandError."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=_TERM_WITH_PARENT)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if log is not None:
                log(line)
        code = proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code not in ok_codes:
        raise CommandError(f"{what} failed (exit {code}): {_cause(lines)}")
    return "\n".join(lines)


def _cause(lines: list[str]) -> str:
    """The line that says why: a stage's own `error: ...` line (the cause) over DVC's `ERROR: failed to
    reproduce ...` (the consequence), else the last line."""
    for prefix in ("error: ", "ERROR: "):
        found = [ln.strip() for ln in lines if ln.strip().startswith(prefix)]
        if found:
            return found[-1]
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "no output")


def dvc(*args: str, cwd: str | Path, what: str | None = None, log=None, env=None) -> str:
    """`python -m dvc ...` with this interpreter (the venv's dvc, whatever PATH says)."""
    return run([sys.executable, "-m", "dvc", *args], cwd, what or f"dvc {args[0]}", log=log, env=env)


def default_remote(cwd: str | Path) -> str | None:
    """The DVC default remote's name, or None when none is configured."""
    out = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=cwd, capture_output=True, text=True)
    name = out.stdout.strip()
    return name if out.returncode == 0 and name and "no default remote" not in (out.stdout + out.stderr).lower() else None
