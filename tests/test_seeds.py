"""Every seed ptlab takes, from a config, the command line or a Python function, is checked by one helper
(`ptlab.config.check_seed`): a negative, too large or non-integer seed is a one-line PtlabError with the same words
everywhere, never numpy's or scikit-learn's ValueError from deep inside."""

import numpy as np
import pytest
from fuzz_strategies import run_cli

from ptlab.config import MAX_SEED, Config, FinetuneConfig, TaskConfig, check_seed, seed_problem
from ptlab.data.pipeline import pretrain_batches
from ptlab.downstream.finetune import finetune
from ptlab.downstream.incontext import draw_demonstrations, prompted_examples
from ptlab.downstream.metrics import paired_bootstrap
from ptlab.downstream.probe import linear_probe
from ptlab.errors import PtlabError
from ptlab.lab.preview import show_objective

TEXT = "The cat sat on the mat. Then it slept in the sun for an hour."

# Each public function that takes a seed, called with `seed`; the check comes before any other work, so the other
# arguments need not be real.
ENTRY_POINTS = {
    "show_objective": lambda seed: show_objective("bart", [TEXT], seed=seed),
    "paired_bootstrap": lambda seed: paired_bootstrap([1.0, 0.0], [0.0, 1.0], seed=seed),
    "draw_demonstrations": lambda seed: draw_demonstrations(10, 2, seed, 0),
    "prompted_examples": lambda seed: prompted_examples(None, None, "test", 0, seed, 512),
    "linear_probe": lambda seed: linear_probe(None, TaskConfig(name="rt_polarity"), seed=seed),
    "pretrain_batches": lambda seed: pretrain_batches(Config(seed=seed), None, None, None),
    "finetune": lambda seed: finetune(FinetuneConfig(seed=seed), show_progress=False),
    "Config.validate": lambda seed: Config(seed=seed).validate(),
}


@pytest.mark.parametrize("name", ENTRY_POINTS)
@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**70, 1.5])
def test_a_bad_seed_is_one_line_with_the_command_lines_words(name, seed):
    with pytest.raises(PtlabError) as err:
        ENTRY_POINTS[name](seed)
    assert str(err.value) in (f"seed: {seed_problem(seed)}", f"config key 'seed': {seed_problem(seed)}")


def test_the_command_line_and_the_python_api_say_the_same():
    code, _, err = run_cli(["objectives", "show", "bart", "--text", TEXT, "--seed", "-1"])
    assert code == 2 and "argument --seed: must be in [0, 2**63), got -1" in err
    with pytest.raises(PtlabError, match=r"^seed: must be in \[0, 2\*\*63\), got -1$"):
        show_objective("bart", [TEXT], seed=-1)
    with pytest.raises(PtlabError, match=r"^config key 'seed': must be in \[0, 2\*\*63\), got -1$"):
        Config(seed=-1).validate()


def test_good_seeds_pass_through():
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED and check_seed(np.int64(7)) == 7
    _, shown = show_objective("bart", [TEXT], seed=MAX_SEED)
    assert shown and paired_bootstrap([1.0, 0.0], [0.0, 1.0], rounds=10, seed=MAX_SEED)
    with pytest.raises(PtlabError, match="must be an integer"):
        check_seed(True)
