"""The evaluation flags of test, benchmark and visualize, derived from the AttackSettings fields:
each flag a user knows reaches its field, per-verb differences hold, and bad values are refused
by argparse with the same words as before the flags were derived."""

import pytest

from patchguard.adversarial.settings import AttackSettings
from patchguard.cli import build_parser
from patchguard.cli.attack_settings import attack_settings


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_evaluation_flag_of_test_reaches_its_field():
    args = parse("test", "--checkpoint", "x", "--epsilon-test", "0", "2", "--steps-test", "3",
                 "--attack", "apgd", "square", "--objective", "score", "--restarts", "2",
                 "--queries", "50", "--no-early-stop", "--batch-size", "4", "--workers", "1")
    assert attack_settings(args) == AttackSettings(
        epsilons=(0.0, 2.0), steps=3, attacks=("apgd", "square"), objective="score",
        restarts=2, queries=50, early_stop=False, batch_size=4, workers=1)
    # The verbs still read the flags by their old names.
    assert (args.epsilon_test, args.steps_test, args.attack) == ([0.0, 2.0], 3, ["apgd", "square"])


def test_without_flags_test_runs_the_documented_defaults():
    settings = attack_settings(parse("test", "--checkpoint", "x"))
    assert (settings.epsilons, settings.steps, settings.attacks, settings.objective) == (
        (0.0, 8.0), 10, ("pgd",), "mask")
    assert (settings.restarts, settings.query_budget, settings.early_stop) == (1, 1000, True)
    assert (settings.batch_size, settings.workers) == (16, 0)


def test_benchmark_runs_standard_too_and_keeps_workers_for_training():
    args = parse("benchmark", "--classes", "a", "--checkpoint-dir", "d", "--workers", "3",
                 "--steps-test", "4")
    settings = attack_settings(args, [0, 2])
    assert settings.attacks == ("pgd", "standard") and settings.steps == 4
    assert settings.workers == 0 and args.workers == 3  # --workers is --train's here
    assert settings.epsilons == (0.0, 2.0)  # given epsilons win over --epsilon-test


def test_visualize_takes_one_attack_and_steps():
    args = parse("visualize", "--checkpoint", "x", "--steps", "5", "--attack", "apgd",
                 "--batch-size", "2")
    settings = attack_settings(args)
    assert (settings.attacks, settings.steps, settings.batch_size) == (("apgd",), 5, 2)
    for absent in (["--no-early-stop"], ["--steps-test", "3"], ["--workers", "1"]):
        with pytest.raises(SystemExit):
            parse("visualize", "--checkpoint", "x", *absent)


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps-test", "0"], "argument --steps-test/--steps_test: 0: must be an integer >= 1"),
    (["--queries", "x"], "argument --queries: 'x' is not an integer"),
    (["--epsilon-test", "300"], "argument --epsilon-test/--epsilon_test: 300.0: must be a "
     "finite number in [0, 255]; epsilons are in 1/255 units (8 means 8/255)"),
    (["--attack", "nope"], "argument --attack: invalid choice: 'nope'"),
    (["--workers", "999"], "argument --workers: 999: must be an integer in [0, 256]; 0 loads "
     "in the main process"),
])
def test_a_bad_flag_value_is_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse("test", "--checkpoint", "x", *argv)
    assert message in capsys.readouterr().err
