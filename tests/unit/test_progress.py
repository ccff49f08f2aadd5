"""Unit tests of the progress lines (components.common.progress): their format and their rate limit, on a fake clock."""
import pytest

from components.common import progress


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def make(total=1000, **kw):
    clock, out = Clock(), []
    p = progress.Progress("download", total, "URLs", clock=clock, write=out.append, **kw)
    return p, clock, out


def test_a_line_says_what_how_many_of_how_many_and_parses_back():
    line = progress.Line("train", 94, 400, "batches, epoch 3/10")
    assert str(line) == "progress: train 94/400 batches, epoch 3/10"
    assert progress.parse(str(line) + "\n") == line
    assert progress.parse("progress: convert 3/7") == progress.Line("convert", 3, 7, "")
    for other in ("Epoch 1/2", "train: progress: x 1/2", "progress: two words 1/2", "progress: x 1 of 2", ""):
        assert progress.parse(other) is None, other


def test_the_first_line_at_once_then_at_most_every_half_second():
    p, clock, out = make()
    assert out == ["progress: download 0/1000 URLs"]
    for _ in range(100):  # 10% of the work in no time: no line
        p.update()
    assert len(out) == 1
    clock.now += 0.5
    p.update()
    assert out[-1] == "progress: download 101/1000 URLs"
    clock.now += 0.2
    p.update(50)
    assert len(out) == 2  # too soon


def test_at_most_a_line_per_percent_however_slow_the_work():
    p, clock, out = make()
    for _ in range(9):
        clock.now += 10.0
        p.update()  # 9 of 1000 done, minutes apart: under 1% since the last line
    assert len(out) == 1
    clock.now += 10.0
    p.update()
    assert out[-1] == "progress: download 10/1000 URLs"


def test_a_bar_is_at_most_about_a_hundred_lines():
    p, clock, out = make(total=100_000)
    for _ in range(100_000):
        clock.now += 0.01
        p.update()
    p.close()
    assert 50 <= len(out) <= 102
    assert out[-1] == "progress: download 100000/100000 URLs"


def test_close_prints_the_last_line_once_and_nothing_after():
    p, clock, out = make()
    p.update(7)
    p.close()
    assert out[-1] == "progress: download 7/1000 URLs"
    n = len(out)
    p.close()
    clock.now += 5
    p.update(500)
    assert len(out) == n
    q, _, out = make()
    q.close()
    assert out == ["progress: download 0/1000 URLs"]  # nothing moved: no second line


def test_done_past_the_total_is_shown_as_the_total_and_the_unit_can_change():
    p, clock, out = make(total=10, min_share=0.0)
    clock.now += 1
    p.set(12, unit="URLs, retrying 3")
    assert out[-1] == "progress: download 10/10 URLs, retrying 3"


def test_what_is_one_word():
    with pytest.raises(ValueError, match="one word"):
        progress.Progress("two words", 3, write=lambda line: None)


def test_the_default_writer_prints_a_flushed_line_on_stdout(capsys):
    progress.Progress("evaluate", 4, "test batches").close()
    assert capsys.readouterr().out == "progress: evaluate 0/4 test batches\n"
