"""The ``zoo`` command's list / info subcommands and their errors."""

from __future__ import annotations

import json

from zoo.cli import main


def test_list_pattern(capsys) -> None:
    assert main(["list", "efficientvit_m[01]"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["efficientvit_m0", "efficientvit_m1"]


def test_list_no_match(capsys) -> None:
    assert main(["list", "nothing*"]) == 1
    assert "no model matches" in capsys.readouterr().err


def test_info_json(capsys) -> None:
    assert main(["info", "efficientvit_m0", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 2_349_436 and 78e6 < info["macs"] < 80e6


def test_info_unknown_model_suggests(capsys) -> None:
    assert main(["info", "efficientvit_mo"]) == 2
    assert "efficientvit_m0" in capsys.readouterr().err
