"""The headline epsilon per image size (2/255 from 224 px up, 8/255 below) and how the
paper-style class table shows both epsilons and marks that one."""

from __future__ import annotations

import pytest

from patchguard.evaluation.report.headline import headline_epsilon, headline_note, headline_of
from patchguard.evaluation.report.tables import class_table


@pytest.mark.parametrize("size, expected", [(32, 8.0), (112, 8.0), (223, 8.0), (224, 2.0),
                                            (256, 2.0), (1024, 2.0)])
def test_headline_epsilon_by_image_size(size, expected):
    assert headline_epsilon(size) == expected


def test_headline_of_needs_one_known_side():
    assert headline_of([None, 112, 64]) == 8.0
    assert headline_of([224, 256]) == 2.0
    assert headline_of([112, 224]) is None  # both sides of the line: no single headline
    assert headline_of([None]) is None


def _row(attack, eps, image, pixel, size=None):
    return {"attack": attack, "epsilon": eps, "image_auroc": image, "pixel_auroc": pixel,
            "steps": 0 if attack == "clean" else 10, "test_image_size": size}


def _table(text):
    """The Markdown table's lines as lists of cells."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line]


def _results(size):
    return {
        "a": [_row("clean", 0, 0.9, 0.8, size), _row("pgd", 2, 0.6, 0.7, size),
              _row("pgd", 8, 0.2, 0.3, size)],
        "b": [_row("clean", 0, 0.7, 0.6, size), _row("pgd", 2, 0.4, 0.5, size),
              _row("pgd", 8, 0.0, 0.1, size)],
    }


def test_high_resolution_table_shows_both_and_marks_2():
    text = class_table(_results(224))
    header, a, b, mean = _table(text)
    assert header == ["class", "clean image", "attacked image 2/255 (headline)",
                      "attacked image 8/255", "clean pixel", "attacked pixel 2/255 (headline)",
                      "attacked pixel 8/255"]
    assert a[1:] == ["0.9000", "0.6000", "0.2000", "0.8000", "0.7000", "0.3000"]
    # the mean row: each column's plain average of the two classes
    expected = [(x + y) / 2 for x, y in zip([0.9, 0.6, 0.2, 0.8, 0.7, 0.3],
                                            [0.7, 0.4, 0.0, 0.6, 0.5, 0.1])]
    assert [float(v) for v in mean[1:]] == pytest.approx(expected)
    assert "Headline epsilon: 2/255 (224-px test images" in text
    assert "Not evaluated" not in text


def test_low_resolution_table_marks_8():
    header = _table(class_table(_results(112)))[0]
    assert "attacked image 8/255 (headline)" in header
    assert "attacked image 2/255" in header
    assert sum("(headline)" in h for h in header) == 2  # image and pixel, 8/255 only


def test_a_missing_reported_epsilon_is_named():
    results = {"a": [r for r in _results(224)["a"] if r["epsilon"] != 2]}
    text = class_table(results)
    assert "Not evaluated: 2/255 (add it to --epsilon-test" in text
    assert _table(text)[0][2] == "attacked image 8/255"  # present, not the headline


def test_mixed_sizes_mark_no_column():
    results = {**_results(112), "c": _results(224)["a"]}
    text = class_table(results)
    assert "(headline)" not in _table(text)[0]
    assert "112, 224 px, on both sides" in text


def test_note_without_sizes_states_the_rule():
    note = headline_note([None], [8.0])
    assert "2/255 for 224 px and up, 8/255 for lower resolution" in note
    assert "Not evaluated: 2/255" in note
