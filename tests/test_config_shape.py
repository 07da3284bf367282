"""A config file of the wrong shape is one error naming the file: an empty file, a list where the
settings' mapping belongs, ``trainer:`` written as a list of settings."""

from __future__ import annotations

import pytest

from intrada_pl.errors import ConfigValueError
from intrada_pl.runs import check_config_shape


@pytest.mark.parametrize("data,expected", [
    (None, "--config fit.yaml is empty"),
    ("fit", "--config fit.yaml must be a mapping of settings (trainer:, model:, data:, ...), got a str"),
    ([{"trainer": {}}], "--config fit.yaml must be a mapping of settings (trainer:, model:, data:, ...), got a list"),
    ({"trainer": [{"max_steps": 4}]}, "--config fit.yaml: trainer must be a mapping of Trainer settings, got a list"),
    ({"trainer": "cpu"}, "--config fit.yaml: trainer must be a mapping of Trainer settings, got a str"),
])
def test_a_config_of_the_wrong_shape_is_one_error(data, expected):
    with pytest.raises(ConfigValueError) as error:
        check_config_shape("fit.yaml", data)
    assert str(error.value) == expected


@pytest.mark.parametrize("data", [{"trainer": {"max_steps": 4}}, {"trainer": None, "model": "X"}, {"seed_everything": 0}])
def test_a_config_of_the_right_shape_passes(data):
    check_config_shape("fit.yaml", data)
