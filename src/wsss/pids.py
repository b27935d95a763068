"""A process's identity: its pid and when it started. A pid alone is reused once its process is gone, so
whoever records a process to find it again (an MLflow run's owner, the dev stack's services) records both."""

from __future__ import annotations

from pathlib import Path


def started(pid: int) -> str | None:
    """When process `pid` started, in a form that does not move with the wall clock: its start time in
    clock ticks since boot (Linux /proc), else psutil's creation time; None when there is no such
    process or only its zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return None if fields[0] == "Z" else fields[19]
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else f"{p.create_time():.2f}"
    except Exception:
        return None


def boot_id() -> str:
    """Changes at every boot (Linux); '' elsewhere: a process recorded before a reboot is gone."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def is_running(pid: int, start: str | None) -> bool:
    """Is the process recorded as (pid, start) still the one running under that pid?"""
    now = started(pid)
    return now is not None and now == start
