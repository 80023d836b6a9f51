"""``ajpq inspect`` and ``ajpq envs`` as a user runs them: the layer table, and bad options as usage errors."""

from __future__ import annotations

import json

import pytest

from ajpq_env import cli
from ajpq_env.compression import CompressionGraph, CostModel
from ajpq_env.models import build_model


def test_inspect_json_matches_the_engine(capsys):
    assert cli.main(["inspect", "--model", "mobilenet_v2", "--width-mult", "0.5", "--input", "1x28x28", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    import torch

    graph = CompressionGraph(build_model("mobilenet_v2", width_mult=0.5, in_channels=1).eval(), torch.zeros(1, 1, 28, 28))
    assert len(data["layers"]) == len(graph.layers) and data["groups"] == len(graph.groups)
    assert data["totals"] == CostModel(graph).fp32.to_dict()


def test_inspect_table_and_envs_print(capsys):
    assert cli.main(["inspect", "--model", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "compressible layers" in out and "coupling groups" in out
    assert cli.main(["envs"]) == 0
    assert "AJPQ-MobileNet-v0" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--width-mult", "0"], "--width-mult: expected a number in (0, 4]"),
        (["--width-mult", "nan"], "--width-mult: expected a number in (0, 4]"),
        (["--num-classes", "-3"], "--num-classes: expected an integer in 1..10000"),
        (["--num-classes", "20000"], "--num-classes: expected an integer in 1..10000"),
        (["--input", "3x0x32"], "--input: expected C in 1..16 and H, W in 1..1024"),
        (["--input", "3x99999x99999"], "--input: expected C in 1..16 and H, W in 1..1024"),
        (["--input", "32x32x32"], "--input: expected C in 1..16 and H, W in 1..1024"),
        (["--model", "resnet20", "--width-mult", "0.5"], "--width-mult does not apply to resnet20"),
        (["--model", "skynet", "--num-classes", "3"], "--num-classes does not apply to skynet"),
        (["--model", "resnet20", "--input", "1x32x32"], "cannot trace resnet20 on a 1x32x32 input"),
        (["--model", "skynet", "--input", "1x160x320"], "cannot trace skynet on a 1x160x320 input"),
    ],
    ids=["width-zero", "width-nan", "classes", "classes-large", "input-zero", "input-huge", "input-channels",
         "width-resnet", "classes-skynet", "channels-resnet", "channels-skynet"],
)
def test_inspect_bad_options_are_usage_errors(options, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["inspect", *options])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err
