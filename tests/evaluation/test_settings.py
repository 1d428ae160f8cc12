"""AttackSettings: one checked value for every evaluation option, built once and passed down."""

import inspect

import pytest

import patchguard.evaluation.evaluator as evaluator
import patchguard.evaluation.report.html as html_report
import patchguard.evaluation.sanity as sanity
from patchguard.adversarial.settings import AttackSettings
from patchguard.adversarial.standard import Member
from patchguard.utils.checks import InputError


def test_keywords_build_the_same_value_as_the_fields():
    built = AttackSettings.build(epsilons=[0, 2], steps=3, attack="apgd", queries=50)
    assert built == AttackSettings(attacks=("apgd",), epsilons=(0.0, 2.0), steps=3, queries=50)
    assert built.attacks == ("apgd",) and built.epsilons == (0.0, 2.0)  # tuples, floats
    assert AttackSettings.build(built, steps=7).steps == 7
    assert built.steps == 3  # frozen: build returns a new value
    assert built.query_budget == 50 and AttackSettings().query_budget == 1000


@pytest.mark.parametrize(("field", "value", "named"), [
    ("steps", 0, "steps (--steps-test)"),
    ("epsilons", (0, 300), "epsilons (--epsilon-test)"),
    ("attacks", ("pgd", "nope"), "attacks (--attack)"),
    ("attacks", "pgd", "attacks (--attack)"),
    ("objective", "loss", "objective (--objective)"),
    ("batch_size", 0, "batch_size (--batch-size)"),
    ("queries", 0, "queries (--queries)"),
    ("early_stop", "no", "early_stop"),
    ("standard_members", ("apgd",), "standard_members"),
])
def test_a_bad_value_is_refused_with_its_name(field, value, named):
    with pytest.raises(InputError, match=named.replace("(", r"\(").replace(")", r"\)")):
        AttackSettings(**{field: value})


def test_an_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="stpes"):
        AttackSettings.build(stpes=3)


def test_members_only_go_to_standard():
    members = (Member("apgd", "score", steps=20),)
    settings = AttackSettings(standard_members=members, restarts=2)
    assert settings.budget("standard", None).members == members
    assert settings.budget("apgd", None).members is None
    assert settings.budget("apgd", None).restarts == 2


def test_no_evaluation_function_with_attack_options_takes_ten_or_more_parameters():
    for module in (evaluator, sanity, html_report):  # every function that takes attack options
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            named = [p for p in inspect.signature(function).parameters.values()
                     if p.kind is not p.VAR_KEYWORD]
            assert len(named) < 10, (name, len(named))


def test_the_options_page_lists_every_evaluation_option_with_its_flag():
    import dataclasses

    from patchguard.adversarial.settings import options_markdown

    table = options_markdown()
    for spec in dataclasses.fields(AttackSettings):
        if spec.name != "standard_members":  # the API's custom ensemble: not an option
            assert table.count(f"| `{spec.name}` |") == 1, spec.name
    for row in ("| `steps` | `--steps-test` | `10` |", "| `early_stop` | `--no-early-stop` |",
                "| `seed` | (API) | `0` |", "default: pgd)"):
        assert row in table
