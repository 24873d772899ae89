"""results.json numbers, the markdown table, the chart and the videos."""

import numpy as np
import pytest

from octo_like.eval.report import markdown_table, plot_success_rates, summarize, wilson_interval, write_video
from octo_like.eval.rollout import EpisodeResult


@pytest.mark.parametrize(
    "successes, trials, expected",
    [
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (5, 10, (0.2366, 0.7634)),
        (18, 20, (0.6990, 0.9721)),
    ],
)
def test_wilson_interval_matches_published_values(successes, trials, expected):
    np.testing.assert_allclose(wilson_interval(successes, trials), expected, atol=1e-4)


def episodes():
    results = [EpisodeResult("reach-v3", i, i, "reach", success=i < 3, length=10 * (i + 1)) for i in range(4)]
    return results + [EpisodeResult("push-v3", i, i, "push", success=False, length=500) for i in range(2)]


def test_summary_has_the_results_json_structure():
    results = summarize(episodes())
    assert results["tasks"]["reach-v3"] == {
        "success_rate": 0.75,
        "episodes": 4,
        "mean_length": 25.0,
        "ci95": list(wilson_interval(3, 4)),
    }
    assert results["tasks"]["push-v3"]["success_rate"] == 0.0
    assert results["mean_success_rate"] == pytest.approx(0.375)
    table = markdown_table(results).splitlines()
    assert table[2] == "| reach-v3 | 0.75 | [0.30, 0.95] | 4 | 25.0 |"
    assert table[-1] == "| **mean** | **0.38** | | | |"


def test_bounds_are_exact_at_all_and_no_successes():
    for trials in range(1, 60):
        assert wilson_interval(trials, trials)[1] == 1.0 and wilson_interval(0, trials)[0] == 0.0


def test_chart_and_video_are_written_whole(tmp_path):
    import imageio.v2 as imageio

    all_succeed = [EpisodeResult("drawer-open-v3", i, i, "open", success=True, length=10) for i in range(10)]
    plot_success_rates(summarize(episodes() + all_succeed), str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = [np.full((32, 48, 3), 8 * i, np.uint8) for i in range(12)]
    write_video(str(tmp_path / "videos" / "episode.mp4"), frames, fps=10)
    with imageio.get_reader(str(tmp_path / "videos" / "episode.mp4")) as reader:
        assert reader.count_frames() == 12
        frame = reader.get_data(5)
    assert frame.shape == (32, 48, 3)
    assert abs(int(frame.mean()) - 40) <= 3  # H.264 is lossy, but a flat grey stays grey
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["chart.png", "episode.mp4", "videos"]  # no temp files left
