"""bench.py's captioning section on the tiny run (timings are not asserted: only that they are measured and reported)."""

import shutil

import bench


def test_captioning_section_times_runs_side_by_side(tiny_run, tiny_demo, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run[0], other)
    photos = sorted((tiny_demo / "val2014").iterdir())[:2]
    result = bench.bench_captioning([tiny_run[0], other], photos, rounds=1)
    assert result["photos"] == 2 and list(result["runs"]) == [str(tiny_run[0]), str(other)]
    for run in result["runs"].values():
        assert (run["arch"], run["decoding"]) == ("attention", "beam")
        assert all(run[key] > 0 for key in ("model_single_ms", "model_batch64_ms_per_image", "photo_single_ms",
                                            "photo_batch64_ms_per_image"))
    report = bench.format_report({"captioning": result})
    assert report.count("as fast as out") == 4  # one ratio per measure, against the first run


def test_decoding_section_measures_each_way_and_they_agree():
    result = bench.bench_decoding(photos=2, beams=2, rounds=1, steps=3)
    assert min(result[f"{name}_ms_per_photo"] for name in ("prefix", "cached", "grid", "cached_192", "grid_192")) > 0
    # the same model read three ways (at 192 px two)
    assert max(result["cached_max_difference"], result["grid_max_difference"], result["grid_max_difference_192"]) < 1e-4
    report = bench.format_report({"decoding": result})
    assert "keys and values kept" in report and "the grid's kept too" in report
