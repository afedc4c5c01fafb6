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
``run_check`` runs it: output bounded to its last ``OUTPUT_LIMIT_BYTES``, at most ``MAX_PROCESSES`` processes, the
resource limits of ``Limits`` (address space, CPU time, file size, open files, no core dumps, size-bounded tmpfs), a
start failure and how the command ended told on their own pipe (never guessed from output), and afterwards
``tighten_workspace`` (0700, no setuid, setgid, sticky or world-writable file: a root worker's check makes root's
files).

Without a sandbox that works (``bwrap`` missing, or its startup probe failing) a check command is refused,
unless the operator opted out with ``AUTOPACK_CHECK_SANDBOX=none``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autopack.api_key_file import key_file_path
from autopack.config import Settings
from autopack.errors import AutopackError, InputError

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
#: How much of a check command's output (stdout and stderr together) is kept: the last 64 KiB; the rest is read
#: and dropped as it arrives, so a command printing gigabytes costs no memory.
OUTPUT_LIMIT_BYTES = 64 * 1024
#: RLIMIT_NPROC of a sandboxed check command: processes its user may have at once. The kernel ignores it for
#: root, and a root worker's sandbox user is root outside the sandbox: there, ``run_check`` also puts the sandbox
#: into a cgroup-v1 ``pids`` group of this size when ``/sys/fs/cgroup/pids`` is writable.
MAX_PROCESSES = 256
#: The most workspace entries ``tighten_workspace`` looks at after a check; beyond that the check fails.
MAX_WORKSPACE_ENTRIES = 1_000_000
#: Mode bits a check command may not leave on anything in the workspace: setuid, setgid, sticky, world-writable.
UNSAFE_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH
PIDS_CGROUP_ROOT = "/sys/fs/cgroup/pids"
#: How long a killed sandbox may take to be gone.
KILL_WAIT_SECONDS = 10.0

#: Starts the command (inside the sandbox, as the namespace's PID 1; unsandboxed, as the command's parent): undoes
#: Python's own C-locale coercion (``LC_CTYPE``) when the command's environment did not set it, forks, and in the
#: child restores the default action of SIGPIPE and SIGXFSZ (Python ignores them, and an ignored signal stays
#: ignored across ``exec``), sets the limits (hard = soft, but for a second of grace between SIGXCPU and SIGKILL;
#: never above the hard limit it inherited; RLIMIT_NPROC unless ``-``) and ``execvp``\ s the command. Then it reaps
#: every process handed to it until the command is reaped, and exits as the command did (128 + N for signal N).
#: On the status pipe (argv[1], ``-`` for none; close-on-exec, and the helper is made non-dumpable, so the command
#: can neither inherit it nor open it through ``/proc/1/fd``) it writes one JSON line: ``{"not_started": why}``
#: when the exec failed, else ``{"exit": code, "cpu": seconds}`` (a negative code: killed by that signal; the CPU
#: time of the command and of the processes it reaped).
EXEC_HELPER = """\
import json, os, resource, signal, sys
status, had_lc_ctype, nproc, memory, cpu, fsize, nofile = sys.argv[1:8]
command = sys.argv[9:]
report = None if status == "-" else int(status)
if had_lc_ctype == "0":
    os.environ.pop("LC_CTYPE", None)
if report is not None:
    os.set_inheritable(report, False)

def tell(**what):
    if report is not None:
        os.write(report, (json.dumps(what) + "\\n").encode())

def limit(which, soft, hard):
    _, inherited = resource.getrlimit(which)
    if inherited != resource.RLIM_INFINITY:
        soft, hard = min(soft, inherited), min(hard, inherited)
    resource.setrlimit(which, (soft, hard))

try:  # PR_SET_DUMPABLE 0, before the fork (the command's exec makes it dumpable again): /proc/1/fd stays closed
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
except Exception:
    pass
child = os.fork()
if child == 0:
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        if nproc != "-":
            limit(resource.RLIMIT_NPROC, int(nproc), int(nproc))
        limit(resource.RLIMIT_AS, int(memory), int(memory))
        limit(resource.RLIMIT_CPU, int(cpu), int(cpu) + 1)
        limit(resource.RLIMIT_FSIZE, int(fsize), int(fsize))
        limit(resource.RLIMIT_NOFILE, int(nofile), int(nofile))
        limit(resource.RLIMIT_CORE, 0, 0)
    except (OSError, ValueError) as exc:
        tell(not_started=f"cannot set its resource limits: {exc}")
        os._exit(127)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        why = exc.strerror or str(exc)
        tell(not_started=why)
        os.write(2, f"check_command could not start {command[0]!r}: {why}\\n".encode())
    os._exit(127)
while True:
    pid, wait_status, usage = os.wait4(-1, 0)
    if pid == child:
        break
code = os.waitstatus_to_exitcode(wait_status)
tell(exit=code, cpu=usage.ru_utime + usage.ru_stime)
os._exit(code if code >= 0 else 128 - code)
"""
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """The resource limits of one check command (``AUTOPACK_CHECK_*``), each set per process before it starts."""

    memory_mib: int  # RLIMIT_AS
    cpu_seconds: int  # RLIMIT_CPU (SIGXCPU, then SIGKILL a second later)
    file_size_mib: int  # RLIMIT_FSIZE: the largest file it may write (SIGXFSZ, or EFBIG where that is ignored)
    open_files: int  # RLIMIT_NOFILE
    tmp_mib: int  # the size of each tmpfs in the sandbox

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.check_memory_mib, settings.check_cpu_seconds, settings.check_file_size_mib,
                   settings.check_open_files, settings.check_tmp_mib)

    def helper_args(self) -> list[str]:
        """``EXEC_HELPER``'s argv[4:8]: the address space, CPU seconds, file size and open files to set."""
        return [str(self.memory_mib * MIB), str(self.cpu_seconds), str(self.file_size_mib * MIB), str(self.open_files)]


