"""Issue 8: every option of every command, given random and boundary values, ends in one line
on stderr and a non-zero exit status: never a traceback.

Each command gets required arguments that point under a regular file (nothing there can exist
or be created) and a model that cannot be imported, so a value that passes validation still
fails at once, with the command's own one-line error, and nothing is written anywhere.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import random

import pytest
import torch

from netdissect.cli import commands as cli

BOUNDARY = ["0", "-1", "1", "2", "-0", "9223372036854775808", "1e309", "nan", "inf", "-inf", "0.5",
            "1.0", "-0.5", "", "x", "--", "1,2", "\u00e9\u00e8", "../../../etc"]


def leaf_commands(parser: argparse.ArgumentParser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_commands(sub, path + (name,))
    if not subs and path:
        yield path, parser


def base_arguments(path, parser, bad: str):
    """Required arguments, each a path under a regular file or an unimportable model."""
    args = []
    for action in parser._actions:
        if action.dest == "help" or not (action.required or not action.option_strings):
            continue
        if action.dest == "model":
            value = ["no_such_module_for_fuzzing:factory"]
        elif action.dest in ("layers", "layer"):
            value = ["features.0"]
        elif action.dest == "size":
            value = ["64"]
        else:
            value = [bad]
        if action.option_strings:
            args += [action.option_strings[0]] + value
        else:
            args += value
    if path == ("ablate",):
        args += ["--top", "1"]
    if path == ("demo",):
        args += ["--data", bad, "--out", bad]  # never the defaults under the working directory
    return args


def values_for(action: argparse.Action, rng: random.Random):
    """Argument lists to try for one option: boundaries, randoms, and what its choices allow."""
    if action.nargs == 0:
        return [[]]
    count = action.nargs if isinstance(action.nargs, int) else 1
    pool = list(BOUNDARY)
    pool += [str(rng.randint(-10 ** 12, 10 ** 12)), repr(rng.uniform(-1e6, 1e6)), repr(rng.random()),
             "".join(rng.choice("abc:/._-%$ 0") for _ in range(rng.randint(1, 12)))]
    if action.choices:
        pool += [str(c) for c in action.choices]
    tries = [[v] * count for v in rng.sample(pool, 7)]
    tries.append([rng.choice(pool) for _ in range(count)])
    if action.nargs in ("+", "*"):
        tries.append([rng.choice(pool) for _ in range(3)])
    return tries


def run(argv):
    err, out = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        torch.set_num_threads(threads)  # --threads would change this process's setting
    return code, err.getvalue()


COMMANDS = sorted(" ".join(path) for path, _ in leaf_commands(cli.build_parser()))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_fails_in_one_line(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path that is tried lands here, and is noticed
    blocker = tmp_path / "a-file"
    blocker.write_text("nothing can be created under a regular file")
    bad = str(blocker / "x")
    parser = dict((" ".join(p), sp) for p, sp in leaf_commands(cli.build_parser()))[command]
    path = tuple(command.split())
    base = list(path) + base_arguments(path, parser, bad)
    rng = random.Random(f"fuzz {command}")
    tried = 0
    for action in parser._actions:
        if not action.option_strings or action.required or action.dest in ("help", "version"):
            continue
        for values in values_for(action, rng):
            argv = base + [rng.choice(action.option_strings)] + values
            code, err = run(argv)
            tried += 1
            lines = [line for line in err.splitlines() if line.strip()]
            assert code not in (0, None), f"exit 0 for {argv}"
            assert "Traceback" not in err, f"traceback for {argv}:\n{err}"
            assert len(lines) == 1, f"{len(lines)} lines for {argv}:\n{err}"
    assert list(tmp_path.iterdir()) == [blocker], "nothing was written"
    assert tried > 0 or command in ("data merge",)
