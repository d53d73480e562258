"""`fovea chat` driven as a user drives it: piped stdin, images, two turns, reset, exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fovea.tiny import tiny_vlm

EXAMPLES = Path(__file__).parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_vlm().save_pretrained(tmp_path_factory.mktemp("chat") / "model")


def _chat(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "fovea.cli", "chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_repl_turns_reset_and_exit(checkpoint):
    images = f"{EXAMPLES / 'shapes.png'},{EXAMPLES / 'bar_chart.png'}"
    session = (
        "\n".join([images, "Compare the two pictures.", "And now?", "reset", "", "<image> one tag", "exit"])
        + "\n"
    )
    proc = _chat(["--model", str(checkpoint), "--temperature", "0", "--max-new-tokens", "5"], session)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert out.startswith("Enter 'exit' to end the conversation, 'reset' to clear the chat history.")
    assert out.count("Assistant: ") == 2 and "Conversation history reset." in out
    assert out.count("Enter image file paths (comma-separated): ") == 2
    assert "error: the conversation has 1 <image> tags but 0 images were given" in out
    assert out.rstrip().endswith("Exiting the conversation.")


def test_one_shot_reads_stdin_and_matches_the_api(checkpoint):
    import fovea

    image = EXAMPLES / "shapes.png"
    proc = _chat(
        [
            "--model",
            str(checkpoint),
            "--image",
            str(image),
            "--prompt",
            "-",
            "--temperature",
            "0",
            "--max-new-tokens",
            "6",
        ],
        "What is this?",
    )
    assert proc.returncode == 0, proc.stderr
    model = fovea.load(checkpoint)
    expected = model.chat([{"role": "user", "content": "What is this?"}], [image], max_new_tokens=6)
    assert proc.stdout.strip() == expected


def test_one_shot_stdin_that_is_not_utf8_is_one_line(checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "fovea.cli", "chat", "--model", str(checkpoint), "--prompt", "-"],
        input=b"caf\xe9?",
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err
    assert err.splitlines() == ["fovea: error: --prompt -: stdin is not UTF-8 text (byte 0xe9 at offset 3)"]


def test_repl_survives_bytes_that_are_not_utf8_and_an_early_end(checkpoint):
    cmd = [sys.executable, "-m", "fovea.cli", "chat", "--model", str(checkpoint), "--max-new-tokens", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for stdin in (b"caf\xe9\n\ncaf\xe9?\nexit\n", b""):  # bad image line, bad turn; input ends at once
        proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120)
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert out.count("error: that line is not UTF-8 text") == (2 if stdin else 0)


def test_no_model_gives_a_hint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fovea.cli", "chat", "--prompt", "hi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "run `fovea demo` or pass --model DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_session_keeps_the_cache_between_turns():
    """Each turn prefills only what is new, and answers equal model.chat on the full history."""
    from PIL import Image

    from fovea.infer.session import ChatSession

    model = tiny_vlm()
    image = Image.open(EXAMPLES / "shapes.png")
    session, history = ChatSession(model, [image]), []
    for question in ["What is it?", "And its colour?", "Anything else?"]:
        answer = "".join(session.ask(question, max_new_tokens=6)).strip()
        history.append({"role": "user", "content": question})
        assert answer == model.chat(history, [image], max_new_tokens=6)
        history.append({"role": "assistant", "content": answer})
    first, *later = session.prefilled
    assert all(n < first for n in later)  # the image and the earlier turns were not re-encoded
    assert len(session.messages) == 6


def test_one_shot_with_a_video_matches_the_api(checkpoint, tmp_path):
    """`fovea chat --video clip.mp4 --prompt ...`: the frames the model's sampling picks, pooled,
    the same answer as `model.chat(..., videos=[path])`; a missing video is one line, exit 2."""
    import fovea
    from test_video import make_video

    video = tmp_path / "clip.mp4"
    video.write_bytes(make_video())
    flags = ["--model", str(checkpoint), "--temperature", "0", "--max-new-tokens", "6"]
    proc = _chat([*flags, "--video", str(video), "--prompt", "What happens?"], "")
    assert proc.returncode == 0, proc.stderr
    model = fovea.load(checkpoint)
    expected = model.chat([{"role": "user", "content": "What happens?"}], videos=[video], max_new_tokens=6)
    assert proc.stdout.strip() == expected
    missing = _chat([*flags, "--video", str(tmp_path / "nope.mp4"), "--prompt", "Hm?"], "")
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == f"fovea: error: --video {tmp_path / 'nope.mp4'}: no such video file"
    )