class SandboxUnavailableError(AutopackError):
    """Check commands must be sandboxed here and the sandbox cannot run."""

    exit_code = 1


@dataclass(frozen=True)
class Mount:
    """One bwrap filesystem operation; ``dest`` is the path inside the sandbox."""

    op: str  # "ro-bind" | "bind" | "symlink" | "tmpfs" | "proc" | "dev" | "hide-file" | "remount-ro"
    dest: str
    src: str = ""
    size: int | None = None  # a tmpfs's size in bytes (bwrap ``--size``); None: the kernel's default, half the RAM

    def args(self) -> list[str]:
        if self.op in ("ro-bind", "bind"):
            return [f"--{self.op}", self.src, self.dest]
        if self.op == "symlink":
            return ["--symlink", self.src, self.dest]
        if self.op == "hide-file":
            return ["--ro-bind", os.devnull, self.dest]
        if self.op == "tmpfs" and self.size is not None:
            return ["--size", str(self.size), "--tmpfs", self.dest]
        return [f"--{self.op}", self.dest]


#: Made read-only once everything is mounted: the sandbox's root and ``/dev`` are tmpfs bwrap makes without a size
#: (writable by the sandbox user when the worker is root), so a check could fill the host's memory there.
READ_ONLY_AFTER = (Mount("remount-ro", "/dev"), Mount("remount-ro", "/"))


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


_sizes: dict[str, bool] = {}  # bwrap path -> whether it knows --size


