"""What native code prints inside ``native_stdout_to_stderr`` goes to stderr, stdout is back afterwards, and
threads entering and leaving in any order leave the descriptors as they were (HiGHS's stray debug line must not
reach a command's ``--json`` output)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import ctypes, os, sys, threading, time
    from tap_edge.core.console import native_stdout_to_stderr

    libc = ctypes.CDLL(None)
    print("before", flush=True)
    with native_stdout_to_stderr():
        os.write(1, b"native-write\\n")
        libc.printf(b"native-printf\\n")  # buffered by the C library: must be flushed before stdout comes back

    def worker(delay):
        with native_stdout_to_stderr():
            time.sleep(delay)
            os.write(1, b"thread-write\\n")

    threads = [threading.Thread(target=worker, args=(d,)) for d in (0.05, 0.2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("after", flush=True)
    os.write(1, b"after-native\\n")
""")


def test_native_output_goes_to_stderr_and_stdout_comes_back() -> None:
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["before", "after", "after-native"]
    assert r.stderr.count("thread-write") == 2
    assert "native-write" in r.stderr and "native-printf" in r.stderr
