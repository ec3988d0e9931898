"""The OpenMetrics writer: exact text for escaping and special values, and promtool's verdict."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from watchdog_lab.openmetrics import (
    Series,
    escape_label_value,
    format_timestamp,
    format_value,
    write_openmetrics,
)
from watchdog_lab.prometheus import create_blocks

T0 = 1_700_000_000.0
AWKWARD_VALUE = 'back\\slash "quoted"\nsecond line'


def _write(tmp_path: Path, *series: Series) -> tuple[int, str]:
    out = tmp_path / "history.om"
    written = write_openmetrics(series, out)
    return written, out.read_text(encoding="utf-8")


def test_label_values_are_escaped(tmp_path: Path) -> None:
    series = Series("x", (("a", AWKWARD_VALUE), ("b", "plain")), ((T0, 1.0),))

    _, text = _write(tmp_path, series)

    assert text.splitlines()[0] == (
        'x{a="back\\\\slash \\"quoted\\"\\nsecond line",b="plain"} 1.0 1700000000'
    )
    assert escape_label_value('\\\n"') == '\\\\\\n\\"'


def test_special_values_and_round_trip(tmp_path: Path) -> None:
    values = [math.nan, math.inf, -math.inf, 0.1, 1e-300, 123456789.123456789, -0.0, 3.0]
    series = Series("y", (), tuple((T0 + 15 * i, v) for i, v in enumerate(values)))

    written, text = _write(tmp_path, series)

    lines = text.splitlines()
    assert written == len(values)
    assert [line.split(" ")[1] for line in lines[:3]] == ["NaN", "+Inf", "-Inf"]
    for line, value in zip(lines[3:], values[3:], strict=False):
        assert float(line.split(" ")[1]) == value
    assert format_value(-0.0) == "-0.0"


def test_file_ends_with_eof_and_nothing_after(tmp_path: Path) -> None:
    _, text = _write(tmp_path, Series("up", (("job", "j"),), ((T0, 1.0), (T0 + 15, 0.0))))

    assert text.endswith("\n# EOF\n")
    assert text.count("# EOF") == 1
    assert "# TYPE" not in text


def test_empty_input_is_just_eof(tmp_path: Path) -> None:
    written, text = _write(tmp_path)

    assert (written, text) == (0, "# EOF\n")


def test_fractional_timestamps_land_on_the_intended_millisecond() -> None:
    for millis in range(1_795_625_143_000, 1_795_625_143_000 + 5000, 7):
        text = format_timestamp(millis / 1000)
        # Prometheus converts with a truncating int64(ts * 1000).
        assert math.floor(float(text) * 1000) == millis, text
    assert format_timestamp(T0) == "1700000000"


@pytest.mark.parametrize(
    "samples",
    [((T0, 1.0), (T0, 2.0)), ((T0 + 15, 1.0), (T0, 2.0))],
    ids=["repeated", "backwards"],
)
def test_samples_out_of_order_are_refused(
    tmp_path: Path, samples: tuple[tuple[float, float], ...]
) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        _write(tmp_path, Series("z", (), samples))


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("bad-name", ()),
        ("ok", (("b", "1"), ("a", "2"))),
        ("ok", (("a", "1"), ("a", "2"))),
        ("ok", (("__name__", "x"),)),
        ("ok", (("1a", "x"),)),
    ],
)
def test_invalid_names_and_labels_are_refused(
    name: str, labels: tuple[tuple[str, str], ...]
) -> None:
    with pytest.raises(ValueError, match=r"invalid|sorted"):
        Series(name, labels, ())


@pytest.mark.integration
def test_promtool_accepts_the_file_and_keeps_every_sample(tmp_path: Path) -> None:
    series = [
        Series("x", (("a", AWKWARD_VALUE),), ((T0, math.nan), (T0 + 15.5, math.inf))),
        Series("y_total", (("job", "j"),), ((T0, 1.0), (T0 + 15, 2.5), (T0 + 30, 1e20))),
        Series("z_bucket", (("le", "+Inf"),), ((T0 + 7.25, -math.inf),)),
    ]
    om_file = tmp_path / "history.om"
    write_openmetrics(series, om_file)
    data_dir = tmp_path / "data"

    create_blocks(om_file, data_dir)

    (data_dir / "wal").mkdir()  # `promtool tsdb dump` wants one, backfilled blocks have none
    dump = subprocess.run(
        ["promtool", "tsdb", "dump", str(data_dir)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert sorted(dump) == sorted(
        [
            f'{{__name__="x", a={json.dumps(AWKWARD_VALUE)}}} NaN 1700000000000',
            f'{{__name__="x", a={json.dumps(AWKWARD_VALUE)}}} +Inf 1700000015500',
            '{__name__="y_total", job="j"} 1 1700000000000',
            '{__name__="y_total", job="j"} 2.5 1700000015000',
            '{__name__="y_total", job="j"} 1e+20 1700000030000',
            '{__name__="z_bucket", le="+Inf"} -Inf 1700000007250',
        ]
    )
