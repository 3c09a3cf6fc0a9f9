"""The nightly regression catches real bugs: each realistic mutation below, patched into the code the
nightly exercises, must make it exit non-zero and name the right quantity. A nightly that passes a
mutant fails this suite. The clean nightly passes with an empty MLflow store, then against itself."""

import json
import sys

import numpy as np
import pytest
import torch

from adaptsym.stats import bootstrap, fdr

from adaptsym.curvature import entries

from adaptsym.nets import losses
from adaptsym.curvature.hvp import PoolHessian
from adaptsym.nets.indexing import ParamIndex
from jobs.nightly import GOLDEN, ROOT, build_parser
from jobs.nightly import main as nightly


def patch_everywhere(monkeypatch, module, name, new):
    """Replace `module.name` and every imported alias of the same object (as editing the source would)."""
    old = getattr(module, name)
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").split(".")[0] in ("adaptsym", "jobs", "services"):
            if getattr(mod, name, None) is old:
                monkeypatch.setattr(mod, name, new)


def run_mutant(tmp_path, capsys) -> tuple[int, str]:
    code = nightly(["--no-mlflow", "--out", str(tmp_path / "nightly")])
    cap = capsys.readouterr()
    return code, cap.err


def drifted(err: str) -> set[str]:
    return {line.split()[1] for line in err.splitlines() if line.startswith("DRIFT: ")}


def _hvp_times_1_1(monkeypatch):
    matmat = PoolHessian._matmat  # the one product hook: every product goes through it
    monkeypatch.setattr(PoolHessian, "_matmat", lambda self, vs: tuple(1.1 * t for t in matmat(self, vs)))


def _bootstrap_s_minus_1(monkeypatch):
    orig = bootstrap.multinomial_counts
    patch_everywhere(monkeypatch, bootstrap, "multinomial_counts", lambda n, s, B, rng: orig(n, s - 1, B, rng))


def _hinge_margin_0_9(monkeypatch):
    patch_everywhere(monkeypatch, losses, "hinge", lambda out, y: torch.clamp(0.9 - y * out, min=0.0))


def _transposed_index_map(monkeypatch):
    orig = ParamIndex.to_local

    def to_local(self, g):
        layer, flat = orig(self, g)
        flat = flat.copy()
        for li, shape in enumerate(self.shapes):
            if len(shape) == 2:
                sel = layer == li
                r, c = np.divmod(flat[sel], shape[1])
                flat[sel] = c * shape[0] + r
        return layer, flat

    monkeypatch.setattr(ParamIndex, "to_local", to_local)


def _fdr_q_ignored(monkeypatch):
    init, reject = fdr.StreamingBH.__init__, fdr.bh_reject
    monkeypatch.setattr(fdr.StreamingBH, "__init__", lambda self, q, *a, **k: init(self, 0.05, *a, **k))
    patch_everywhere(monkeypatch, fdr, "bh_reject", lambda p, q, method="bh": reject(p, 0.05, method))


def _dropped_layer_pair_stratum(monkeypatch):
    orig = entries._uniform_distinct

    def pick(rng, index, k, stratify, what):
        out = orig(rng, index, k, stratify, what)
        return out[index.layer_of(out) != index.n_layers - 1] if what == "columns" else out

    monkeypatch.setattr(entries, "_uniform_distinct", pick)


