"""Warm start for rule scripts: a fork server that has torch, transformers and peft imported.

A rule script starts a Python process that, before any work, imports torch, transformers and peft
(4 s on a 2-core Xeon, about 10 s on an AVX2 EPYC) — for a demo job that computes for 5 s. With warm
start, the script's first statement (``delegate()``) hands the whole script to a server process of the
same interpreter, environment and code that has those libraries imported already; the server forks,
and the child runs the script exactly as the fresh process would have: same file, ``snakemake``
object, working directory, environment, ``sys.path``, standard streams (passed as file descriptors,
so the rule's log gets everything) and exit status. The client waits, forwards signals
(Snakemake's kill reaches the job) and exits with the job's status.

When warm start is off or the server cannot serve, ``delegate()`` returns and the script runs in its
own process as before. The first job of a run starts the server in the background and runs cold.

- ``MMIE_WARM=0`` switches it off, ``MMIE_WARM=1`` on; unset, it is on for local runs on Linux and
  off inside a container (Apptainer/Singularity) and under SLURM, where each job is its own
  allocation.
- A server serves only clients with its interpreter, working directory, ``sys.path``, environment
  (variables read at import time, e.g. ``ATEN_CPU_CAPABILITY`` or ``HF_HOME``, must be the same) and
  mmie source files (path, size, modification time): all of them are hashed into its name, so a
  changed one starts another server. It lives in a private directory (mode 0700, checked) and
  serves its own user only (``SO_PEERCRED``).
- It exits after ``MMIE_WARM_IDLE`` seconds (default 120) without a running job.
- It never runs a torch operation or touches CUDA: a forked child starts with torch's thread pools
  and CUDA uninitialised, as a fresh process does, and sets its threads itself (``setup_job``).
  Numbers are the same as a fresh process's (the demo's expected run is checked with warm start).
- Snakemake's ``benchmark:`` files measure the client: their wall time ``s`` is the job's, their
  CPU and memory columns are not (run with ``MMIE_WARM=0`` to measure those).

Light: importing this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: what the server imports before it serves: what nearly every model job imports anyway (torch,
#: transformers, peft, pandas) and the SAE, layer-selection and plotting libraries (imported by a
#: fresh job of those rules too; none of them changes torch's global state when imported — checked
#: by tests/test_forkserver.py).
PRELOAD = ("numpy", "pandas", "torch", "safetensors.torch", "transformers", "peft", "sae_lens",
           "sklearn.linear_model", "sklearn.metrics", "scipy.stats", "matplotlib.pyplot", "seaborn", "langid")
#: the transformers names jobs use (the library imports them lazily, on first access)
TRANSFORMERS_NAMES = ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "PreTrainedModel")
#: environment variables that differ between jobs of one run and that nothing reads at import time
PER_JOB_ENV = ("OLDPWD", "SHLVL", "_")

_IN_CHILD = False
_HEADER = struct.Struct("!Q")


def mode() -> bool:
    """Whether this process should hand its script to a warm server (see the module doc)."""
    value = os.environ.get("MMIE_WARM", "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"MMIE_WARM={value!r}: set it to 0 (off), 1 (on) or leave it unset (on for local runs)")
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    in_container = any(k in os.environ for k in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"))
    return not in_container and "SLURM_JOB_ID" not in os.environ


def idle_seconds() -> float:
    return float(os.environ.get("MMIE_WARM_IDLE", "120"))


def _source_signature() -> list:
    """(path, size, mtime) of every source file of the mmie package."""
    root = Path(__file__).resolve().parent
    rows = []
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        rows.append((str(path.relative_to(root)), st.st_size, st.st_mtime_ns))
    return [str(root), rows]


def key(path: list[str] | None = None, env: dict | None = None) -> str:
    """The server identity of this process: interpreter, cwd, sys.path, environment, mmie's sources."""
    env = dict(os.environ if env is None else env)
    for var in PER_JOB_ENV:
        env.pop(var, None)
    identity = {"executable": sys.executable, "version": sys.version, "cwd": os.getcwd(),
                "path": list(sys.path if path is None else path), "env": sorted(env.items()),
                "source": _source_signature()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _socket_dir() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"mmie-warm-{os.getuid()}"


def private_dir() -> Path | None:
    """This user's directory for server sockets, created 0700; None when it exists with other rights."""
    path = _socket_dir()
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    st = path.lstat()
    if not path.is_dir() or path.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return path


# ------------------------------------------------------------------------------------------ client

@contextlib.contextmanager
def _short_paths(directory: Path):
    """Names in ``directory`` as short socket paths (/proc/self/fd/N/name: a socket's path has at
    most 107 bytes, a temporary directory's may be longer)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield lambda name: f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def delegate() -> None:
    """Run this script (``sys.argv[0]``) in a warm server's forked child and exit with its status.
    Returns (the caller runs the script itself) when warm start is off, inside the child, or when no
    server can take the job before it starts."""
    if _IN_CHILD or not mode():
        return
    directory = private_dir()
    if directory is None:
        print(f"mmie warm start: {_socket_dir()} is not a directory only this user can enter; this job runs in "
              "its own process (remove that path, or set MMIE_WARM=0 to silence this)", file=sys.stderr)
        return
    ident = key()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _short_paths(directory) as short:
            sock.connect(short(f"{ident}.sock"))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        failed = directory / f"{ident}.failed"
        if failed.exists():
            print(f"mmie warm start: the warm server for this environment failed ({failed}; delete it to try "
                  "again); this job runs in its own process", file=sys.stderr)
        else:
            start_server(directory, ident)
        return
    status = _run_remote(sock)
    if status is None:  # the server went away before the job started: run it here
        return
    sys.stdout.flush()
    sys.stderr.flush()
    if status < 0:  # killed by a signal: die by it too
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


def _run_remote(sock: socket.socket) -> int | None:
    request = json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
                          "started": process_start()}).encode()
    try:
        socket.send_fds(sock, [_HEADER.pack(len(request))], [0, 1, 2])
        sock.sendall(request)
        reader = sock.makefile("r", encoding="utf-8")
        line = reader.readline()
    except (BrokenPipeError, ConnectionResetError):
        return None
    if not line:
        return None
    pid = json.loads(line)["pid"]

    def forward(signum, _frame):
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass  # the job has ended: its status is on the way

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    line = reader.readline()
    if not line:
        print(f"mmie warm start: the server's supervisor of job pid {pid} ended without the job's exit status",
              file=sys.stderr)
        return 1
    return int(json.loads(line)["status"])


def process_start() -> float:
    """Wall-clock time at which this process started (from /proc, 10 ms resolution)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def start_server(directory: Path, ident: str) -> None:
    """Start the server for ``ident`` in the background (it exits at once if one is starting). It is
    started from a short-lived intermediate process, so it is not this job's child: a server that
    exits at once (another one holds the lock) leaves no zombie behind the job, and the job's own
    waits never see it."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    code = 1
    try:
        with open(directory / f"{ident}.log", "ab") as log:
            subprocess.Popen([sys.executable, "-m", "mmie.forkserver", str(directory), ident, json.dumps(sys.path)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
                             start_new_session=True)
        code = 0
    except BaseException:  # noqa: BLE001 (reported; the job goes on in its own process)
        import traceback

        print("mmie warm start: could not start the warm server:", file=sys.stderr)
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


# ------------------------------------------------------------------------------------------ server

def serve(directory: Path, ident: str, path: list[str]) -> None:
    import fcntl

    lock = open(directory / f"{ident}.lock", "w")  # noqa: SIM115 (held for the server's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another server for this identity is starting or running
    try:
        _serve_locked(directory, ident, path)
    except BaseException:
        # clients see this and run their jobs themselves instead of starting server after server
        import traceback

        (directory / f"{ident}.failed").write_text(traceback.format_exc())
        raise


def _serve_locked(directory: Path, ident: str, path: list[str]) -> None:
    sys.path[:] = path
    if key(path) != ident:
        raise RuntimeError(f"this process's identity is not {ident}: the environment or mmie's sources "
                           "changed between the client and its server")
    started = time.monotonic()
    preload()
    print(f"mmie warm start: server {ident} ready in {time.monotonic() - started:.1f} s (pid {os.getpid()})", flush=True)
    sock_path = directory / f"{ident}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _short_paths(directory) as short:
        listener.bind(short(f"{ident}.sock.{os.getpid()}"))
        listener.listen(64)
        os.replace(short(f"{ident}.sock.{os.getpid()}"), short(f"{ident}.sock"))
    supervisors: set[int] = set()
    idle_since = time.monotonic()
    try:
        while True:
            readable, _, _ = select.select([listener], [], [], 1.0)
            supervisors -= _reaped(supervisors)
            if readable:
                conn, _ = listener.accept()
                if _peer_uid(conn) != os.getuid():
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    _supervise(conn)  # never returns
                conn.close()
                supervisors.add(pid)
            if supervisors:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_seconds():
                break
    finally:
        # this server holds the identity's lock: the socket is its own (a server that starts while this
        # one exits makes its own lock file and socket)
        sock_path.unlink(missing_ok=True)
        listener.close()
        (directory / f"{ident}.log").unlink(missing_ok=True)
        (directory / f"{ident}.lock").unlink(missing_ok=True)


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as err:  # optional library: the job imports it itself (and fails there if it must)
            print(f"mmie warm start: not preloaded: {name}: {err}", flush=True)
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        for name in TRANSFORMERS_NAMES:
            getattr(transformers, name)
    for name in importlib.import_module("mmie.jobs").MODULES:
        importlib.import_module(f"mmie.jobs.{name}")


def _reaped(pids: set[int]) -> set[int]:
    done = set()
    for pid in pids:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            done.add(pid)
    return done


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    while len(data) < _HEADER.size:
        more = conn.recv(_HEADER.size - len(data))
        if not more:
            raise ConnectionError("client closed the connection")
        data += more
    (size,) = _HEADER.unpack(data)
    body = bytearray()
    while len(body) < size:
        more = conn.recv(min(1 << 20, size - len(body)))
        if not more:
            raise ConnectionError("client closed the connection")
        body += more
    return json.loads(body), list(fds)


def _supervise(conn: socket.socket) -> None:
    """In a fork of the server: take one request, fork the job, report its pid and exit status; kill the
    job when the client goes away (Snakemake killed it)."""
    code = 1
    try:
        request, fds = _receive(conn)
        if len(fds) != 3:
            raise ConnectionError(f"expected 3 file descriptors, got {len(fds)}")
        pid = os.fork()
        if pid == 0:
            conn.close()
            _run_job(request, fds)  # never returns
        with contextlib.suppress(ProcessLookupError):  # a job that ended at once
            os.setpgid(pid, pid)  # as the job does itself: its group exists before anyone may signal it
        for fd in fds:
            os.close(fd)
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
        pidfd = os.pidfd_open(pid)
        watched: list[int | socket.socket] = [pidfd, conn]
        while True:
            readable, _, _ = select.select(watched, [], [])
            if pidfd in readable:
                break
            if conn.recv(1, socket.MSG_PEEK) == b"":  # the client is gone
                with contextlib.suppress(ProcessLookupError):  # the job ended meanwhile
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os._exit(1)
        _, wstatus = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wstatus)
        conn.sendall((json.dumps({"status": status}) + "\n").encode())
        code = 0
    except BaseException:  # noqa: BLE001 (to the server's log; the client reports a missing status itself)
        import traceback

        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _run_job(request: dict, fds: list[int]) -> None:
    """In the job's process: become the fresh process the client would have been, run the script."""
    global _IN_CHILD
    _IN_CHILD = True
    code = 1
    try:
        os.setpgid(0, 0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv[:] = request["argv"]
        sys.path[:] = request["path"]
        code = _run_script(request["argv"][0], request["started"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream: nothing more can be written to it
        os._exit(code)


#: the line a warm job writes to its rule's log (benchmarks/rule_times.py reads it back)
USAGE = "warm start: ran in a fork of the warm server; startup_s={:.2f} cpu_s={:.1f} max_rss_mb={:.0f}"
USAGE_PATTERN = r"warm start: ran in a fork .*startup_s=([\d.]+) cpu_s=([\d.]+) max_rss_mb=(\d+)"


def _run_script(path: str, started: float) -> int:
    """Run ``path`` as ``__main__`` the way the interpreter would: exit code from SystemExit, the
    traceback of an uncaught exception through ``sys.excepthook`` (to the job's stderr), atexit
    handlers and non-daemon threads finished before the process ends. Then log (to the rule's log,
    which the script set up) the job's start-up as paid (from the client's start to here), CPU time
    and peak memory: Snakemake's benchmark measures only the client."""
    import atexit
    import logging
    import resource
    import runpy
    import threading

    startup = time.time() - started
    code = 0
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (reported as the interpreter would, then the job fails)
        sys.excepthook(*sys.exc_info())
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    logging.getLogger(__name__).info(USAGE.format(startup, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024))
    atexit._run_exitfuncs()
    return code


if __name__ == "__main__":
    # through the package's module, not this ``__main__`` copy: the child's scripts import
    # ``mmie.forkserver`` and must find ``_IN_CHILD`` set there
    from mmie import forkserver

    forkserver.serve(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
