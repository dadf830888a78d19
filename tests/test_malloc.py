"""The CLI keeps freed memory in the process (issue #9 item 6: `index build` spent more
system than user CPU time returning activation tensors to the kernel every batch)."""

from __future__ import annotations

import platform

import pytest

from makevl import cli


class FakeLibc:
    """Records mallopt calls; accepts mmap thresholds up to ``accepted``."""

    def __init__(self, accepted: int) -> None:
        self.calls: list[tuple[int, int]] = []

        def mallopt(parameter: int, value: int) -> int:
            self.calls.append((parameter, value))
            return int(parameter != cli.M_MMAP_THRESHOLD or value <= accepted)

        self.mallopt = mallopt  # a function: the caller sets its ctypes argtypes/restype


@pytest.mark.parametrize("accepted", [2**30, 32 * 2**20])
def test_mallopt_raises_both_thresholds(monkeypatch, accepted):
    libc = FakeLibc(accepted)
    monkeypatch.setattr(cli.ctypes, "CDLL", lambda name: libc)
    assert cli.keep_freed_memory()
    assert libc.calls[0] == (cli.M_TRIM_THRESHOLD, 2**30)
    assert libc.calls[-1] == (cli.M_MMAP_THRESHOLD, accepted)


def test_no_mallopt_means_not_applied(monkeypatch):
    monkeypatch.setattr(cli.ctypes, "CDLL", lambda name: object())  # not glibc
    assert cli.keep_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_setting():
    assert cli.keep_freed_memory()


def test_every_command_starts_with_it(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["index", "info", str(tmp_path / "no-index")]) == 1
    assert calls == [True]
