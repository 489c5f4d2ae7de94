"""diffaccel.bench's harness, which every script in benchmarks/ and the demo use: one timer (the
median, stated by ``statistic``) and one table formatter (text and markdown)."""
import itertools

from diffaccel import bench


def test_timed_returns_the_result_and_the_median_of_the_timed_runs(monkeypatch):
    calls = []
    clock = itertools.count()  # every perf_counter() read advances the clock by 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    out, sec = bench.timed(lambda: calls.append(1) or len(calls), repeat=3, warmup=2)
    assert len(calls) == 5 and out == 5  # 2 warm-up + 3 timed; the last call's result
    assert sec == 1.0


def test_timeit_on_the_cpu_is_the_median_of_timed():
    n = []
    assert bench.timeit(lambda: n.append(0), "cpu", repeat=4, warmup=1) >= 0
    assert len(n) == 5


def test_statistic_states_runs_and_warm_up():
    assert bench.statistic(7, 2) == "median of 7 runs after 2 warm-up"
    assert bench.statistic(1, 0) == "one run, no warm-up"
    assert bench.statistic(20, 3, 0.3) == "median of 20 to 200 runs (at least 0.3 s) after 3 warm-up"
    assert "do_bench" in bench.statistic(device="cuda")


def test_format_table_text_and_markdown():
    cols = [bench.Col("name", 6, align="<"), bench.Col("ms", 8, ".2f"), bench.Col("x", 6, ".1f", suffix="x")]
    text = bench.format_table(cols, [("a", 1.234, 2.0), ("bb", None, None)], title="T", note="median")
    assert text.splitlines() == ["T", "name         ms      x", "a          1.23   2.0x",
                                 "bb            -      -", "median"]
    md = bench.format_table(cols, [("a", 1.234, 2.0)], markdown=True)
    assert md.splitlines() == ["| name | ms | x |", "|---|---:|---:|", "| a | 1.23 | 2.0x |"]
    assert bench.format_table(cols, [("a", 1.0, 1.0)], header=False).count("\n") == 0
