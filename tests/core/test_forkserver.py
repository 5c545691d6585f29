"""Warm start (mmie/forkserver.py): a script handed to the warm server runs as the fresh process would
(streams, exit status, cwd, argv, environment, sys.path), dies with its client, and is never handed
to a server of another environment, another user's directory or when warm start is off."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mmie import forkserver

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""\
    import sys
    warm = "torch" in sys.modules  # the server preloads torch; a fresh process has not imported it yet
    from mmie.forkserver import delegate

    delegate()
    import json, os, time
    from pathlib import Path
    Path("warm.txt").write_text(str(warm))
    if Path("raise").exists():
        raise RuntimeError("boom")
    if Path("sleep").exists():
        Path("pid").write_text(str(os.getpid()))
        time.sleep(120)
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv, "foo": os.environ.get("FOO"), "path": sys.path[:2],
                      "children": children}))
    print("to stderr", file=sys.stderr)
    sys.exit(int(os.environ.get("CODE", "0")))
""")


@pytest.fixture
def warm(tmp_path):
    """A job folder, the environment of a warm-started run with its own socket directory, and the
    servers it started killed at the end."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "script.py").write_text(SCRIPT)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = {**os.environ, "MMIE_WARM": "1", "MMIE_WARM_IDLE": "60", "XDG_RUNTIME_DIR": str(run_dir),
           "PYTHONPATH": str(ROOT), "CODE": "3", "FOO": "bar"}
    sockets = run_dir / f"mmie-warm-{os.getuid()}"
    yield tmp_path / "job", env, sockets
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # not a process, or it has exited
        if b"mmie.forkserver" in cmdline and str(sockets).encode() in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)


def run(job: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "script.py", "arg1"], cwd=job, env=env, capture_output=True, text=True,
                          timeout=120, **kw)


def wait_for_server(sockets: Path, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(sockets.glob("*.sock"))
        if found:
            return found[0]
        time.sleep(0.1)
    logs = "\n".join(p.read_text() for p in sockets.glob("*.log"))
    raise AssertionError(f"no warm server came up in {timeout} s; its log:\n{logs}")


def test_a_warm_run_is_the_run_a_fresh_process_makes(warm):
    job, env, sockets = warm
    cold = run(job, env)
    assert (job / "warm.txt").read_text() == "False"      # the first job runs itself and starts the server
    wait_for_server(sockets)
    hot = run(job, env)
    assert (job / "warm.txt").read_text() == "True", hot.stderr  # this one ran in the server's fork
    assert cold.returncode == hot.returncode == 3
    assert hot.stdout == cold.stdout and hot.stderr == cold.stderr == "to stderr\n"
    out = json.loads(hot.stdout)
    assert out["cwd"] == str(job) and out["argv"] == ["script.py", "arg1"] and out["foo"] == "bar"
    assert out["path"][0] == str(job)                       # the script's folder first, as in a fresh process
    assert out["children"] == []                            # the server it started is not the job's child


def test_an_uncaught_exception_ends_a_warm_job_as_it_ends_a_fresh_one(warm):
    job, env, sockets = warm
    run(job, env)
    wait_for_server(sockets)
    (job / "raise").touch()
    hot = run(job, env)
    assert (job / "warm.txt").read_text() == "True"
    cold = run(job, {**env, "MMIE_WARM": "0"})
    assert hot.returncode == cold.returncode == 1
    assert hot.stderr.splitlines()[-1] == cold.stderr.splitlines()[-1] == "RuntimeError: boom"
    assert "Traceback (most recent call last):" in hot.stderr


def test_another_environment_gets_another_server(warm):
    job, env, sockets = warm
    run(job, env)
    wait_for_server(sockets)
    other = run(job, {**env, "FOO": "baz"})                 # not the server's environment: runs itself
    assert (job / "warm.txt").read_text() == "False" and json.loads(other.stdout)["foo"] == "baz"
    same = {**env, "OLDPWD": "/somewhere"}                  # a shell's per-job variable: the same server
    assert forkserver.key(env=same) == forkserver.key(env=env) != forkserver.key(env={**env, "FOO": "baz"})
    assert forkserver.key(env={**env, "OMP_NUM_THREADS": "2"}) != forkserver.key(env={**env, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_job_dies_with_its_client(warm, how):
    """Snakemake stops a job by signalling its process (the client): a SIGTERM is forwarded to the
    job, and a client killed outright takes the job with it (the supervisor sees the socket close)."""
    job, env, sockets = warm
    run(job, env)
    wait_for_server(sockets)
    pidfile = job / "pid"
    (job / "sleep").touch()
    client = subprocess.Popen([sys.executable, "script.py"], cwd=job, env=env)
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and client.poll() is None, "the job did not start"
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    assert pid != client.pid                                # it runs in the server's fork
    client.send_signal(getattr(signal, how))
    assert client.wait(timeout=30) == -getattr(signal, how)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text(errors="replace"):
        assert time.monotonic() < deadline, f"job {pid} outlived its client ({how})"
        time.sleep(0.05)


def test_off_inside_containers_slurm_and_when_asked(monkeypatch):
    for var in ("MMIE_WARM", "SLURM_JOB_ID", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    assert forkserver.mode() is sys.platform.startswith("linux")
    for var in ("SLURM_JOB_ID", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.setenv(var, "1")
        assert forkserver.mode() is False, var
        monkeypatch.setenv("MMIE_WARM", "1")
        assert forkserver.mode() is True, var
        monkeypatch.delenv("MMIE_WARM")
        monkeypatch.delenv(var)
    monkeypatch.setenv("MMIE_WARM", "0")
    assert forkserver.mode() is False
    monkeypatch.setenv("MMIE_WARM", "yes")
    with pytest.raises(ValueError, match="MMIE_WARM='yes'"):
        forkserver.mode()


def test_switched_off_the_script_runs_itself_and_starts_no_server(warm):
    job, env, sockets = warm
    res = run(job, {**env, "MMIE_WARM": "0"})
    assert res.returncode == 3 and (job / "warm.txt").read_text() == "False"
    time.sleep(1)
    assert not sockets.exists() or not list(sockets.iterdir())


def test_a_socket_directory_others_can_enter_is_not_used(tmp_path, monkeypatch):
    base = tmp_path / "base"
    shared = base / f"mmie-warm-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    assert forkserver.private_dir() is None
    job = tmp_path / "job"
    job.mkdir()
    (job / "script.py").write_text(SCRIPT)
    res = run(job, {**os.environ, "MMIE_WARM": "1", "XDG_RUNTIME_DIR": str(base), "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0 and (job / "warm.txt").read_text() == "False"
    assert "is not a directory only this user can enter" in res.stderr and not list(shared.iterdir())
    shared.chmod(0o700)
    assert forkserver.private_dir() == shared


def test_preloading_changes_no_global_state_a_job_depends_on():
    """The server imports libraries some jobs would not have imported: none of them may change torch's
    or numpy's global settings (a forked job would then compute differently from a fresh one)."""
    code = textwrap.dedent("""\
        import json, numpy, torch
        def state():
            return [str(torch.get_default_dtype()), torch.are_deterministic_algorithms_enabled(),
                    torch.get_float32_matmul_precision(), torch.is_grad_enabled(), torch.get_num_threads(),
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.deterministic,
                    torch.backends.cudnn.benchmark, sorted(numpy.geterr().items()), str(numpy.get_printoptions())]
        before = state()
        from mmie import forkserver
        forkserver.preload()
        print(json.dumps([before, state()]))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    before, after = json.loads(res.stdout.strip().splitlines()[-1])
    assert before == after
