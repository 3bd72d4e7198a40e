"""The bad-input table's one assertion: a bad input is refused with one of lvm_pyro's errors
(never a traceback from inside torch, Pyro, numpy or h5py, never a silent accept), and the
message says what to do.

Each ``tests/bad_input/test_bad_*.py`` file is a table of cases for one entry point:
``Case(id, call, error, match)``; ``call`` is a zero-argument function doing what a user
would do wrongly. ``run_case`` is the one check every case goes through.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from lvm_pyro import errors


@dataclass(frozen=True)
class Case:
    """One bad input: what the user calls, the error class expected and a regex its message matches.

    ``error`` may be a warning class (a subclass of ``Warning``): then the call must warn
    with it (a legitimate run whose result the user must be told about) instead of raising.
    """

    id: str
    call: Callable[[], object]
    error: type = errors.LVMError
    match: str = ""


def run_case(case: Case) -> None:
    if issubclass(case.error, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            case.call()
        hits = [w for w in caught if issubclass(w.category, case.error)]
        assert hits, f"{case.id}: accepted silently (no {case.error.__name__}); warnings: {caught}"
        assert any(re.search(case.match, str(w.message), re.I | re.S) for w in hits), (
            f"{case.id}: warning text {[str(w.message) for w in hits]} does not match {case.match!r}"
        )
        return
    try:
        case.call()
    except errors.LVMError as exc:
        assert isinstance(exc, case.error), f"{case.id}: {type(exc).__name__} is not {case.error.__name__}"
        assert re.search(case.match, str(exc), re.I | re.S), (
            f"{case.id}: {exc!s} does not match {case.match!r}"
        )
        return
    except Exception as exc:  # a traceback from inside a dependency: the defect this table hunts
        pytest.fail(f"{case.id}: raised {type(exc).__name__} from outside lvm_pyro.errors: {exc}")
    pytest.fail(f"{case.id}: accepted silently")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``lvm-pyro ARGV`` in this process: (exit code, stdout, stderr)."""
    from lvm_pyro import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_cli_refuses(argv: list[str], match: str) -> None:
    """The CLI exits non-zero with a one-line message matching ``match``, and no traceback."""
    code, out, err = run_cli(argv)
    assert code != 0, f"lvm-pyro {' '.join(argv)}: accepted silently (exit 0)\n{out}"
    assert "Traceback" not in err + out, f"lvm-pyro {' '.join(argv)}: printed a traceback\n{err}"
    assert re.search(match, err + out, re.I | re.S), (
        f"lvm-pyro {' '.join(argv)}: {err!r} does not match {match!r}"
    )
