"""`fovea chat`: talk to a model about images, interactively or in one shot.

The interaction follows the MLCD-Embodied CLI: a hint line, image paths asked (comma-separated)
whenever the history is empty, ``User:`` turns, ``exit`` and ``reset``. Differences users asked
for: images given without ``<image>`` tags are placed automatically, a wrong tag count is a
message (the turn is dropped, the session goes on), and answers stream as they are generated.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

HINT = "Enter 'exit' to end the conversation, 'reset' to clear the chat history."
DEMO_CHECKPOINT = Path("runs/demo/train/stage-1-finetune/final")


def split_images(line: str) -> list[str]:
    return [part.strip() for part in line.split(",") if part.strip()]


def repl(
    model, images: list[str], options: dict, ask: Callable[[str], str] = input, out=None, videos: list = ()
) -> None:
    """The interactive loop; `ask` reads a line (input() by default), `out` receives the text
    (default: sys.stdout as it is at the call, not at import). Turns reuse the KV cache of the
    conversation so far (see `ChatSession`). `videos` stay through every reset."""
    out = out or sys.stdout
    from ..errors import FoveaError
    from .session import ChatSession

    template = options.pop("template", "default")
    note = model.template_note(template)
    if note:
        print(note, file=out)
    print(HINT, file=out)
    session = ChatSession(model, images, template, videos)
    ask_images = not images and not videos  # at the start (unless given) and after every reset
    while True:
        try:
            if ask_images:
                paths = _read(ask, "Enter image file paths (comma-separated): ")
                if paths is not None:
                    session.reset(split_images(paths), session.videos)
                    ask_images = False
            text = None if ask_images else _read(ask, "User: ")  # still asking: input ended
        except FoveaError as err:  # a line that is not text: say so, ask again
            print(f"error: {err}", file=out)
            continue
        if text is None:  # end of input
            print("", file=out)
            return
        if text.strip().lower() == "exit":
            print("Exiting the conversation.", file=out)
            return
        if text.strip().lower() == "reset":
            ask_images = True
            print("Conversation history reset.", file=out)
            continue
        try:
            _print_stream("Assistant: ", session.ask(text, **options), out)
        except FoveaError as err:
            print(f"error: {err}", file=out)


def _read(ask: Callable[[str], str], prompt: str) -> str | None:
    """A line from the user, None at end of input; a ConfigError for bytes that are not UTF-8."""
    from ..errors import ConfigError

    try:
        text = ask(prompt)
        text.encode("utf-8")  # a POSIX-locale stdin hands bad bytes over as lone surrogates
    except EOFError:
        return None
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise ConfigError("that line is not UTF-8 text; type it again") from None
    return text


def _print_stream(prefix: str, pieces: Iterable[str], out) -> str:
    print(prefix, end="", file=out, flush=True)
    parts = []
    for piece in pieces:
        if not parts:
            piece = piece.lstrip()  # as model.chat's answers: no leading space
        parts.append(piece)
        print(piece, end="", file=out, flush=True)
    print("", file=out)
    return "".join(parts).strip()


def one_shot(
    model, prompt: str, images: list[str], options: dict, out=None, err=None, videos: list = ()
) -> None:
    """One answer on `out`; the inferred template's note, if any, first on `err` (stdout stays
    the answer alone, for scripts)."""
    out, err = out or sys.stdout, err or sys.stderr
    from .session import ChatSession

    template = options.pop("template", "default")
    note = model.template_note(template)
    if note:
        print(note, file=err)
    session = ChatSession(model, images, template, videos)
    _print_stream("", session.ask(prompt, **options), out)
