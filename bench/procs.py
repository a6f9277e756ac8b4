"""Starting, stopping and measuring the lab's processes: pinned to their cores, waited for,
their CPU time and memory read from /proc."""

import os
import signal
import socket
import subprocess
import time


class Procs:
    """Methods of `bench.Bench`; `self` is the bench."""

    def placement_text(self):
        if not self.pin:
            return "not pinned (fewer than 2 CPUs or --no-pin)"
        return (
            "proxy under test alone on CPU 1 (one worker: sidepool TOKIO_WORKER_THREADS=1, HAProxy "
            "nbthread 1, nginx worker_processes 1); fake exchange (1 nginx worker), delay line and "
            "load generator on CPU 0; the direct client (no proxy) runs on CPU 1"
        )

    def start(self, name, argv, cpu=None, env=None, sink=None):
        # A tool that runs the process under observation (callgrind), set per target name.
        argv = self.wrappers.get(name, []) + argv
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        # `sink`: where the output goes instead of the work folder (the logging scenario sends
        # every proxy's log lines to /dev/null, so none pays for a disk).
        logf = open(sink or os.path.join(self.work, f"{name}.log"), "ab")
        # SIDEPOOL_* is sidepool's config namespace (an unknown key stops it), so the harness's
        # own variables such as SIDEPOOL_BIN are not passed on.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEPOOL_")}
        if env:
            full_env.update(env)
        proc = subprocess.Popen(
            argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=full_env,
        )
        self.procs[name] = proc
        return proc

    def stop(self, name):
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def wait_port(self, port, what, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s "
                           f"(see {self.work}/*.log)")

    def check_free(self):
        busy = []
        for name, port in self.port.items():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name}={port}")
            finally:
                s.close()
        if busy:
            raise RuntimeError("ports in use: " + ", ".join(busy) + "; pick another --port-base")

    def run_json(self, argv, cpu=None, timeout=600, env=None):
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)
        if res.returncode != 0:
            raise RuntimeError(f"{argv[:4]}... failed: {res.stderr[-2000:]}")
        return res.stdout

    def pids_of(self, name):
        """The process and its children (nginx's worker), skipping the taskset wrapper."""
        proc = self.procs[name]
        pids, todo = [], [proc.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo += [int(c) for c in f.read().split()]
            except OSError:
                pass
        return pids

    def cpu_seconds(self, name):
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids_of(name):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / tick

    def rss_bytes(self, name, field="VmRSS"):
        total = 0
        for pid in self.pids_of(name):
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(field + ":"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total


def cpu_ticks():
    """Per-CPU (total, steal, idle + iowait) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *vals = line.split()
            if name.startswith("cpu") and name != "cpu":
                nums = [int(v) for v in vals]
                out[name] = (sum(nums[:8]), nums[7] if len(nums) > 7 else 0,
                             nums[3] + nums[4])
    return out


def steal_fraction(before, after):
    total = after[0] - before[0]
    return (after[1] - before[1]) / total if total > 0 else 0.0


def busy_fraction(before, after):
    """The share of a CPU's time spent running anything (not idle, not stolen)."""
    total = after[0] - before[0]
    idle = (after[2] - before[2]) + (after[1] - before[1])
    return 1 - idle / total if total > 0 else 0.0