def tmpfs_size_supported(bwrap: str) -> bool:
    """Whether this bwrap can bound a tmpfs (``--size``, in its ``--help``); without it every tmpfs of the sandbox
    may grow to the kernel's default, half the RAM (a warning says so, once)."""
    with _probe_lock:
        if bwrap in _sizes:
            return _sizes[bwrap]
    try:
        done = subprocess.run([bwrap, "--help"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=PROBE_TIMEOUT_SECONDS, env={"PATH": SANDBOX_PATH})
        known = "--size" in done.stdout + done.stderr
    except (OSError, subprocess.TimeoutExpired):
        known = False
    if not known:
        from autopack.logging import get_logger

        get_logger(__name__).warning("bubblewrap (%s) has no --size: the check sandbox's /tmp, /var/tmp, $HOME and "
                                     "/dev/shm are not bounded by AUTOPACK_CHECK_TMP_MIB", bwrap)
    with _probe_lock:
        _sizes[bwrap] = known
    return known


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
    mounts = [*_system_mounts(), Mount("proc", "/proc"), Mount("dev", "/dev"), *READ_ONLY_AFTER]
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
            # EXEC_HELPER is the namespace's PID 1 and exits when the command does: bwrap reports its exit only
            # once the kernel has killed and reaped everything else in the namespace (with bwrap's own PID 1, bwrap
            # may exit before that). The command is not PID 1, so the kernel's SIGXCPU and SIGXFSZ reach it.
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
    files.append(key_file_path(settings))  # the API key file, the default one ($XDG_CONFIG_HOME/autopack/api-key) too
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
           database: Database | None = None, status_fd: int | None = None, info_fd: int | None = None) -> Launch:
    """The command line that runs ``argv`` as the settings say: inside the sandbox, or (opted out) without it;
    either way started by ``EXEC_HELPER`` under the resource limits.

    ``env`` is the allow-listed environment. bwrap is started with it and hands it on unchanged: it is never on
    bwrap's command line, which every local user can read in ``/proc/<pid>/cmdline`` (``ps``); a process's
    environment only its own user can read. ``EXEC_HELPER`` starts the command (``status_fd``: the write end of the
    pipe it reports a start failure or how the command ended on, which the caller passes to ``Popen``'s ``pass_fds``;
    ``info_fd``: where bwrap writes the host PID of the sandbox's PID 1).
    ``InputError`` ("could not start") when the program is nowhere the sandbox would find it. Unsandboxed, the
    command still gets the resource limits (but for the process count, which would count the worker user's own).
    """
    limits = Limits.from_settings(settings)
    if settings.check_sandbox == SANDBOX_NONE:
        return Launch([*_helper(status_fd, env, "-", limits), *argv], dict(env))
    bwrap, userns = usable_bwrap(settings)
    inner = _sandbox_env(env)
    tmp_bytes = limits.tmp_mib * MIB if tmpfs_size_supported(bwrap) else None
    mounts = _mounts(workspace, inner["HOME"], settings, secret_paths(settings, database, os.environ), tmp_bytes)
    _require_program(argv[0], workspace, inner["PATH"], mounts)
    helper = _helper(status_fd, inner, str(MAX_PROCESSES), limits)
    cmd = [bwrap, *_namespace_args(userns), *(a for m in mounts for a in m.args()),
           "--chdir", os.path.abspath(workspace)]
    if info_fd is not None:
        cmd += ["--info-fd", str(info_fd)]
    return Launch([*cmd, "--", *helper, *argv], inner)


def _helper(status_fd: int | None, env: Mapping[str, str], nproc: str, limits: Limits) -> list[str]:
    """``EXEC_HELPER``'s command line, up to the ``--`` the command follows."""
    return [sys.executable, "-I", "-S", "-c", EXEC_HELPER, "-" if status_fd is None else str(status_fd),
            "1" if "LC_CTYPE" in env else "0", nproc, *limits.helper_args(), "--"]


def _require_program(program: str, workspace: Path, path: str, mounts: Sequence[Mount]) -> None:
    """``InputError`` unless ``program`` names an executable file inside a directory the sandbox shows.

    The binds keep their paths, so the host's view of a bound directory is the sandbox's. What this cannot see
    (a script whose interpreter is missing, a covered file) ``EXEC_HELPER`` reports when the exec fails.
    """
    shown = [Path(m.dest) for m in mounts if m.op in ("ro-bind", "bind", "symlink")]
    ws = os.path.abspath(workspace)
    if "/" in program:
        candidates = [os.path.join(ws, program)]
    else:
        candidates = [os.path.join(ws, d, program) for d in path.split(os.pathsep) if d]
    for candidate in candidates:
        where = Path(os.path.normpath(candidate))
        if any(where.is_relative_to(d) for d in shown) and where.is_file() and os.access(where, os.X_OK):
            return
    where_not = "in the run workspace" if "/" in program else "on the sandbox's PATH"
    raise InputError(f"check_command could not start {program!r}: not found {where_not} "
                     f"(or not an executable file)")


