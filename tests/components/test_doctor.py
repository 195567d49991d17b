"""`embedopt doctor`: what it reports must be what the library does."""

import json

import pytest

import optimizers
from components import doctor
from optimizers import fast_path, kernels


@pytest.fixture(scope="module")
def found():
    return doctor.diagnose()


def test_every_optimizer_and_the_lookup_have_a_path(found):
    assert set(found["apply_paths"]) == set(optimizers.OPTIMIZERS) | {"SparseEmbedding lookup"}
    available, reason = kernels.status()
    assert found["kernels"]["available"] == available and found["kernels"]["detail"] == reason
    for name in optimizers.OPTIMIZERS:
        path = found["apply_paths"][name]
        # Each line is the optimizer's own answer: the kernel where it has one and the kernels load, else why not.
        if available and optimizers.get(name).kernel_rule and optimizers.get(name).lazy:
            assert path == fast_path.FUSED, (name, path)
        else:
            assert path.startswith("TF ops: "), (name, path)


def test_report_and_json_say_the_same(found, capsys):
    text = doctor.report(found)
    assert f"huge pages for large tables: {found['kernels']['huge_pages']}" in text
    for name, path in found["apply_paths"].items():
        assert name in text and path in text
    assert doctor.main(["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["apply_paths"] == found["apply_paths"]


@pytest.mark.parametrize("setting", ["off", "0", "no"])
def test_huge_pages_switched_off_says_so(monkeypatch, setting):
    monkeypatch.setenv(kernels.HUGE_PAGES_ENV, setting)
    assert kernels.huge_pages() == f"off ({kernels.HUGE_PAGES_ENV}={setting})"


def test_huge_pages_line_follows_the_systems_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(kernels.HUGE_PAGES_ENV, raising=False)
    setting = tmp_path / "enabled"
    monkeypatch.setattr(kernels, "_THP_SETTING", str(setting))
    for text, expected in [("always madvise [never]\n", "no effect"), ("always [madvise] never\n", "on (tables"),
                           ("[always] madvise never\n", "'always' here")]:
        setting.write_text(text)
        assert expected in kernels.huge_pages()
    setting.unlink()
    assert kernels.huge_pages().startswith("not available")
