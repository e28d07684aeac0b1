"""The commands README.md and `--help` show exist as written: every subcommand and option (no model runs)."""

import re
import shlex

import click
import pytest
from click.testing import CliRunner

from featx.cli import RAY_WORKERS_DEFAULT, WORKERS_DEFAULT, cli

from conftest import REPO

HELP_NAMES = ("-h", "--help")


def featx_commands(text: str) -> list[str]:
    """Each ``featx ...`` command in ``text``: shell continuations joined, comments, prompts and pipes cut off."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        line = re.sub(r"\s+#.*$", "", line)
        for part in re.split(r"&&|\|\||;|\|", line):
            part = part.strip()
            part = re.sub(r"^(do|then)\s+", "", part)
            if part.startswith("featx ") or part == "featx":
                found.append(part)
    return found


def fenced_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M)


def check_command(line: str) -> None:
    """Walk ``featx ...`` down the click tree: each subcommand and option must exist."""
    tokens = shlex.split(line.replace("[", " ").replace("]", " "), comments=False)[1:]
    cmd, seen = cli, ["featx"]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and tok != "-" and not re.fullmatch(r"-\d[\d.e-]*", tok):
            name = tok.split("=", 1)[0]
            if name in HELP_NAMES:
                i += 1
                continue
            opts = {o: p for p in cmd.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
            assert name in opts, f"{' '.join(seen)} has no option {name} (in: {line})"
            opt = opts[name]
            if "=" not in tok and not (opt.is_flag or opt.count):
                i += 1  # its value
        elif isinstance(cmd, click.Group) and (tok.isupper() or tok == "..."):
            pass  # a synopsis placeholder: featx [OPTIONS] COMMAND ...
        elif isinstance(cmd, click.Group):
            sub = cmd.commands.get(tok)
            assert sub is not None, f"{' '.join(seen)} has no command {tok} (in: {line})"
            cmd = sub
            seen.append(tok)
        i += 1


def help_examples() -> list[str]:
    out = []
    for name, cmd in [("featx", cli), *cli.commands.items(), *((f"cache {n}", c) for n, c in cli.commands["cache"].commands.items())]:
        out += featx_commands(cmd.help or "")
    return out


def test_readme_commands_exist_in_the_click_tree():
    readme = (REPO / "README.md").read_text()
    commands = [c for block in fenced_blocks(readme) for c in featx_commands(block)]
    assert len(commands) >= 10
    for line in commands:
        check_command(line)


@pytest.mark.parametrize("name", ["docs/cli.md", "docs/ray.md", "docs/arrays.md", "docs/selection.md",
                                  "docs/development.md", "examples/cli_workflow.sh"])
def test_docs_and_example_commands_exist_in_the_click_tree(name):
    text = (REPO / name).read_text()
    commands = featx_commands(text) if name.endswith(".sh") else [
        c for block in fenced_blocks(text) for c in featx_commands(block)]
    for line in commands:
        check_command(line)


def test_help_examples_exist_in_the_click_tree():
    examples = help_examples()
    assert len(examples) >= 20
    for line in examples:
        check_command(line)


def test_the_checker_catches_a_wrong_command_or_option():
    for wrong in ("featx fit-heads", "featx extract --backbones vgg16 data/", "featx cache ls"):
        with pytest.raises(AssertionError):
            check_command(wrong)
    check_command("featx --cache-dir /tmp/c extract -b vgg16 --weights none --image-size=32 data/")


def test_featx_help_lists_every_command():
    """The quick start at the top of `featx --help` left out inspect (and others)."""
    text = CliRunner().invoke(cli, ["--help"]).output
    intro = text.split("Options:")[0]
    for name in cli.commands:
        assert f"featx {name}" in intro, name


def test_workers_help_and_readme_agree():
    text = CliRunner().invoke(cli, ["extract", "--help"], terminal_width=1000).output
    flat = " ".join(text.split())
    assert WORKERS_DEFAULT in flat and RAY_WORKERS_DEFAULT in flat
    readme = " ".join((REPO / "README.md").read_text().split())
    docs = " ".join((REPO / "docs" / "cli.md").read_text().split())
    assert WORKERS_DEFAULT in docs and RAY_WORKERS_DEFAULT in docs
    assert "--workers" not in readme or WORKERS_DEFAULT in readme


def test_readme_names_every_extra_and_all_holds_each():
    """An extra added to pyproject.toml is named in README's install section, and `[all]` (what .ci/run
    installs) holds every requirement of every other extra."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = (REPO / "README.md").read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    everything = set(extras.pop("all"))
    for name, requirements in extras.items():
        assert f"`{name}`" in install, f"README's install section does not name the extra {name!r}"
        assert set(requirements) <= everything, f"[all] lacks some of [{name}]: {set(requirements) - everything}"