@dataclass(frozen=True)
class CheckRun:
    """How one check command ended."""

    returncode: int | None  # None: timed out, or never started
    output: str  # the last OUTPUT_LIMIT_BYTES of its stdout and stderr
    truncated: bool  # more output than that came, and was dropped
    timed_out: bool
    not_started: str | None  # why the program could not start (from the status pipe, not from its output)
    workspace_problem: str | None  # the workspace could not be checked for setuid/world-writable files
    exit_status: int | None = None  # how the command itself ended (status pipe): N, or -N when signal N killed it
    cpu_seconds: float | None = None  # its CPU time, the processes it waited for included (status pipe)
    limits: Limits | None = None  # the limits it ran under

    def reason(self, command: str, program: str, timeout: float, secrets: list[str] | None = None) -> str | None:
        """None when the check passed, else the one-line failure reason, ``secrets`` masked (None: the
        configured ones, ``logging.redact``)."""
        from autopack.logging import redact

        if self.workspace_problem:
            return redact(f"check_command left an unsafe workspace: {self.workspace_problem}", secrets)
        if self.not_started is not None:
            return redact(f"check_command could not start {program!r}: {self.not_started}", secrets)
        if self.timed_out:
            return redact(f"check_command timed out after {timeout:.0f}s: {command}", secrets)
        if self.returncode == 0:
            return None
        # redacted whole, then cut: a cut first could leave half a secret that no longer matches
        text = redact(" ".join(self.output.split()), secrets)[-300:]
        cut = f" (output truncated to its last {OUTPUT_LIMIT_BYTES // 1024} KiB)" if self.truncated else ""
        ended = f"exited {self.returncode}"
        if self.exit_status is not None and self.exit_status < 0:
            ended = f"killed by {_signal_name(-self.exit_status)}"
        limit = None if self.limits is None else limit_reached(self.limits, self.exit_status, self.cpu_seconds,
                                                                self.returncode, self.output)
        head = f"check_command {limit}: {ended}" if limit else f"check_command {ended}"
        return redact(f"{head}{cut}: {command}: {text}", secrets)


#: What a program prints when an allocation failed (Python, C, C++, Rust, Go, the JVM, Node): with RLIMIT_AS the
#: kernel kills nothing, the allocation just fails, so the output is all there is to go by.
MEMORY_MESSAGES = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "memory allocation of",
                   "out of memory", "OutOfMemoryError", "heap out of memory")


def limit_reached(limits: Limits, exit_status: int | None, cpu_seconds: float | None, returncode: int | None,
                  output: str) -> str | None:
    """Which limit a failed check ran into, as the start of its failure reason (naming the setting to raise);
    None when none shows. Certain from how the command ended (SIGXCPU, SIGXFSZ, SIGKILL after its CPU time),
    "probably" when only a shell's 128 + N exit status or the output tells."""
    cpu = f"its CPU limit ({limits.cpu_seconds} s per process, AUTOPACK_CHECK_CPU_SECONDS)"
    fsize = f"its file size limit ({limits.file_size_mib} MiB per file, AUTOPACK_CHECK_FILE_SIZE_MIB)"
    memory = f"its memory limit ({limits.memory_mib} MiB of address space per process, AUTOPACK_CHECK_MEMORY_MIB)"
    tmp = f"its temporary space (each tmpfs {limits.tmp_mib} MiB, AUTOPACK_CHECK_TMP_MIB) or the workspace's disk"
    if exit_status == -signal.SIGXCPU or (exit_status == -signal.SIGKILL and cpu_seconds is not None
                                          and cpu_seconds >= limits.cpu_seconds):
        return f"exceeded {cpu}"
    if exit_status == -signal.SIGXFSZ:
        return f"exceeded {fsize}"
    if returncode == 128 + signal.SIGXCPU:
        return f"probably exceeded {cpu}: a process it started got SIGXCPU"
    if returncode == 128 + signal.SIGXFSZ:
        return f"probably exceeded {fsize}: a process it started got SIGXFSZ"
    if "File too large" in output:  # EFBIG: the writer ignores SIGXFSZ (Python does)
        return f"probably exceeded {fsize}"
    if any(message in output for message in MEMORY_MESSAGES):
        return f"probably exceeded {memory}"
    if "No space left on device" in output:
        return f"probably filled {tmp}"
    if exit_status == -signal.SIGKILL:
        return "was killed, probably by the kernel for want of the host's memory"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_check(argv: Sequence[str], workspace: Path, env: Mapping[str, str], settings: Settings, *,
              timeout: float, database: Database | None = None) -> CheckRun:
    """Run ``argv`` in the workspace as ``launch`` says, with bounded output, a start-failure channel and a
    timeout that kills everything it started; then ``tighten_workspace``, whatever the outcome (a timeout, an
    exception included).

    ``InputError``/``SandboxUnavailableError`` from ``launch`` propagate (the command never ran).
    """
    try:
        result = _run(argv, workspace, env, settings, timeout=timeout, database=database)
    finally:
        problem = tighten_workspace(workspace)
    return CheckRun(None, "", False, False, None, problem) if problem else result


