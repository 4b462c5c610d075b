"""Host settings: OpenMP waiting set before torch loads, each study job's thread share, the CLI's self-description."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptlab.cli import build_parser
from ptlab.train.host import WAIT_SETTINGS, job_pool, prefer_passive_waiting, thread_share

# Runs a ptlab command that does not load torch, then loads it: libgomp prints the waiting it started with.
_CLI_THEN_TORCH = ("import sys; from ptlab.cli import main; code = main(['objectives', 'list']); "
                   "assert 'torch' not in sys.modules; import torch")


def _openmp_waiting(extra_env: dict[str, str]) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    env.update(extra_env, OMP_DISPLAY_ENV="VERBOSE")
    done = subprocess.run([sys.executable, "-c", _CLI_THEN_TORCH], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    policy = re.search(r"OMP_WAIT_POLICY = '(\w+)'", done.stderr)
    spins = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    if not (policy and spins):
        pytest.skip("torch's OpenMP runtime is not GNU libgomp here")
    return policy.group(1), spins.group(1)


def test_cli_makes_openmp_waiters_sleep_instead_of_spinning():
    # libgomp's default is to spin 300,000 turns (reported as PASSIVE with GOMP_SPINCOUNT 300000).
    assert _openmp_waiting({}) == ("PASSIVE", "0")


def test_cli_leaves_a_users_openmp_waiting_alone():
    assert _openmp_waiting({"OMP_WAIT_POLICY": "ACTIVE"}) == ("ACTIVE", "30000000000")
    assert _openmp_waiting({"GOMP_SPINCOUNT": "300000"}) == ("PASSIVE", "300000")


@pytest.mark.parametrize("chosen", WAIT_SETTINGS)
def test_prefer_passive_waiting_only_where_nothing_was_chosen(chosen):
    environ: dict[str, str] = {}
    assert prefer_passive_waiting(environ) and environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert not prefer_passive_waiting(environ)
    environ = {chosen: "7"}
    assert not prefer_passive_waiting(environ) and environ == {chosen: "7"}


@pytest.mark.parametrize("cores, jobs, share", [(2, 1, 2), (2, 2, 1), (2, 3, 1), (16, 3, 5), (8, 8, 1)])
def test_thread_share_splits_cores_and_never_drops_to_zero(cores, jobs, share):
    assert thread_share(jobs, cores) == share


def _job_view() -> tuple[str | None, str | None, int]:
    import torch

    return os.environ.get("OMP_NUM_THREADS"), os.environ.get("OMP_WAIT_POLICY"), torch.get_num_threads()


def test_study_jobs_start_with_their_thread_share_and_passive_waiting(monkeypatch):
    for name in WAIT_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "13")  # a share from the parent's environment must not leak through
    share = thread_share(2)
    with job_pool(2) as pool:
        assert pool.submit(_job_view).result(timeout=120) == (str(share), "PASSIVE", share)
    assert "OMP_WAIT_POLICY" not in os.environ  # the parent keeps its own environment


def test_help_and_package_description_name_the_four_families_and_the_path_end_to_end():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    package = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["description"]
    for text in (" ".join(build_parser().format_help().split()), package):
        for family in ("T5", "BART", "GPT-2", "Llama"):
            assert family in text
        assert re.search(r"clean.*tokeni[sz]e.*pre-train.*fine-tune.*evaluate.*compare.*export", text), text
