"""show_config() and the `python -m fastnn info` command line."""
import io
import os
import subprocess
import sys

import pytest

import fastnn


def _env_with_path():
    env = dict(os.environ)
    paths = [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) + paths if p])
    return env


def _check_report(text):
    assert f"fastnn {fastnn.__version__}" in text
    lower = text.lower()
    assert "openmp" in lower
    assert "blas" in lower
    assert "thread" in lower
    assert "compiler" in lower
    assert "simd" in lower


def test_show_config_prints_version_openmp_blas(capsys):
    fastnn.show_config()
    out = capsys.readouterr().out
    _check_report(out)
    from fastnn_ext._config import build_info
    openmp_line = [ln for ln in out.splitlines() if ln.strip().lower().startswith("openmp")]
    assert openmp_line, out
    if build_info()["openmp"]:
        assert "yes" in openmp_line[0].lower()
    else:
        assert "no" in openmp_line[0].lower()


def test_show_config_file_argument_and_thread_count():
    buf = io.StringIO()
    with fastnn.threads(1):
        fastnn.show_config(file=buf)
    text = buf.getvalue()
    _check_report(text)
    thread_lines = [ln for ln in text.splitlines() if ln.strip().lower().startswith("threads")]
    assert thread_lines and " 1 " in thread_lines[0] + " ", text


def test_version_string():
    assert isinstance(fastnn.__version__, str) and fastnn.__version__.count(".") >= 1


def test_cli_info_runs():
    proc = subprocess.run([sys.executable, "-m", "fastnn", "info"], env=_env_with_path(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    _check_report(proc.stdout)


def test_bench_plot_names_the_families_and_marks_disturbed_cases(tmp_path):
    pytest.importorskip("matplotlib")
    from types import SimpleNamespace
    from fastnn._bench.plot import write_plot

    def result(name, busy):
        return SimpleNamespace(case=SimpleNamespace(name=name), foreign_cpus=busy,
                               ratios={"vs_numpy": 2.0, "vs_torch": 0.8})

    fig = write_plot(tmp_path / "p.png", {"conv": [result("a", 0.0), result("b", 0.9)]},
                     "fastnn speed-ups (conv; --quick)", busy=lambda r: r.foreign_cpus > 0.5)
    assert (tmp_path / "p.png").stat().st_size > 0
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["a", "b *", "geomean"]
    title = fig.axes[0].get_title()
    assert "(conv; --quick)" in title and "* other processes kept CPUs busy" in title


def test_show_config_says_whether_512_bit_fmas_run_at_full_width(capsys):
    from fastnn_ext._winograd import FULL_WIDTH_512
    from fastnn._config import config
    assert config()["fma512_full_width"] is FULL_WIDTH_512
    fastnn.show_config()
    simd = [ln for ln in capsys.readouterr().out.splitlines() if "SIMD kernels" in ln]
    assert simd and (("full width" in simd[0]) == FULL_WIDTH_512)