def _run(argv: Sequence[str], workspace: Path, env: Mapping[str, str], settings: Settings, *,
         timeout: float, database: Database | None) -> CheckRun:
    sandboxed = settings.check_sandbox != SANDBOX_NONE
    limits = Limits.from_settings(settings)
    deadline = time.monotonic() + timeout
    os.chmod(workspace, 0o700)  # closed before the command runs too (it can reopen it: tighten_workspace closes it after)
    status_r, status_w = os.pipe()
    info_r, info_w = os.pipe()
    writers = [status_w, info_w]
    try:
        started = launch(argv, workspace, env, settings, database=database,
                         status_fd=status_w, info_fd=info_w if sandboxed else None)
        with _pids_cgroup() if sandboxed else contextlib.nullcontext() as cgroup:
            command = started.argv
            if cgroup is not None:  # joined by a shell that then becomes bwrap: no preexec_fn in a threaded worker
                command = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(cgroup, "cgroup.procs"),
                           *command]
            try:
                proc = subprocess.Popen(command, cwd=workspace, env=started.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                        pass_fds=tuple(writers) if sandboxed else (status_w,))
            except OSError as exc:  # the interpreter that runs EXEC_HELPER is gone
                return CheckRun(None, "", False, False, exc.strerror or str(exc), None)
            finally:
                for fd in writers:
                    os.close(fd)
                writers = []
            pidfd = _sandbox_pid1(info_r, deadline) if sandboxed else None
            try:
                output, truncated, timed_out = _read_bounded(proc, deadline)
            finally:
                _stop(proc, pidfd, cgroup)
        status = _read_status(status_r)
        why = status.get("not_started")
        code = None if timed_out or why is not None else proc.returncode
        return CheckRun(code, output, truncated, timed_out, why, None, status.get("exit"), status.get("cpu"), limits)
    finally:
        for fd in (status_r, info_r, *writers):
            os.close(fd)


def _sandbox_pid1(info_r: int, deadline: float) -> int | None:
    """A pidfd of the sandbox's PID 1, from bwrap's ``--info-fd`` (``{"child-pid": …}``); None if none came."""
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(info_r, selectors.EVENT_READ)
        while time.monotonic() < deadline and sel.select(max(deadline - time.monotonic(), 0)):
            chunk = os.read(info_r, 4096)
            if not chunk:
                break
            data += chunk
    try:
        pid = int(json.loads(data)["child-pid"])
        return os.pidfd_open(pid)
    except (ValueError, KeyError, TypeError, OSError):  # bwrap failed before the sandbox existed, or it is gone
        return None


def _read_bounded(proc: subprocess.Popen[bytes], deadline: float) -> tuple[str, bool, bool]:
    """(the last OUTPUT_LIMIT_BYTES of the output, whether more came, whether the timeout ran out)."""
    assert proc.stdout is not None
    kept = bytearray()
    truncated = False
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return kept.decode(errors="replace"), truncated, True
            if not sel.select(left):
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                break
            kept += chunk
            if len(kept) > OUTPUT_LIMIT_BYTES:
                del kept[:len(kept) - OUTPUT_LIMIT_BYTES]
                truncated = True
    try:
        proc.wait(max(deadline - time.monotonic(), 0.001))
    except subprocess.TimeoutExpired:
        return kept.decode(errors="replace"), truncated, True
    return kept.decode(errors="replace"), truncated, False


def _stop(proc: subprocess.Popen[bytes], pidfd: int | None, cgroup: str | None) -> None:
    """End the check and return once none of its processes is left (they could still change the workspace).

    Killing the sandbox's PID 1 makes the kernel kill everything else in its PID namespace; bwrap exits only
    after PID 1 is reaped, which is after all of them. Without that PID (bwrap still starting), the process group
    goes; the pids cgroup, where there is one, is emptied too.
    """
    try:
        if proc.returncode is None and pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_WAIT_SECONDS)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if cgroup is not None:
            _empty_cgroup(cgroup)
    finally:
        if pidfd is not None:
            os.close(pidfd)
        if proc.stdout is not None:
            proc.stdout.close()


def _empty_cgroup(path: str) -> None:
    """Kill whatever is still in the cgroup and wait (at most KILL_WAIT_SECONDS) until it is empty."""
    procs = os.path.join(path, "cgroup.procs")
    give_up = time.monotonic() + KILL_WAIT_SECONDS
    while time.monotonic() < give_up:
        try:
            pids = [int(line) for line in Path(procs).read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)  # no event tells a v1 cgroup emptied; the kernel finishes the kills in microseconds


