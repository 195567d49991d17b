"""Quantity flags refuse what Kubernetes cannot parse; every rendered quantity matches the Kubernetes grammar."""

import pathlib
import re
from decimal import Decimal

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity

from components.launcher import cli
from components.launcher.builders import build_objects, shared_objects
from components.launcher.config import LaunchConfig, Resources
from components.launcher.render import to_dict
from tests.components.launcher.test_builders import CASES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

# k8s.io/apimachinery/pkg/api/resource/quantity.go:
#   <quantity> ::= <signedNumber><suffix>
#   <number> ::= <digits> | <digits>.<digits> | <digits>. | .<digits>      <sign> ::= "+" | "-"
#   <suffix> ::= <binarySI> | <decimalExponent> | <decimalSI>
#   <binarySI> ::= Ki | Mi | Gi | Ti | Pi | Ei      <decimalSI> ::= n | u | m | "" | k | M | G | T | P | E
#   <decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber>
# The scanner there (parseQuantityString) reads only an optional sign and digits after e/E, so the exponent is an
# integer here: "1e1.5" is refused by the API server.
K8S_QUANTITY = re.compile(r"[+-]?([0-9]+|[0-9]+\.[0-9]+|[0-9]+\.|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?")
QUANTITY_FLAGS = {  # flag -> the unit Kubernetes counts it in, as the kubelet reads it (MilliValue / Value)
    "--cpu-request": Decimal("0.001"), "--cpu-limit": Decimal("0.001"), "--memory-request": 1,
    "--memory-limit": 1, "--tmp-size": 1, "--shm-size": 1, "--data-size": 1,
}
# Small requests so that any valid limit is at least its request; the shm limit is checked against the memory limit.
BASE = ["render", "--kind", "indexed", "--cpu-request=1m", "--memory-request=1", "--shm-size=1"]
BAD_VALUES = ["NaN", "nan", "inf", "-inf", "Infinity", "1x", " 1", "1 ", "1e1.5", "\u0661", "", "1,5", "0x10", "1_000"]


def _quantities(node, key=None):
    """Every value in a `requests`/`limits` map and every `sizeLimit`, anywhere in a manifest."""
    if isinstance(node, dict):
        if key in ("requests", "limits"):
            yield from ((k, v) for k, v in node.items())
            return
        for k, v in node.items():
            if k == "sizeLimit":
                yield k, v
            else:
                yield from _quantities(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _quantities(item, key)


def _assert_all_quantities_valid(docs):
    found = [(k, v) for doc in docs for k, v in _quantities(doc)]
    assert found, "the walker found no quantities"
    for name, value in found:
        assert isinstance(value, str) and K8S_QUANTITY.fullmatch(value), f"{name}: {value!r} is not a Kubernetes quantity"
        assert parse_quantity(value) > 0, f"{name}: {value!r} is not positive"
    return [v for _, v in found]


def _render(argv, capsys):
    assert cli.main(BASE + argv) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


@pytest.mark.parametrize("flag", sorted(QUANTITY_FLAGS))
@pytest.mark.parametrize("value", BAD_VALUES)
def test_unparsable_quantity_exits_2_naming_flag_and_value(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(BASE + [f"{flag}={value}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: {value!r} is not a Kubernetes quantity" in last


@pytest.mark.parametrize(
    "flag, value, reason",
    [
        ("--cpu-limit", "-1", "must be positive"),
        ("--cpu-limit", "0", "must be positive"),
        ("--memory-limit", "-0.0", "must be positive"),
        ("--cpu-limit", "1e400", "too large"),
        ("--memory-limit", "8Ei", "too large"),  # 2**63: Kubernetes would cap it at 2**63 - 1, silently
        ("--cpu-limit", "100n", "finer than 1 millicore"),
        ("--cpu-limit", "0.0005", "finer than 1 millicore"),
        ("--memory-limit", "1.5", "finer than 1 byte"),
        ("--tmp-size", "1m", "finer than 1 byte"),
    ],
)
def test_meaningless_quantity_exits_2_naming_flag_and_value(flag, value, reason, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(BASE + [f"{flag}={value}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: {value!r}" in last and reason in last


@pytest.mark.parametrize("value", ["-1", "17", "NaN", "inf", "1.0"])
def test_bad_gpu_count_exits_2_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(BASE + [f"--gpus={value}"])
    assert exit_info.value.code == 2
    assert f"argument --gpus: {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["cpu_limit", "memory_limit"])
@pytest.mark.parametrize("value", ["NaN", "inf", "1e400"])
def test_dataclass_api_refuses_nonfinite_quantities(field, value):
    with pytest.raises(ValueError, match=f"{field}='{value}'"):
        Resources(**{field: value})


@pytest.mark.parametrize("kind, workers, resources", CASES)
def test_every_rendered_quantity_matches_the_grammar(kind, workers, resources):
    config = LaunchConfig(workers=workers, resources=resources)
    _assert_all_quantities_valid([to_dict(o) for o in shared_objects(config) + build_objects(kind, config)])


def test_every_quantity_in_the_kustomize_tree_matches_the_grammar():
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO_ROOT / "k8s").rglob("*.yaml"))]
    _assert_all_quantities_valid(docs)


@pytest.mark.parametrize("memory_limit, shm", [("3Mi", "786432"), ("4Mi", "1Mi"), ("8Gi", "2Gi"), ("7", "1")])
def test_default_shm_size_is_a_positive_quantity_for_small_memory_limits(memory_limit, shm):
    config = LaunchConfig(resources=Resources(cpu_request="1", cpu_limit="1", memory_request="1", memory_limit=memory_limit))
    assert config.shm_size == shm


_DIGITS = st.text("0123456789", min_size=1, max_size=6)
_GRAMMAR_VALUES = st.builds(
    lambda sign, whole, frac, form, suffix: sign + {"int": whole, "dec": f"{whole}.{frac}", "dot": f"{whole}.",
                                                    "lead": f".{frac}"}[form] + suffix,
    st.sampled_from(["", "+", "-"]), _DIGITS, _DIGITS, st.sampled_from(["int", "dec", "dot", "lead"]),
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Ei", "n", "u", "m", "k", "M", "G", "T", "E", "e3", "E-2", "e+9"]),
)
_ANY_VALUES = st.one_of(
    _GRAMMAR_VALUES,
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
)


def _reference_accepts(flag, value):
    """Independent reference: the grammar, then a positive whole number of units that fits an int64."""
    if not K8S_QUANTITY.fullmatch(value):
        return False
    units = parse_quantity(value) / Decimal(QUANTITY_FLAGS[flag])
    return 0 < units <= 2**63 - 1 and units == units.to_integral_value()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--cpu-limit", "--memory-limit", "--tmp-size", "--data-size"]), value=_ANY_VALUES)
def test_any_flag_value_is_refused_naming_the_flag_or_rendered_as_a_valid_quantity(flag, value, capsys):
    capsys.readouterr()
    try:
        code = cli.main(BASE + [f"{flag}={value}"])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    if _reference_accepts(flag, value):
        assert code == 0, err
        assert value in _assert_all_quantities_valid(list(yaml.safe_load_all(out)))
    else:
        assert code == 2 and out == ""
        assert f"argument {flag}: {value!r}" in err.strip().splitlines()[-1]
