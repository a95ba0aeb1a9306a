"""The learning-curve plot: its y-axis follows the curve, not the first loss, and it marks the published step."""

from __future__ import annotations

import matplotlib
import pytest

from promptray.platform.train.metrics import draw_learning_curve, loss_axis_limits, plot_learning_curve

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# a typical run: the first logged loss (before the prompt has learned anything) is ~10x the rest
RECORDS = [{"step": 5, "loss": 9.0}, {"step": 10, "loss": 1.2, "val_loss": 1.1}, {"step": 15, "loss": 0.8},
           {"step": 20, "loss": 0.6, "val_loss": 0.7}, {"step": 25, "loss": 0.5},
           {"step": 30, "loss": 0.5, "val_loss": 0.75}]


def test_axis_limits_leave_out_the_first_training_loss():
    low, high = loss_axis_limits([9.0, 1.2, 0.8, 0.6, 0.5, 0.5], [1.1, 0.7, 0.75])
    span = 1.2 - 0.5
    assert low == pytest.approx(0.5 - 0.08 * span) and high == pytest.approx(1.2 + 0.08 * span)
    assert loss_axis_limits([2.0], []) == pytest.approx((2.0 - 0.16, 2.0 + 0.16))  # one point: padded around it
    assert loss_axis_limits([3.0, 1.0], [4.0]) == pytest.approx((1.0 - 0.24, 4.0 + 0.24))  # a higher val_loss shows
    assert loss_axis_limits([], []) is None


def test_the_curve_marks_the_published_step_and_is_not_squashed():
    fig, ax = plt.subplots()
    try:
        assert draw_learning_curve(ax, RECORDS, published_step=20, title="demo")
        bottom, top = ax.get_ylim()
        assert top < 1.5 and bottom < 0.5  # 9.0 is off the scale, labelled instead
        assert any("first loss 9.00" in t.get_text() for t in ax.texts)
        marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [20, 20]]
        assert len(marks) == 1 and marks[0].get_label() == "published prompts (step 20)"
        assert "published prompts (step 20)" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)


def test_plot_file_and_nothing_to_plot(tmp_path):
    out = plot_learning_curve(RECORDS, tmp_path / "curve.png", title="demo", published_step=20)
    assert out == tmp_path / "curve.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_learning_curve([{"step": 1, "lr": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
