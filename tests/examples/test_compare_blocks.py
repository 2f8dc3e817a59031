import pathlib
import runpy

import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "compare_blocks.py"


def test_tiny_run_prints_a_row_per_variant(capsys):
    example = runpy.run_path(str(EXAMPLE))
    variants = ["baseline", "slimconv", "dy_relu"]
    rows = example["main"](
        ["--variants", ",".join(variants), "--epochs", "1", "--steps", "2", "--batch-size", "16",
         "--train-images", "64", "--test-size", "20", "--depth", "14", "--verbose", "0", "--no-jit-compile"]
    )
    assert [row["variant"] for row in rows] == variants
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["parameters"] > 0 and row["macs"] > 0 and row["step_ms"] > 0
    baseline, slim, dy_relu = rows
    assert slim["parameters"] < baseline["parameters"] < dy_relu["parameters"]
    assert slim["macs"] < baseline["macs"]
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert "test accuracy" in lines[header] and "ms/step" in lines[header]
    assert [line.split()[0] for line in lines[header + 1 : header + 1 + len(variants)]] == variants


def test_unknown_variant_is_rejected():
    example = runpy.run_path(str(EXAMPLE))
    with pytest.raises(SystemExit):
        example["parse_args"](["--variants", "baseline,cbam"])
