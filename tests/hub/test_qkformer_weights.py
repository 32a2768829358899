"""QKFormer's weights: the authors' main_finetune.py file through ``spikezoo convert`` and
``pretrained=True``, and the Baidu pages that ``pretrained=True`` names when nothing is cached."""

import json

import pytest
import timm

from spikezoo.cli import main
from spikezoo.weights import WeightsNotFoundError
from tests.hub.hub_helpers import assert_same_state, tiny_authors_file


def test_convert_install_then_pretrained_gives_the_files_tensors(weights_env, tmp_path, capsys):
    hub, _ = weights_env
    tiny = tiny_authors_file("qkformer")
    args = json.dumps(tiny.model_args())
    argv = ["convert", tiny.file, "--model", tiny.tag, "--out", tmp_path / "out"]
    code = main([str(a) for a in [*argv, "--model-args", args, "--install"]])
    assert code == 0, capsys.readouterr().err
    assert_same_state(tiny.create(), tiny.expected_state())
    assert hub.requests == []  # the installed copy came first


def test_pretrained_without_weights_names_the_baidu_page_its_password_and_convert(weights_env):
    tiny = tiny_authors_file("qkformer")
    with pytest.raises(WeightsNotFoundError) as info:
        timm.create_model("qkformer_10_768.in1k_384", pretrained=True, **tiny.args)
    message = str(info.value)
    assert "\n" not in message
    assert "https://pan.baidu.com/s/1gRAZR9gkMr5ScHK-kwZAnw (password abcd)" in message
    assert "'spikezoo convert FILE --model qkformer_10_768.in1k_384 --out DIR --install'" in (
        message
    )
