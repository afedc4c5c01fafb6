"""Where a phase's ``check_command`` runs: a bubblewrap (``bwrap``) sandbox, or nowhere.

A check command is code a run brought along, executed on the drain worker. An allow-listed environment
alone does not stop it from reading the worker's secrets: ``/proc/$PPID/environ`` shows the worker's whole
environment, and the database file, ``~/.prefect`` and ``.env`` are plain files. So the command runs in new
user, PID, mount, network, IPC and UTS namespaces with every capability dropped, a fresh ``/proc`` (the
worker's processes do not exist there), no network but a loopback of its own, and a filesystem built from
an allow-list: ``/usr`` and the other system directories, a few files of ``/etc``, the Python prefixes and
the virtual environment (read-only), empty ``/tmp`` and ``$HOME``, and the run workspace (read-write).
The configured secret files (the SQLite database and its journals, ``DATABASE_URL_FILE``, every ``*_file``
setting, ``.env``, ``PREFECT_HOME``) are covered (an unreadable file, an empty directory) wherever they
would be visible. When the command exits, the PID namespace ends and with it everything the command left running.

Without a sandbox that works (``bwrap`` missing, or its startup probe failing) a check command is refused,
unless the operator opted out with ``AUTOPACK_CHECK_SANDBOX=none``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autopack.config import Settings
from autopack.errors import AutopackError

if TYPE_CHECKING:
    from autopack.db.handle import Database

SANDBOX_NONE = "none"
SANDBOX_SETTING = "AUTOPACK_CHECK_SANDBOX"
BWRAP_SETTING = "AUTOPACK_CHECK_SANDBOX_BWRAP"

#: System directories bound read-only (or recreated as the symlinks they are on a merged-/usr system).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: The parts of /etc a program needs to start, resolve names and verify certificates; nothing else of /etc
#: (``/etc/environment``, ``/etc/default/*``, ``pip.conf``, ``npmrc``, ``ssl/private``, ``shadow`` may hold secrets).
ETC_ENTRIES = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "gai.conf", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "localtime", "timezone", "alternatives", "os-release", "debian_version", "mime.types",
               "protocols", "services", "locale.alias", "fonts", "magic", "magic.mime", "terminfo", "inputrc",
               "shells", "ssl/certs", "ssl/openssl.cnf", "ca-certificates.conf", "python3*")
#: The user inside the sandbox when the worker is root (a user namespace maps it to the worker's own user).
NOBODY = 65534
PROBE_TIMEOUT_SECONDS = 15.0
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"


class SandboxUnavailableError(AutopackError):
    """Check commands must be sandboxed here and the sandbox cannot run."""

    exit_code = 1


@dataclass(frozen=True)
class Mount:
    """One bwrap filesystem operation; ``dest`` is the path inside the sandbox."""

    op: str  # "ro-bind" | "bind" | "symlink" | "tmpfs" | "proc" | "dev" | "hide-file"
    dest: str
    src: str = ""

    def args(self) -> list[str]:
        if self.op in ("ro-bind", "bind"):
            return [f"--{self.op}", self.src, self.dest]
        if self.op == "symlink":
            return ["--symlink", self.src, self.dest]
        if self.op == "hide-file":
            return ["--ro-bind", os.devnull, self.dest]
        return [f"--{self.op}", self.dest]


def find_bwrap(setting: str) -> str | None:
    """The bwrap executable the setting names: a path, or a name looked up on ``PATH``."""
    if os.sep in setting:
        return setting if os.access(setting, os.X_OK) and Path(setting).is_file() else None
    return shutil.which(setting)


_probe_lock = threading.Lock()
_working: dict[str, bool] = {}  # bwrap path -> whether a user namespace works (only successful probes are kept)


def usable_bwrap(settings: Settings) -> tuple[str, bool]:
    """(bwrap path, use a user namespace) after a startup probe; ``SandboxUnavailableError`` when none works.

    The probe starts the namespaces this module asks for around ``true``. A root worker on a host where user
    namespaces are off still gets a sandbox, as root with every capability dropped.
    """
    bwrap = find_bwrap(settings.check_sandbox_bwrap)
    if bwrap is None:
        raise _unavailable(f"bubblewrap ({settings.check_sandbox_bwrap!r}) not found")
    with _probe_lock:
        if bwrap in _working:
            return bwrap, _working[bwrap]
    problem = ""
    for userns in (True, False) if os.getuid() == 0 else (True,):
        problem = _probe(bwrap, userns)
        if not problem:
            with _probe_lock:
                _working[bwrap] = userns
            return bwrap, userns
    raise _unavailable(f"bubblewrap ({bwrap}) cannot start a sandbox here: {problem}")


def require_sandbox(settings: Settings) -> None:
    """Raise ``SandboxUnavailableError`` unless check commands can run as the settings say."""
    if settings.check_sandbox != SANDBOX_NONE:
        usable_bwrap(settings)


def _unavailable(what: str) -> SandboxUnavailableError:
    return SandboxUnavailableError(
        f"check_command refused: no sandbox: {what}",
        hint=f"install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or point {BWRAP_SETTING} at it; "
             f"{SANDBOX_SETTING}=none runs check commands unsandboxed, with access to this worker's secrets",
    )


def _probe(bwrap: str, userns: bool) -> str:
    """'' when bwrap starts the sandbox, else its first line of complaint."""
    mounts = [*_system_mounts(), Mount("proc", "/proc"), Mount("dev", "/dev")]
    argv = [bwrap, *_namespace_args(userns), *(a for m in mounts for a in m.args()),
            "--clearenv", "--setenv", "PATH", SANDBOX_PATH, "--", "true"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=PROBE_TIMEOUT_SECONDS, env={"PATH": SANDBOX_PATH})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else f"exit status {done.returncode}"


def _namespace_args(userns: bool) -> list[str]:
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "autopack-check", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            # The command is the namespace's PID 1: bwrap reports its exit only once the kernel has killed and
            # reaped everything else in the namespace (with bwrap's own PID 1, bwrap may exit before that).
            "--as-pid-1"]
    if userns:
        uid = os.getuid() or NOBODY
        gid = os.getgid() if os.getuid() else NOBODY
        args += ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--disable-userns"]
    return args


def _system_mounts() -> list[Mount]:
    mounts = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            mounts.append(Mount("symlink", path, os.readlink(path)))
        elif os.path.isdir(path):
            mounts.append(Mount("ro-bind", path, path))
    return mounts


def _etc_mounts() -> list[Mount]:
    found = sorted({hit for pattern in ETC_ENTRIES for hit in glob.glob(os.path.join("/etc", pattern))})
    return [Mount("ro-bind", path, path) for path in found if os.path.exists(path)]


def python_paths() -> list[str]:
    """The interpreter's prefixes (and the virtual environment) a ``python``/``pytest`` check needs."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    return [p for p in dict.fromkeys(os.path.abspath(p) for p in paths) if os.path.isdir(p)]


