"""`wm <subcommand> --help` prints every field of the subcommand's config: draccus turns the fields' comments into
argparse help, where a stray `%` in a comment (say "63% of") crashes --help with a format error."""

import pytest

from worldmodel.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMANDS))
def test_every_subcommand_prints_its_help(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_bare_wm_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
