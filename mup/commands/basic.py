"""Commands that need nothing but the bot itself."""

from __future__ import annotations

from mup.commands import Command, Request, UsageError


def echo() -> Command:
    """``echo <text>``: replies with the text; also the latency probe of the benchmarks."""

    def run(request: Request) -> str:
        if not request.args:
            raise UsageError("")
        return request.args

    return Command("echo", "echo <text>", "Replies with the text (a test command).", run,
                   hidden=True)