def _read_status(fd: int) -> dict[str, Any]:
    """What ``EXEC_HELPER`` wrote to the status pipe: ``not_started`` (why the exec failed), or ``exit`` and
    ``cpu`` (how the command ended); empty when it wrote nothing (killed, or bwrap failed before it ran)."""
    os.set_blocking(fd, False)
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return {}
    found: dict[str, Any] = {}
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                found.update(entry)
    return found


@contextlib.contextmanager
def _pids_cgroup() -> Iterator[str | None]:
    """For a root worker (RLIMIT_NPROC does not bind root) with a writable pids hierarchy; else None."""
    if os.geteuid() != 0 or not os.access(PIDS_CGROUP_ROOT, os.W_OK):
        yield None
        return
    path = os.path.join(PIDS_CGROUP_ROOT, f"autopack-check-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.mkdir(path)
        Path(path, "pids.max").write_text(str(MAX_PROCESSES))
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        yield None
        return
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(path)  # empty: the check's processes are all gone


def _raise(exc: OSError) -> None:
    raise exc


def tighten_workspace(workspace: Path) -> str | None:
    """Make the workspace its owner's alone (0700) and strip setuid, setgid, sticky and world-write bits from
    everything in it; None, or why it could not.

    A check command's files belong to the worker's user outside the sandbox (root, for a root worker): a setuid
    copy of a shell left in the workspace would be a root shell for any local user who can reach it. The walk
    never follows a symbolic link (``os.fwalk``: directory descriptors, no path re-resolution) and looks at no
    more than MAX_WORKSPACE_ENTRIES entries. Runs after the command and everything it started are gone.
    """
    root = os.path.abspath(workspace)
    try:
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode):
            return None
        os.chmod(root, 0o700, follow_symlinks=False)
        seen = 0
        for _dir, dirs, files, dirfd in os.fwalk(root, follow_symlinks=False, onerror=_raise):
            for name in (*dirs, *files):
                seen += 1
                if seen > MAX_WORKSPACE_ENTRIES:
                    return f"more than {MAX_WORKSPACE_ENTRIES} files to check for setuid and world-writable modes"
                entry = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                if stat.S_ISLNK(entry.st_mode):
                    continue
                mode = stat.S_IMODE(entry.st_mode)
                safe = (mode & ~UNSAFE_MODE_BITS) | (stat.S_IRWXU if stat.S_ISDIR(entry.st_mode) else 0)
                if safe != mode:  # a directory its owner cannot enter would hide what is inside from this walk
                    os.chmod(name, safe, dir_fd=dirfd, follow_symlinks=False)
    except OSError as exc:
        return f"cannot check its modes: {exc}"
    return None


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


def _mounts(workspace: Path, home: str, settings: Settings, secrets: Iterable[Path],
            tmp_bytes: int | None = None) -> list[Mount]:
    """Every mount, shallowest first, so a deeper bind (the workspace under a hidden directory) stays visible;
    each tmpfs of ``tmp_bytes`` at most; the root and ``/dev`` read-only at the end."""
    ws = os.path.abspath(workspace)
    needed = [*_system_mounts(), *_etc_mounts(), *(Mount("ro-bind", p, p) for p in python_paths()), Mount("bind", ws, ws)]
    extra = [os.path.abspath(os.path.expanduser(p.strip())) for p in settings.check_sandbox_bind.split(",") if p.strip()]
    binds = [*needed, *(Mount("ro-bind", p, p) for p in extra if os.path.exists(p))]
    keep = {Path("/"), *(Path(m.dest) for m in needed)}
    mounts = [*binds, Mount("proc", "/proc"), Mount("dev", "/dev"), Mount("tmpfs", "/dev/shm"), Mount("tmpfs", "/tmp"),
              Mount("tmpfs", "/var/tmp")]
    if home != "/tmp" and Path(home) not in keep:  # HOME may be the workspace itself
        mounts.append(Mount("tmpfs", home))
    mounts += _hides(binds, secrets, keep)
    sized = [replace(m, size=tmp_bytes) if m.op == "tmpfs" else m for m in mounts]
    unique = list(dict.fromkeys(sized))
    # stable: a hide follows the bind it covers
    return [*sorted(unique, key=lambda m: len(Path(m.dest).parts)), *READ_ONLY_AFTER]


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
