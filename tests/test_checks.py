"""The shared argument checks: what each accepts, returns and refuses, with its message."""

import math

import pytest

from spikezoo import _checks


@pytest.mark.parametrize(
    "check, args, expected",
    [
        (_checks.positive_int, ("n", 3), 3),
        (_checks.positive_int, ("n", 0, 0), 0),
        (_checks.fraction, ("p", 1), 1.0),
        (_checks.positive_real, ("r", 2), 2.0),
        (_checks.real_number, ("x", -math.inf), -math.inf),
        (_checks.time_constant, ("tau", 2), 2.0),
        (_checks.boolean, ("flag", False), False),
        (_checks.optional_boolean, ("flag", None), None),
        (_checks.choice, ("mode", "avg", ("avg", "")), "avg"),
        (_checks.num_classes, (0,), 0),
    ],
)
def test_an_accepted_value_comes_back(check, args, expected):
    result = check(*args)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: _checks.positive_int("n", True),
            ValueError,
            "n must be an integer >= 1, got True",
        ),
        (lambda: _checks.positive_int("n", -1, 0), ValueError, "n must be an integer >= 0, got -1"),
        (lambda: _checks.fraction("p", 1.0, False), ValueError, r"p must be a number in \[0, 1\)"),
        (lambda: _checks.fraction("p", math.nan), ValueError, r"in \[0, 1\], got nan"),
        (lambda: _checks.positive_real("r", math.inf), ValueError, "r must be a positive number"),
        (lambda: _checks.real_number("x", "1"), TypeError, "x must be a real number, got str '1'"),
        (lambda: _checks.time_constant("tau", 1.0), ValueError, "tau must be > 1 and finite"),
        (lambda: _checks.time_constant("tau", None), TypeError, "tau must be a real number"),
        (lambda: _checks.boolean("flag", 1), TypeError, "flag must be True or False, got int 1"),
        (
            lambda: _checks.optional_boolean("flag", "yes"),
            TypeError,
            "flag must be True, False or None, got str 'yes'",
        ),
        (
            lambda: _checks.choice("mode", "max", ("avg", "")),
            ValueError,
            r"mode must be one of \['avg', ''\], got 'max'",
        ),
        (
            lambda: _checks.divides("heads", 3, "dim", 8),
            ValueError,
            r"dim \(8\) must be divisible by heads \(3\)",
        ),
        (lambda: _checks.num_classes(False), ValueError, "num_classes must be an integer >= 0"),
        (
            lambda: _checks.image_size(30, 32, 16, "Net"),
            ValueError,
            "Net needs H and W to be multiples of 16, got 30x32",
        ),
    ],
)
def test_a_refused_value_names_the_argument_and_what_came(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_long_value_is_cut_in_the_message():
    with pytest.raises(TypeError) as caught:
        _checks.boolean("flag", "x" * 500)
    assert len(str(caught.value)) < 120
