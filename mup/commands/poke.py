"""``poke <nick|name|phone>``: who someone is and how to reach them right now."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from mup.commands import Command, Request, UsageError
from mup.directory import Directory, DirectoryError
from mup.people import format_people, format_person

__all__ = ["NOBODY", "poke"]

NOBODY = "Cannot find anyone matching this. :-("


def poke(directory: Directory, clock: IReactorTime) -> Command:
    """The poke command over ``directory``; ``clock.seconds()`` gives "now" for local times."""

    async def run(request: Request) -> str:
        query = request.args.strip()
        if not query:
            raise UsageError("")
        try:
            people = await directory.search(query)
        except DirectoryError as e:
            return e.user_message
        if not people:
            return NOBODY
        if len(people) == 1:
            return format_person(people[0], clock.seconds())
        return format_people(people)

    return Command("poke", "poke <nick|name|phone>",
                   "Shows who someone is, their local time and how to reach them.", run)
