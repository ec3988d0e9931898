"""A throwaway PostgreSQL for the fleet tests: a private cluster, never the machine's own.

``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package run as an unprivileged user (the
package's ``postgres`` account, else ``nobody``) on a data directory and a socket directory in a
fresh temporary folder, listening on loopback only. The server is stopped by its PID (read
from ``postmaster.pid``) and the folder removed. ``stop``/``start`` in between play an outage.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOTS = Path("/usr/lib/postgresql")
USER = "postgres"  # the cluster's superuser name (tests make their own roles)


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs, if any."""
    found = sorted(ROOTS.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def unavailable_reason() -> str | None:
    """Why a private cluster cannot run here, or None."""
    if bin_dir() is None:
        return f"no PostgreSQL under {ROOTS} (Debian package postgresql)"
    if os.geteuid() != 0:
        return "not root: cannot run initdb as another, unprivileged user"
    return None


def _account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("no unprivileged account (postgres or nobody) to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Cluster:
    """One private PostgreSQL cluster."""

    folder: Path
    port: int
    account: pwd.struct_passwd
    programs: Path
    tls: bool = False  # the server takes TLS with a certificate for 127.0.0.1 (``ca_file``)
    settings: tuple[tuple[str, str], ...] = ()  # more server settings (-c name=value)

    @property
    def ca_file(self) -> Path:
        """The test CA that signed the server's certificate (``sslrootcert``)."""
        return self.folder / "tls" / "ca.pem"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def sockets(self) -> Path:
        return self.folder / "run"

    def dsn(self, dbname: str = "postgres", user: str = USER) -> str:
        """A libpq connection string over loopback TCP."""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def _as_owner(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "setpriv",
                f"--reuid={self.account.pw_uid}",
                f"--regid={self.account.pw_gid}",
                "--clear-groups",
                "--",
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.folder,
            env={"PATH": f"{self.programs}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )

    def pid(self) -> int | None:
        """The postmaster's PID while it runs (first line of ``postmaster.pid``)."""
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        options += "".join(f" -c {name}={value}" for name, value in self.settings)
        if self.tls:
            tls = self.folder / "tls"
            options += (
                f" -c ssl=on -c ssl_cert_file={tls}/server.pem -c ssl_key_file={tls}/server.key"
            )
        done = self._as_owner(
            str(self.programs / "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
        )
        if done.returncode != 0:
            log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr or done.stdout}\n{log}")

    def stop(self) -> None:
        """Stop the server (fast shutdown), by its PID if pg_ctl cannot."""
        pid = self.pid()
        if pid is None:
            return
        self._as_owner(
            str(self.programs / "pg_ctl"),
            "stop",
            "-w",
            "-t",
            "30",
            "-m",
            "fast",
            "-D",
            str(self.data),
        )
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _certificates(folder: Path, account: pwd.struct_passwd) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (IP SAN: ``verify-full``)."""
    folder.mkdir()

    def openssl(*argv: str) -> None:
        subprocess.run(["openssl", *argv], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=watchdog-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    )
    for path in (folder, *folder.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    (folder / "server.key").chmod(0o600)  # PostgreSQL refuses a key others may read


@contextlib.contextmanager
def running_postgres(
    *, tls: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[Cluster]:
    """A private cluster, started; stopped by PID and removed afterwards. ``tls``: it also
    takes TLS, with a certificate a throwaway CA (``Cluster.ca_file``) signed for 127.0.0.1."""
    programs = bin_dir()
    if programs is None:
        raise RuntimeError(unavailable_reason() or "no PostgreSQL")
    account = _account()
    # under /tmp itself: the unprivileged owner must reach it (pytest's folders are root's 0700)
    folder = Path(tempfile.mkdtemp(prefix="wd-postgres-", dir="/tmp"))
    try:
        (folder / "run").mkdir()
        for path in (folder, folder / "run"):
            os.chown(path, account.pw_uid, account.pw_gid)
        more = tuple((settings or {}).items())
        cluster = Cluster(folder, _free_port(), account, programs, tls=tls, settings=more)
        if tls:
            _certificates(folder / "tls", account)
        made = cluster._as_owner(
            str(programs / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            USER,
            "--auth-local=trust",
            "--auth-host=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr or made.stdout}")
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