def secret_paths(settings: Settings, database: Database | None, environ: Mapping[str, str]) -> list[Path]:
    """Files and directories holding the worker's secrets, to be hidden wherever the sandbox would show them."""
    files: list[Path] = [Path(".env")]
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name.endswith("_file") and isinstance(value, Path):
            files.append(value)
    urls = [database.url if database else None, environ.get("PREFECT_API_DATABASE_CONNECTION_URL")]
    try:
        urls.append(settings.resolved_database_url())
    except AutopackError:  # an unreadable DATABASE_URL_FILE: no database file to name (the file itself is hidden)
        pass
    for url in urls:
        db_file = _sqlite_file(url or "")
        if db_file is not None:
            files += [db_file, *(Path(f"{db_file}{suffix}") for suffix in ("-wal", "-shm", "-journal"))]
            if db_file.exists():
                files.append(db_file.parent)  # journals created while the check runs
    if environ.get("PREFECT_PROFILES_PATH"):
        files.append(Path(environ["PREFECT_PROFILES_PATH"]))
    prefect_home = environ.get("PREFECT_HOME") or os.path.join(environ.get("HOME") or "~", ".prefect")
    files.append(Path(prefect_home))
    return [Path(os.path.abspath(p.expanduser())) for p in files]


def _sqlite_file(url: str) -> Path | None:
    head, sep, rest = url.partition(":///")
    if not sep or not head.startswith("sqlite"):
        return None
    path = rest.partition("?")[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


@dataclass(frozen=True)
class Launch:
    """What to hand to ``subprocess.Popen``: the command line and its environment."""

    argv: list[str]
    env: dict[str, str]


def launch(argv: Sequence[str], workspace: Path, env: Mapping[str, str], settings: Settings, *,
           database: Database | None = None) -> Launch:
    """The command line that runs ``argv`` as the settings say: inside the sandbox, or (opted out) as it is.

    ``env`` is the allow-listed environment; bwrap itself is started with it too (its process inside the
    sandbox is PID 1, whose ``/proc/1/environ`` the command can read).
    """
    if settings.check_sandbox == SANDBOX_NONE:
        return Launch(list(argv), dict(env))
    bwrap, userns = usable_bwrap(settings)
    inner = _sandbox_env(env)
    mounts = _mounts(workspace, inner["HOME"], settings, secret_paths(settings, database, os.environ))
    cmd = [bwrap, *_namespace_args(userns), *(a for m in mounts for a in m.args()),
           "--chdir", os.path.abspath(workspace), "--clearenv"]
    for name, value in inner.items():
        cmd += ["--setenv", name, value]
    return Launch([*cmd, "--", *argv], inner)


def exec_failure(output: str, program: str) -> str | None:
    """Why bwrap could not start ``program`` (``No such file or directory``), from its whole output; else None."""
    head = f"bwrap: execvp {program}: "
    text = output.strip()
    return text[len(head):] if text.startswith(head) and "\n" not in text else None


def _sandbox_env(env: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed environment, with the worker's virtual environment first on ``PATH`` (a pyenv or
    user-level shim outside the sandbox would not start) and ``/tmp`` as the temporary directory."""
    inner = dict(env)
    path = inner.get("PATH") or SANDBOX_PATH
    if sys.prefix != sys.base_prefix:
        venv_bin = os.path.join(sys.prefix, "bin")
        path = os.pathsep.join([venv_bin, *(p for p in path.split(os.pathsep) if p != venv_bin)])
        inner["VIRTUAL_ENV"] = sys.prefix
    inner["PATH"] = path
    home = inner.get("HOME") or "/tmp"
    inner["HOME"] = home if os.path.isabs(home) and home != "/" else "/tmp"
    for name in ("TMPDIR", "TEMP", "TMP"):
        inner.pop(name, None)
    inner["TMPDIR"] = "/tmp"
    return inner


def _mounts(workspace: Path, home: str, settings: Settings, secrets: Iterable[Path]) -> list[Mount]:
    """Every mount, shallowest first, so a deeper bind (the workspace under a hidden directory) stays visible."""
    ws = os.path.abspath(workspace)
    needed = [*_system_mounts(), *_etc_mounts(), *(Mount("ro-bind", p, p) for p in python_paths()), Mount("bind", ws, ws)]
    extra = [os.path.abspath(os.path.expanduser(p.strip())) for p in settings.check_sandbox_bind.split(",") if p.strip()]
    binds = [*needed, *(Mount("ro-bind", p, p) for p in extra if os.path.exists(p))]
    keep = {Path("/"), *(Path(m.dest) for m in needed)}
    mounts = [*binds, Mount("proc", "/proc"), Mount("dev", "/dev"), Mount("tmpfs", "/tmp"), Mount("tmpfs", "/var/tmp")]
    if home != "/tmp" and Path(home) not in keep:  # HOME may be the workspace itself
        mounts.append(Mount("tmpfs", home))
    mounts += _hides(binds, secrets, keep)
    unique = list(dict.fromkeys(mounts))
    return sorted(unique, key=lambda m: len(Path(m.dest).parts))  # stable: a hide follows the bind it covers


def _hides(binds: Sequence[Mount], secrets: Iterable[Path], keep: set[Path]) -> list[Mount]:
    """Cover each existing secret path that some bind would show: an unreadable file, or an empty directory.

    A directory in ``keep`` (the root, the system directories, Python, the workspace) is never emptied: the
    command could not run. Emptying one of their ancestors is fine: they are bound again on top.
    """
    shown = [(Path(os.path.realpath(m.src)), Path(m.dest)) for m in binds if m.op in ("ro-bind", "bind")]
    hides = []
    for secret in secrets:
        if not secret.exists():
            continue
        real = Path(os.path.realpath(secret))
        for src, dest in shown:
            if real.is_relative_to(src):
                inside = dest / real.relative_to(src)
                if not real.is_dir():
                    hides.append(Mount("hide-file", str(inside)))
                elif inside not in keep:
                    hides.append(Mount("tmpfs", str(inside)))
    emptied = [Path(m.dest) for m in hides if m.op == "tmpfs"]
    return [m for m in hides if not any(Path(m.dest) != d and Path(m.dest).is_relative_to(d) for d in emptied)]
