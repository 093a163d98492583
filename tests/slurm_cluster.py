"""A real two-node Slurm cluster for the tests (Debian's slurm-wlm and munge; ../shared/notes/slurm-testing.md).

Two slurmd daemons on this host are two nodes, ``n1`` and ``n2`` (one CPU each: this machine's two cores), each
with its own spool, log, pid file and port, reached at NodeAddr 127.0.0.1 (their names resolve nowhere, as on a
cluster whose node names are not in DNS). ``start_cluster`` writes a private slurm.conf (free ports, its own
folders), makes sure munge runs, starts slurmctld and both slurmd, and waits until both nodes are idle;
``stop_cluster`` stops them by the pids in their pid files. Faults are real too: ``kill_slurmd`` and
``start_slurmd`` for one node, ``stop_controller`` and ``start_controller``. Nothing of Slurm is mocked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge() -> None:
    """munged running with a key (made once), as the notes describe."""
    if subprocess.run(["bash", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
        return
    if not MUNGE_KEY.exists():
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    subprocess.run(["munged", "--force"], check=True, capture_output=True)


def available() -> str | None:
    """None when this machine can run the test cluster, else why not."""
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(c) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster's slurmd needs root"
    return None


NODES = ("n1", "n2")
NODE_MEMORY_MB = 4000
PARTITION_MAX_MINUTES = 60  # a partition time limit, so a longer request can be refused at submit


def start_cluster(folder: Path) -> dict[str, str]:
    """Start a cluster whose files live in ``folder``; returns the environment its clients need."""
    _munge()
    host = socket.gethostname()
    for sub in ("state", *(f"spool/{n}" for n in NODES)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    nodes = "\n".join(f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} CPUs=1 "
                      f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN" for n in NODES)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=effnettest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.%n.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=1
MinJobAge=600
KillWait=20
SlurmdTimeout=15
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime={PARTITION_MAX_MINUTES} State=UP
""")
    env = {"SLURM_CONF": str(conf)}
    start_controller(folder, env)
    for node in NODES:
        start_slurmd(folder, env, node)
    wait_idle(env, NODES)
    return env


def _run(command: list[str], env: dict[str, str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, **env}).stdout


def start_controller(folder: Path, env: dict[str, str]) -> None:
    _run(["slurmctld", "-f", str(folder / "slurm.conf")], env)


def start_slurmd(folder: Path, env: dict[str, str], node: str) -> None:
    _run(["slurmd", "-f", str(folder / "slurm.conf"), "-N", node], env)


def wait_idle(env: dict[str, str], nodes: tuple[str, ...], timeout: float = 90) -> None:
    """Wait until every node in ``nodes`` is idle (after a start, or after a fault is repaired)."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        try:
            out = _run(["sinfo", "-h", "-N", "-o", "%N %T"], env)
        except subprocess.CalledProcessError:
            out = "(no answer)"
        if all(f"{n} idle" in out for n in nodes):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the test cluster's nodes are not idle after {timeout:.0f} s: {out}")


def _kill(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


def kill_slurmd(folder: Path, node: str) -> None:
    """A slurmd killed (SIGKILL, as a crash): its node stops answering; its job steps keep running for now."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((folder / f"slurmd.{node}.pid").read_text()), signal.SIGKILL)


def stop_controller(folder: Path) -> None:
    """slurmctld stopped by its pid file; returns once it has exited (its port is free again)."""
    pid_file = folder / "slurmctld.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)


def stop_cluster(folder: Path) -> None:
    for node in NODES:
        _kill(folder / f"slurmd.{node}.pid")
    stop_controller(folder)
