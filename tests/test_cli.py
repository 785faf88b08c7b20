"""The command line's usage errors: one line that names the flag, exit status 2, no usage block."""

from __future__ import annotations

import pytest

from action_images import claims, cli, report, train
from action_images.jobs import imagine


@pytest.mark.parametrize("argv, names", [
    (["eval", "--episodes", "abc"], "--episodes"),
    (["evl"], "'evl'"),
    (["train"], "--out"),
    (["collect", "--out", "x", "--episodes", "1.5"], "--episodes"),
    (["serve", "--checkpoint", "c", "--port", "http"], "--port"),
    (["bench", "policy", "--threads", "x"], "action-images bench policy: argument --threads"),
    (["eval", "--out", "x", "--no-such-flag"], "action-images eval: unrecognized arguments: --no-such-flag"),
])
def test_a_usage_error_is_one_line_naming_the_flag(argv, names, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and names in err and "usage:" not in err
    assert err.startswith("action-images") and "--help" in err


@pytest.mark.parametrize("main, argv", [(claims.main, ["tabel"]), (imagine.main, ["--episode", "x"]),
                                        (report.main, ["strip"]), (train.main, ["--out", "x", "--bogus"])])
def test_module_entry_points_report_usage_errors_the_same_way(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "usage:" not in err


def test_help_still_prints_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    assert e.value.code == 0 and "--episodes" in capsys.readouterr().out