MUTANTS = {  # mutation -> quantities the nightly must name (at least one of each set)
    "hvp_times_1.1": (_hvp_times_1_1, {"identity.H_theta_rel_error", "last.lambda_max"}),
    "bootstrap_s_minus_1": (_bootstrap_s_minus_1, {"identity.bootstrap_weight_max_dev", "identity.bootstrap_var_ratio",
                                                   "last.replicate_var_mean"}),
    "hinge_margin_0.9": (_hinge_margin_0_9, {"identity.entries_vs_autograd_max_abs", "train.final_loss"}),
    "transposed_index_map": (_transposed_index_map, {"identity.entries_vs_autograd_max_abs"}),
    "fdr_q_ignored": (_fdr_q_ignored, {"identity.active_corr_counts_mismatch", "last.active_corr_n_nonzero"}),
    "dropped_layer_pair": (_dropped_layer_pair_stratum, {"identity.design_missing_layer_pairs", "last.entries.L0-L2"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_nightly_fails_on_mutant_and_names_the_quantity(mutant, monkeypatch, tmp_path, capsys):
    apply, must_name = MUTANTS[mutant]
    apply(monkeypatch)
    code, err = run_mutant(tmp_path, capsys)
    assert code == 1, f"the nightly passed the mutant {mutant}"
    named = drifted(err)
    assert must_name <= named, (mutant, sorted(named)[:20])


@pytest.mark.slow
def test_clean_nightly_passes_fresh_then_against_mlflow_and_names_a_golden_drift(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "nightly")
    assert nightly(["--out", out]) == 0
    text = capsys.readouterr().out
    assert "no earlier nightly run" in text and "| identity | identity.H_theta_rel_error |" in text
    assert nightly(["--out", out]) == 0  # now also against the last nightly in MLflow
    assert "| last nightly | last.lambda_max |" in capsys.readouterr().out
    # a golden value moved by 1e-5 relative (10x the float64 tolerance) is named
    golden = json.loads(GOLDEN.read_text())
    golden["values"]["last.lambda_max"] *= 1 + 1e-5
    moved = tmp_path / "golden.json"
    moved.write_text(json.dumps(golden))
    assert nightly(["--out", out, "--no-mlflow", "--golden", str(moved)]) == 1
    assert drifted(capsys.readouterr().err) == {"last.lambda_max"}


def test_cronjob_runs_exactly_the_nightly_command():
    import shlex

    import yaml

    docs = list(yaml.safe_load_all((ROOT / "cluster/kuberay/nightly-cronjob.yaml").read_text()))
    rayjob = yaml.safe_load(next(d for d in docs if d and d["kind"] == "ConfigMap")["data"]["rayjob.yaml"])
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.nightly"]
    args = build_parser().parse_args(argv[3:])  # every flag it passes is one the nightly has
    assert not args.update_golden and not args.make_baseline and not args.no_mlflow
    assert args.golden == str(GOLDEN) and args.config == "configs/nightly.yaml"
    assert args.ray == "auto"  # the cluster nightly measures through the distributed path


def _shard_left_out_of_the_sum(monkeypatch):
    """A services/ bug: the driver's reduction of the sharded pool products drops the last shard."""
    import ray

    from services import executor

    def matmat(self, vs):
        m = vs[0].shape[0]
        M = torch.cat([t.reshape(m, -1) for t in vs], dim=1).T.detach().cpu().numpy()
        parts = ray.get([a.matmat_sum.remote(self.key, [r], M) for a, r in zip(self.actors, self.refs)])
        HM = torch.as_tensor(np.sum(parts[:-1], axis=0) / self.n, dtype=vs[0].dtype)
        out, i = [], 0
        for w in self.weights:
            out.append(HM[i : i + w.numel()].T.reshape((m,) + tuple(w.shape)))
            i += w.numel()
        return tuple(out)

    monkeypatch.setattr(executor.ShardedHessian, "_matmat", matmat)


def test_nightly_ray_mode_passes_clean_and_catches_a_ray_executor_mutant(monkeypatch, tmp_path, capsys):
    """`--ray` measures through services/ (the CronJob's path) against the same golden record: clean
    it passes; with a shard left out of the distributed sum it fails naming spectrum quantities,
    a mutant that the in-process nightly cannot see."""
    from services.cluster import shutdown

    out = str(tmp_path / "nightly")
    try:
        assert nightly(["--no-mlflow", "--out", out, "--ray"]) == 0, capsys.readouterr().err[-3000:]
        assert "all" in capsys.readouterr().out
        _shard_left_out_of_the_sum(monkeypatch)
        assert nightly(["--no-mlflow", "--out", out, "--ray"]) == 1
        named = drifted(capsys.readouterr().err)
        assert {"last.lambda_max", "last.trace_estimate"} & named, sorted(named)
        assert nightly(["--no-mlflow", "--out", out]) == 0  # in process: the mutant is not on its path
    finally:
        shutdown()
