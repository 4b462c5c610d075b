"""Shared pieces of the property-based ("fuzz") tests: example budgets, generated bad values, and the checks every
surface shares (a user mistake is one `PtlabError` line, never another exception; no partial output is left).

The pattern: build a VALID object, corrupt ONE field with a generated value, and require that the code either
accepts it or refuses it with a one-line `PtlabError`. Budgets: `examples(n)` runs n examples per test in `make test`
and 10 n under `make fuzz` (PTLAB_FUZZ=1, fresh seeds each run).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ptlab.errors import PtlabError

FUZZ = bool(os.environ.get("PTLAB_FUZZ"))
FUZZ_FACTOR = 10


def examples(n: int) -> settings:
    """Hypothesis settings for a test that should run `n` examples by default (10 n under `make fuzz`)."""
    return settings(max_examples=n * (FUZZ_FACTOR if FUZZ else 1),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---- generated values -------------------------------------------------------------------------------------------

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
# Floats that break range checks, arithmetic and loops: non-finite, signed zero, subnormal, huge, near the bounds.
ODD_FLOATS = st.one_of(NON_FINITE, st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-9, 1e300, -1.0, 1.0, 0.5,
                                                    0.999999, 1.000001]),
                       st.floats(allow_nan=True, allow_infinity=True))
ODD_INTS = st.one_of(st.sampled_from([0, -1, -5, 1, 2**31, 2**63, 2**64 + 7, -(2**63)]),
                     st.integers(min_value=-10**6, max_value=10**6))
# Text a user or a generator might put anywhere: control characters, NULs, newlines, lone surrogates, braces.
ODD_TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),
    st.sampled_from(["", " ", "\x00", "a\nb", "\r", "{", "}", "{}", "~", "null", "nan", ".inf", "\ud800", "é",
                     "../../etc/passwd", "!!python/object:os.system", "- a", "[", "]", "1e-3", "0x10"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), ODD_INTS, ODD_FLOATS, ODD_TEXT)
# Any YAML/JSON-shaped value: scalars, small lists and mappings (with odd keys, `None` included).
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.none(), ODD_INTS, ODD_TEXT), inner, max_size=3)),
    max_leaves=6)
BYTES = st.one_of(st.binary(max_size=200),
                  st.sampled_from([b"", b"\xff\xfe\x00", b"\x80abc", b"\xc3\x28", "é".encode("latin-1"),
                                   b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"\x80\x04\x95"]))


# ---- shared checks ----------------------------------------------------------------------------------------------

def assert_one_line(err: BaseException) -> None:
    """A PtlabError's message must be usable as the single line the CLI prints."""
    message = str(err)
    assert message, "an error without a message"
    assert "\n" not in message and "\r" not in message, f"multi-line error: {message!r}"


def accepted_or_refused(fn, *args, **kwargs):
    """Run fn: return (True, result) if it succeeds, (False, error) if it raises a one-line PtlabError. Any other
    exception propagates and fails the test: that is the bug these tests look for."""
    try:
        return True, fn(*args, **kwargs)
    except PtlabError as err:
        assert_one_line(err)
        return False, err


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`ptlab ARGV` in this process: (exit code, stdout, stderr). A traceback is a test failure, not an exit code."""
    from ptlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse refusing an argument
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_cli_error_is_one_line(code: int, stderr: str) -> None:
    if code != 0:
        errors = [line for line in stderr.splitlines() if line.startswith("ptlab: error:") or ": error:" in line]
        assert errors, f"exit {code} without an error line: {stderr!r}"
        assert "Traceback" not in stderr
        last = stderr.rstrip("\n").splitlines()[-1]
        assert ": error:" in last, f"the error is not on one line: {stderr!r}"


def leftovers(directory: Path) -> list[str]:
    """Temporary files or directories left anywhere under `directory` (what an atomic writer must clean up)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name.endswith(".tmp"))


@contextlib.contextmanager
def time_limit(seconds: int, what: str):
    """Fail (instead of hanging the suite) when the body runs longer than `seconds`."""
    def timeout(signum, frame):
        raise AssertionError(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
