"""cli.progress: a bar on a terminal only (with the ETA when the total is known), a silent passthrough otherwise."""

from __future__ import annotations

import io

from cli.progress import Silent, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_gets_a_silent_passthrough() -> None:
    out = io.StringIO()
    bar = progress(range(3), desc="x", file=out)
    assert isinstance(bar, Silent) and list(bar) == [0, 1, 2] and bar.n == 3
    by_hand = progress(total=5, initial=2, file=out)
    by_hand.update()
    by_hand.set_postfix_str("scheme")
    by_hand.close()
    assert by_hand.n == 3 and out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_eta() -> None:
    out = Terminal()
    assert list(progress(range(4), desc="runs", file=out)) == [0, 1, 2, 3]
    text = out.getvalue()
    assert "runs" in text and "4/4" in text and "<00:00" in text  # elapsed<remaining: the ETA field


def test_disabled_or_forced() -> None:
    assert isinstance(progress(range(2), file=Terminal(), enabled=False), Silent)
    out = io.StringIO()
    bar = progress(total=2, file=out, force=True)
    bar.update(2)
    bar.close()
    assert "2/2" in out.getvalue()
