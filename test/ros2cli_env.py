"""A venv with the real `ros2` command line, launch, launch_ros and colcon (../shared/ros2cli/make_env.sh), built once
and cached for every later test run, plus what running ROS 2 commands from tests needs.

The venv lives in ``$SEG_PERCEPTION_CACHE`` (default ``~/.cache/seg_perception``)``/ros2cli-venv/<key>``; the key
hashes make_env.sh, its upstream sources, the extra packages and the Python version, so a changed script builds a
new venv. A lock file serialises concurrent test runs; a venv is used only once its ``.complete`` stamp exists.
Besides what make_env.sh installs, the venv gets the package's runtime dependencies, so that the package itself can
be colcon-built or pip-installed on top of it without network access to anything else.
"""
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_ENV_DIR = os.environ.get('SEG_PERCEPTION_ROS2CLI', os.path.join(os.path.dirname(ROOT), 'shared', 'ros2cli'))
CACHE = os.environ.get('SEG_PERCEPTION_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'seg_perception'))
# The package's install_requires (setup.py), preinstalled so `pip install .` and colcon find them.
RUNTIME_PACKAGES = ('numpy', 'opencv-python-headless', 'onnxruntime', 'pyyaml', 'rosbags')
BUILD_TIMEOUT_S = 1800   # per step; the first build took 13 min on 2 cores shared with 8 busy processes


def missing_tools() -> str | None:
    """Why the venv cannot be built here, or None."""
    if not os.path.isfile(os.path.join(MAKE_ENV_DIR, 'make_env.sh')):
        return f'{MAKE_ENV_DIR}/make_env.sh not found (set SEG_PERCEPTION_ROS2CLI)'
    missing = [t for t in ('cmake', 'cc', 'c++', 'make') if shutil.which(t) is None]
    if missing:
        return f'{", ".join(missing)} missing (apt-get install cmake g++ make): cannot build the ros2 CLI venv'
    return None


def _key(python: str) -> str:
    h = hashlib.sha256()
    for name in ('make_env.sh', 'upstream-src.tgz'):
        with open(os.path.join(MAKE_ENV_DIR, name), 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
    h.update(' '.join(RUNTIME_PACKAGES).encode())
    h.update(os.path.realpath(python).encode())
    return h.hexdigest()[:16]


def clean_env(**extra: str) -> dict:
    """The current environment for a child process of another venv: without the wheels' re-exec marker, the
    project venv's interpreter settings and any sourced ament/colcon prefixes; ``extra`` added."""
    drop = ('_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'VIRTUAL_ENV', 'PYTHONPATH', 'PYTHONHOME', 'AMENT_PREFIX_PATH',
            'COLCON_PREFIX_PATH', 'CMAKE_PREFIX_PATH', 'LD_LIBRARY_PATH')
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def ros2cli_venv(python: str = sys._base_executable) -> str:
    """Path of the cached venv, built on first use (~70-200 s). Raises RuntimeError with the build log's tail."""
    key = _key(python)
    base = os.path.join(CACHE, 'ros2cli-venv')
    venv = os.path.join(base, key)
    stamp = os.path.join(venv, '.complete')
    if os.path.exists(stamp):
        return venv
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, key + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another run may be building it: wait, then use its result
        if os.path.exists(stamp):
            return venv
        log = os.path.join(base, key + '.build.log')
        with open(log, 'w') as out:
            steps = [['bash', os.path.join(MAKE_ENV_DIR, 'make_env.sh'), venv, python],
                     [os.path.join(venv, 'bin', 'python'), '-m', 'pip', 'install', '-q',
                      '--disable-pip-version-check', *RUNTIME_PACKAGES]]
            for cmd in steps:
                result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=clean_env(),
                                        timeout=BUILD_TIMEOUT_S)
                if result.returncode:
                    with open(log) as f:
                        tail = f.read()[-3000:]
                    raise RuntimeError(f'building the ros2 CLI venv failed ({" ".join(cmd[:2])}), log {log}:\n{tail}')
        with open(stamp, 'w') as f:
            f.write(time.strftime('%Y-%m-%d %H:%M:%S\n'))
    return venv


def _default_signals() -> None:
    """In the child before exec: SIGINT and SIGTERM unblocked and at their default action."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Ros2:
    """Runs ros2 / colcon / pip commands of the venv with one environment (domain, transports, overlays)."""

    def __init__(self, venv: str, **env: str):
        self.venv = venv
        self.marker = uuid.uuid4().hex   # every process started from here carries it: find leftovers by it
        self.env = clean_env(SEG_PERCEPTION_TEST_MARKER=self.marker, **env)
        self.env['PATH'] = os.path.join(venv, 'bin') + os.pathsep + self.env.get('PATH', '')
        self.env['AMENT_PREFIX_PATH'] = venv

    def with_prefix(self, prefix: str, site_packages: str | None = None) -> 'Ros2':
        """A copy whose ament index, PATH and PYTHONPATH also cover an install prefix (what setup.bash does)."""
        other = Ros2.__new__(Ros2)
        other.venv, other.marker, other.env = self.venv, self.marker, dict(self.env)
        other.env['AMENT_PREFIX_PATH'] = prefix + os.pathsep + self.env['AMENT_PREFIX_PATH']
        other.env['PATH'] = os.path.join(prefix, 'bin') + os.pathsep + self.env['PATH']
        if site_packages:
            other.env['PYTHONPATH'] = site_packages
        return other

    def sourced(self, setup_script: str) -> 'Ros2':
        """A copy whose environment is the one after ``source setup_script`` (a colcon install's setup.bash)."""
        out = subprocess.run(['bash', '-c', f'source "{setup_script}" && env -0'], env=self.env,
                             capture_output=True, check=True, timeout=60)
        other = Ros2.__new__(Ros2)
        other.venv, other.marker = self.venv, self.marker
        other.env = dict(item.split('=', 1) for item in out.stdout.decode().split('\0') if '=' in item)
        return other

    def run(self, *cmd: str, timeout: float = 60, cwd: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env=self.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f'{" ".join(cmd)} exited {result.returncode}:\n{result.stdout[-4000:]}')
        return result

    def start(self, *cmd: str, cwd: str | None = None) -> subprocess.Popen:
        """A background process in its own session (so SIGINT is not ignored and the group can be reaped), with
        SIGINT and SIGTERM unblocked and at their default action as a shell starts it: a blocked signal mask or an
        ignored SIGINT is inherited through exec, and earlier tests in this process (rclpy contexts, executor
        threads) may leave either behind; a launch started so never saw the test's ctrl-c."""
        return subprocess.Popen(list(cmd), env=self.env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                preexec_fn=_default_signals)

    def leftovers(self) -> list[str]:
        """Command lines of live processes started from this helper (found by the marker in their environment)."""
        needle = f'SEG_PERCEPTION_TEST_MARKER={self.marker}'.encode()
        found = []
        for pid in os.listdir('/proc'):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f'/proc/{pid}/environ', 'rb') as f:
                    if needle not in f.read().split(b'\0'):
                        continue
                with open(f'/proc/{pid}/stat') as f:
                    if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                        continue
                with open(f'/proc/{pid}/cmdline', 'rb') as f:
                    found.append(f'{pid}: ' + f.read().replace(b'\0', b' ').decode(errors='replace'))
            except OSError:
                continue
        return found

    def reap(self, proc: subprocess.Popen) -> str:
        """Stop a background process group (if still alive) and return its output."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return proc.communicate(timeout=10)[0]

