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


def test_eval_and_serve_read_the_policy_flags_alike():
    """``serve`` takes ``eval``'s policy flags (one definition): the same names, defaults, choices and parsed values."""
    import argparse

    from action_images import evaluate, serve

    def policy_actions(add) -> dict:
        p = argparse.ArgumentParser()
        add(p)
        return {a.option_strings[0]: (a.dest, a.default, a.choices, a.type) for a in p._actions
                if a.option_strings and a.option_strings[0] in FLAGS}

    FLAGS = ("--cfg-scale", "--horizon", "--execute-k", "--on-disagree", "--disagree-px", "--gripper",
             "--max-resamples", "--method", "--ensemble", "--orientation", "--zoom", "--noise", "--position")
    ours, theirs = policy_actions(evaluate.add_arguments), policy_actions(serve.add_arguments)
    assert set(ours) == set(FLAGS) and ours == theirs
