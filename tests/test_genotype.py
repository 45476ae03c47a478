"""Genotypes: the spec's A/B/C tables, validation and the JSON round trip."""

import json

import pytest

from effpose.genotype import (
    GENOTYPES,
    SEARCH_OPS,
    Genotype,
    Stage,
    load_genotype,
    parse_op,
    save_genotype,
)

# (channels, stride, layers) per stage, from the spec's tables
SPEC_STAGES = {
    "A": [(24, 2, 4), (32, 2, 6), (64, 2, 8), (96, 1, 8)],
    "B": [(32, 2, 6), (64, 2, 8), (96, 2, 10), (160, 1, 10)],
    "C": [(32, 2, 6), (64, 2, 8), (96, 2, 10), (160, 1, 10)],
}


@pytest.mark.parametrize("arch", ["A", "B", "C"])
def test_tables_match_spec_shape(arch: str) -> None:
    genotype = GENOTYPES[arch]
    assert [(s.channels, s.stride, len(s.ops)) for s in genotype.stages] == SPEC_STAGES[arch]
    assert genotype.output_stride == 16
    assert all(op in SEARCH_OPS for s in genotype.stages for op in s.ops)


def test_shorthand_expansion_of_spec_rows() -> None:
    assert GENOTYPES["A"].stages[2].ops == ("ir_k5_e6",) + ("ir_k7_e3",) * 7
    assert GENOTYPES["B"].stages[3].ops[6] == "skip"
    assert GENOTYPES["C"].stages[0].ops == ("ir_k5_e3", "ir_k3_e6", "ir_k3_e3", "ir_k3_e3", "skip", "ir_k5_e3")
    assert GENOTYPES["C"].stages[2].ops == ("ir_k7_e6",) * 8 + ("ir_k7_e3", "ir_k7_e6")


def test_parse_op() -> None:
    spec = parse_op("ir_k7_e3")
    assert (spec.kernel, spec.expansion) == (7, 3)
    assert parse_op("skip") is None
    for bad in ("ir_k4_e3", "k3e6", "conv", "ir_k3_e0", ""):
        with pytest.raises(ValueError):
            parse_op(bad)


def test_invalid_genotypes_are_rejected() -> None:
    with pytest.raises(ValueError, match="first layer"):
        Genotype("x", 16, (Stage(24, 2, ("skip", "ir_k3_e3")),))
    with pytest.raises(ValueError):
        Genotype("x", 16, (Stage(24, 3, ("ir_k3_e3",)),))
    with pytest.raises(ValueError):
        Genotype("x", 16, ())
    with pytest.raises(ValueError, match="not a genotype"):
        Genotype.from_dict({"name": "x"})


@pytest.mark.parametrize("arch", sorted(GENOTYPES))
def test_json_round_trip(arch: str, tmp_path) -> None:
    path = tmp_path / "genotype.json"
    save_genotype(GENOTYPES[arch], path)
    assert json.loads(path.read_text())["stages"][0]["ops"]
    assert load_genotype(path) == GENOTYPES[arch]


def test_load_by_name_is_case_insensitive() -> None:
    assert load_genotype("a") is GENOTYPES["A"]
    assert load_genotype("efficientpose_c") is GENOTYPES["C"]
    with pytest.raises(ValueError, match="unknown architecture"):
        load_genotype("D")


def test_skip_layers_prunes_depth_in_place() -> None:
    a = GENOTYPES["A"]
    pruned = a.skip_layers({(1, 2), (3, 7)}, "a_pruned")
    assert pruned.stages[1].ops[2] == "skip" and pruned.stages[3].ops[7] == "skip"
    assert [len(s.ops) for s in pruned.stages] == [len(s.ops) for s in a.stages]
    assert sum(op != "skip" for s in pruned.stages for op in s.ops) == sum(len(s.ops) for s in a.stages) - 2
    with pytest.raises(ValueError, match="first layer"):
        a.skip_layers({(2, 0)}, "x")
    with pytest.raises(ValueError, match="no layers"):
        a.skip_layers({(1, 6)}, "x")
