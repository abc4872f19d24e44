"""The score_sde_pytorch converter: strict key/shape checks, EMA checkpoints, round trips."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import scoresde as sd
from scoresde.models.convert import read_state_dict

FIXTURE = "ncsnpp_ve_continuous"


@pytest.fixture
def reference(fixtures_dir):
    d = fixtures_dir / "score_sde_pytorch" / FIXTURE
    cfg = json.loads((d / "config.json").read_text())
    state_dict = dict(np.load(d / "params.npz"))  # keys keep the 'module.' prefix
    order = json.loads((d / "state_dict_keys.json").read_text())
    return cfg, state_dict, order


def flat(variables) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree.leaves_with_path(variables)}


def test_transforms_and_prefix(reference):
    cfg, state_dict, _ = reference
    model, variables = sd.models.from_score_sde_pytorch(state_dict, cfg)
    p = variables["params"]
    # Conv (O, I, kh, kw) -> HWIO; Linear (out, in) -> (in, out); GroupNorm weight -> scale.
    w = state_dict["module.all_modules.3.weight"]
    np.testing.assert_array_equal(p["all_modules_3"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        p["all_modules_1"]["kernel"], state_dict["module.all_modules.1.weight"].T
    )
    gn = state_dict["module.all_modules.24.weight"]
    np.testing.assert_array_equal(p["all_modules_24"]["scale"], gn)
    nin = state_dict["module.all_modules.8.NIN_0.W"]
    np.testing.assert_array_equal(p["all_modules_8"]["NIN_0"]["W"], nin)
    # Without the DataParallel prefix: the same variables.
    bare = {k.removeprefix("module."): v for k, v in state_dict.items()}
    _, variables2 = sd.models.from_score_sde_pytorch(bare, cfg)
    assert flat(variables).keys() == flat(variables2).keys()
    for k, v in flat(variables).items():
        np.testing.assert_array_equal(v, flat(variables2)[k])


def test_round_trip(reference):
    cfg, state_dict, _ = reference
    model, variables = sd.models.from_score_sde_pytorch(state_dict, cfg)
    back = sd.models.to_score_sde_pytorch(variables, model)
    assert set(back) == set(state_dict)
    for k, v in state_dict.items():
        # The float64 sigma table is recomputed from the config: equal up to float64 round-off.
        np.testing.assert_allclose(back[k], v, rtol=1e-12, err_msg=k)
        assert back[k].shape == v.shape


def test_mismatches_are_all_listed(reference):
    cfg, state_dict, _ = reference
    broken = dict(state_dict)
    del broken["module.all_modules.7.Conv_1.bias"]
    del broken["module.sigmas"]
    broken["module.all_modules.99.weight"] = np.zeros(3, np.float32)
    broken["module.all_modules.25.weight"] = np.zeros((3, 16, 1, 1), np.float32)
    broken["module.all_modules.1.weight"] = np.zeros((64, 33), np.float32)
    with pytest.raises(ValueError) as info:
        sd.models.from_score_sde_pytorch(broken, cfg)
    msg = str(info.value)
    assert "2 missing, 1 unexpected, 2 wrong shape" in msg
    for key in ("all_modules.7.Conv_1.bias", "sigmas", "all_modules.99.weight"):
        assert key in msg
    assert "all_modules.25.weight: expected (3, 16, 3, 3), got (3, 16, 1, 1)" in msg
    assert "all_modules.1.weight: expected (64, 32), got (64, 33)" in msg


def test_wrong_config_is_refused(reference):
    cfg, state_dict, _ = reference
    other = json.loads(json.dumps(cfg))
    other["model"]["nf"] = 32
    with pytest.raises(ValueError, match="wrong shape"):
        sd.models.from_score_sde_pytorch(state_dict, other)


def _checkpoint(state_dict, order, rng):
    """A checkpoint laid out as the reference saves it, with EMA weights unlike the raw ones."""
    names = order["ema_shadow_params_order"]  # the reference's model.parameters() order
    shadow = [rng.standard_normal(state_dict[n].shape).astype(np.float32) for n in names]
    ema = {"decay": 0.999, "num_updates": 7, "shadow_params": shadow}
    bare = [n.removeprefix("module.") for n in names]
    return {"model": state_dict, "ema": ema, "optimizer": {}, "step": 7}, dict(
        zip(bare, shadow, strict=True)
    )


def test_checkpoint_loads_ema_by_default(reference, np_rng):
    cfg, state_dict, order = reference
    checkpoint, shadow = _checkpoint(state_dict, order, np_rng)
    model, ema_vars = sd.models.from_score_sde_pytorch(checkpoint, cfg)
    back = sd.models.to_score_sde_pytorch(ema_vars, model, prefix="")
    for name, value in shadow.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # The non-trainable Fourier W is not in the EMA: it comes from the model weights.
    assert "all_modules.0.W" not in shadow
    np.testing.assert_array_equal(back["all_modules.0.W"], state_dict["module.all_modules.0.W"])
    _, raw_vars = sd.models.from_score_sde_pytorch(checkpoint, cfg, use_ema=False)
    _, plain = sd.models.from_score_sde_pytorch(state_dict, cfg)
    for k, v in flat(plain).items():
        np.testing.assert_array_equal(flat(raw_vars)[k], v)


def test_checkpoint_with_bad_ema_is_refused(reference, np_rng):
    cfg, state_dict, order = reference
    checkpoint, _ = _checkpoint(state_dict, order, np_rng)
    checkpoint["ema"]["shadow_params"] = checkpoint["ema"]["shadow_params"][:-1]
    with pytest.raises(ValueError, match="shadow params"):
        sd.models.from_score_sde_pytorch(checkpoint, cfg)
    checkpoint, _ = _checkpoint(state_dict, order, np_rng)
    checkpoint["ema"]["shadow_params"][5] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"wrong shape: ema\["):
        sd.models.from_score_sde_pytorch(checkpoint, cfg)


def test_read_state_dict_inputs(tmp_path):
    with pytest.raises(TypeError, match="state_dict must be"):
        read_state_dict([("a", np.ones(1))])
    with pytest.raises(ValueError, match="no checkpoint file"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="both with and without"):
        read_state_dict({"module.a": np.ones(1), "a": np.ones(1)})


def test_pth_file(reference, tmp_path, np_rng):
    torch = pytest.importorskip("torch")
    cfg, state_dict, order = reference
    checkpoint, shadow = _checkpoint(state_dict, order, np_rng)
    tensors = {
        "model": {k: torch.from_numpy(v) for k, v in checkpoint["model"].items()},
        "ema": {
            **checkpoint["ema"],
            "shadow_params": [torch.from_numpy(s) for s in shadow.values()],
        },
        "optimizer": {},
        "step": 7,
    }
    path = tmp_path / "checkpoint_1.pth"
    torch.save(tensors, path)
    model, variables = sd.models.from_score_sde_pytorch(str(path), cfg)
    back = sd.models.to_score_sde_pytorch(variables, model, prefix="")
    for name, value in shadow.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_pth_path_goes_through_torch_load(reference, tmp_path, np_rng, monkeypatch):
    # Without torch installed: a stand-in module checks the call torch.load receives.
    import sys
    import types

    cfg, state_dict, order = reference
    checkpoint, shadow = _checkpoint(state_dict, order, np_rng)
    path = tmp_path / "checkpoint_2.pth"
    path.write_bytes(b"stand-in")
    calls = []

    def load(f, map_location=None, weights_only=None):
        calls.append((f, map_location, weights_only))
        return checkpoint

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    model, variables = sd.models.from_score_sde_pytorch(path, cfg)
    assert calls == [(str(path), "cpu", False)]
    back = sd.models.to_score_sde_pytorch(variables, model, prefix="")
    np.testing.assert_array_equal(back["all_modules.3.weight"], shadow["all_modules.3.weight"])
