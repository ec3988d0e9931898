"""A throwaway Docker Engine for the Docker executor's tests: a private daemon, never the
machine's own, and images built here, never pulled.

``dockerd`` from Debian's ``docker.io`` runs with its own ``--data-root``, ``--exec-root``,
``--pidfile`` and socket in a fresh temporary folder, ``--bridge=none --iptables=false`` (it
touches no network of the machine), the ``vfs`` storage driver (it works on any filesystem,
including the overlay a CI container runs on) and a containerd namespace of its own. Containers
use the host's network. It is stopped by its PID; the mounts it leaves under its exec-root (the
``netns`` bind mount) are unmounted, and the folder removed.

No registry is reachable, so the base image is ``docker import``-ed from a root filesystem with
nothing in it but mount points and the merged-``/usr`` links: a container runs the host's own
Python and this checkout from read-only bind mounts (``host_binds``), so the simulators run
inside a container exactly as they run as units.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the checkout
BASE_IMAGE = "rollback-watchdog-lab/base:1"
_EMPTY_DIRS = ("usr", "etc", "dev", "proc", "sys", "tmp", "run", "root", "var", "opt", "home")
_MERGED_USR = (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin"))


def unavailable_reason() -> str | None:
    """Why a private Docker Engine cannot run here, or None."""
    if shutil.which("dockerd") is None:
        return "no dockerd (Debian package docker.io)"
    if os.geteuid() != 0:
        return "not root: dockerd needs root"
    return None


@dataclass
class Engine:
    """One private Docker Engine and a client for its API over its socket."""

    folder: Path
    process: subprocess.Popen[bytes]
    command: tuple[str, ...] = ()

    @property
    def socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def exec_root(self) -> Path:
        return self.folder / "exec"

    def client(self, *, timeout: float = 60.0) -> httpx.Client:
        """The Engine API, unversioned (the daemon's own version)."""
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://docker",
            timeout=timeout,
        )

    def log(self) -> str:
        return (self.folder / "dockerd.log").read_text(errors="replace")


def rootfs_tar() -> bytes:
    """A root filesystem with only mount points and the merged-``/usr`` links, as a tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in _EMPTY_DIRS:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for link, target in _MERGED_USR:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def host_binds() -> list[str]:
    """Read-only binds that let a container run this checkout with the host's Python."""
    paths = {Path("/usr"), Path("/etc"), Path(sys.base_prefix), Path(sys.prefix), ROOT}
    return [f"{path}:{path}:ro" for path in sorted(paths)]


def import_base(engine: Engine, name: str = BASE_IMAGE) -> str:
    """``docker import`` of ``rootfs_tar`` as ``name``; the image's id."""
    repo, _, tag = name.rpartition(":")
    with engine.client() as client:
        answer = client.post(
            "/images/create",
            params={"fromSrc": "-", "repo": repo, "tag": tag},
            content=rootfs_tar(),
            headers={"Content-Type": "application/x-tar"},
        )
        answer.raise_for_status()
        image = client.get(f"/images/{name}/json")
        image.raise_for_status()
        return str(image.json()["Id"])


@contextlib.contextmanager
def running_engine(*, ready_timeout: float = 60.0) -> Iterator[Engine]:
    """A private dockerd until the block ends: stopped by its PID, its mounts undone."""
    folder = Path(tempfile.mkdtemp(prefix="wd-dockerd-"))
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    command = [
        "dockerd",
        f"--data-root={folder / 'data'}",
        f"--exec-root={folder / 'exec'}",
        f"--pidfile={folder / 'docker.pid'}",
        f"--host=unix://{folder / 'docker.sock'}",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--storage-driver=vfs",
        f"--containerd-namespace=wd-{tag}",  # containerd wants [A-Za-z0-9] joined by . _ -
        f"--containerd-plugins-namespace=wd-plugins-{tag}",
        "--log-level=warn",
    ]
    engine = Engine(folder, _spawn(folder, command), tuple(command))
    try:
        _wait_ready(engine, ready_timeout)
        yield engine
    finally:
        stop(engine)
        _unmount_under(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _spawn(folder: Path, command: list[str]) -> subprocess.Popen[bytes]:
    with (folder / "dockerd.log").open("ab") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )


def restart(engine: Engine, *, down_for: float = 0.0, ready_timeout: float = 60.0) -> None:
    """The engine restarted as a package upgrade restarts it: stopped by its PID (it stops
    its containers), down for ``down_for`` seconds, started again on the same folders. The
    containers whose restart policy says so come back; the others stay stopped."""
    stop(engine)
    time.sleep(down_for)
    engine.process = _spawn(engine.folder, list(engine.command))
    _wait_ready(engine, ready_timeout)


def _wait_ready(engine: Engine, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            raise RuntimeError(f"dockerd exited at start:\n{engine.log()[-3000:]}")
        if _accepts(engine.socket):  # before httpx: a refused UDS connect leaks its socket
            with engine.client(timeout=2.0) as client, contextlib.suppress(httpx.HTTPError):
                if client.get("/_ping").status_code == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"dockerd not ready within {within:g}s:\n{engine.log()[-3000:]}")


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def stop(engine: Engine, *, within: float = 60.0) -> None:
    """SIGTERM by PID (dockerd stops its containers and its containerd), SIGKILL if it hangs."""
    if engine.process.poll() is not None:
        return
    os.kill(engine.process.pid, signal.SIGTERM)
    try:
        engine.process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        os.kill(engine.process.pid, signal.SIGKILL)
        engine.process.wait()


def _unmount_under(folder: Path) -> list[str]:
    """Unmount whatever the daemon left mounted under ``folder`` (deepest first)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == str(folder) or point.startswith(f"{folder}/"):
            found.append(point)
    for point in sorted(found, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    return found


def mounts_under(folder: Path) -> list[str]:
    """Mount points under ``folder`` now (the tests check nothing is left)."""
    return [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{folder}/")
    ]
