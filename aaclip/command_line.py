"""Running a typer app so that a usage mistake reads like every other refusal: one line, exit code 2.

Typer's own handling prints a framed box over several lines for an unknown option, a missing argument or a
value of the wrong type. Both CLIs (`aaclip`, `aaclip-study`) run through `invoke` instead.
"""
from __future__ import annotations

import sys

import typer


def invoke(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run `app` on `argv` (default sys.argv[1:]); always exits, with the command's code (as typer would)."""
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:  # Ctrl-C outside a command's own handling
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as error:  # click's usage and parameter errors, as vendored by typer
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and context is not None:
            print(context.get_help())
            sys.exit(2)
        where = f"{context.command_path}: " if context is not None else ""
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        message = " ".join(error.format_message().split())
        print(f"error: {where}{message}{hint}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
