"""A real one-node Slurm cluster for the tests (Debian's slurm-wlm and munge; ../shared/notes/slurm-testing.md).

``start_cluster`` writes a private slurm.conf (free ports, its own state and spool folders), makes sure munge
runs, starts slurmctld and slurmd, and waits until the node is idle; ``stop_cluster`` stops both by the pids in
their pid files. Nothing of Slurm is mocked: jobs really run, on this machine's two cores.
"""

from __future__ import annotations

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


def start_cluster(folder: Path) -> dict[str, str]:
    """Start a cluster whose files live in ``folder``; returns the environment its clients need."""
    _munge()
    host = socket.gethostname()
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=effnettest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=20
NodeName={host} CPUs={os.cpu_count() or 2} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["slurmctld", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
        if "idle" in out:
            return {"SLURM_CONF": str(conf)}
        time.sleep(0.5)
    raise RuntimeError("the test cluster did not come up: " + (folder / "slurmctld.log").read_text()[-2000:])


def stop_cluster(folder: Path) -> None:
    for name in ("slurmd.pid", "slurmctld.pid"):
        try:
            os.kill(int((folder / name).read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            continue
