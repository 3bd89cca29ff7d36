"""A pretrained diffusers DDPM as the sample stage's model: its discrete path, the exact training steps every
scheduler asks for, the same samples as diffusers' own loop, and the config that plans it only where the
scale acquires its weights with known sha256."""
import json

import numpy as np
import pytest
import torch

from fake_weights import SCHEDULER_CONFIG, write_tiny_ddpm
from flowrepro import io
from flowrepro.config import flow_datasets, flow_runs, load_experiment, pretrained_models, pretrained_skipped
from flowrepro.data.weights import manifest_path
from flowrepro.generative.paths import DiscreteVPPath
from flowrepro.samplers import diffusion, trained_diffusion


def _acquired_ddpm(directory, sample_size=8, schedule=None):
    """A tiny DDPM written as ``acquire`` leaves it: files and their manifest."""
    digests = write_tiny_ddpm(directory, sample_size=sample_size)
    if schedule is not None:
        (directory / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG | schedule))
        from fake_weights import sha256_file

        digests["scheduler_config.json"] = sha256_file(directory / "scheduler_config.json")
    io.write_text(manifest_path(directory), "".join(f"{h}  {name}\n" for name, h in digests.items()))
    return directory


def _data(path, size=8, n=40):
    rng = np.random.default_rng(0)
    io.save_npz(path, train=rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32),
                test=rng.uniform(-1, 1, (n // 2, 3, size, size)).astype(np.float32))
    io.write_checksum(path)
    return path


def test_discrete_path_is_ddpm_schedule_at_every_training_step():
    path = DiscreteVPPath()
    alphas_cumprod = diffusion.make_scheduler("ddim").alphas_cumprod.double()
    steps = torch.tensor([0, 1, 250, 998, 999])
    a, b, _, _ = path.coefficients(1 - steps.double() / 999)
    assert torch.allclose(b**2, alphas_cumprod[steps], rtol=1e-12) and torch.allclose(a**2 + b**2, torch.ones(5, dtype=torch.float64))
    for k in steps.tolist():  # the VE level of step k maps back to step k exactly
        s = float(((1 - alphas_cumprod[k]) / alphas_cumprod[k]).sqrt())
        assert path.timestep(torch.tensor(path.time_of_level(s), dtype=torch.float64)) == pytest.approx(k, abs=1e-9)
    t = torch.tensor([0.2, 0.61], dtype=torch.float64)  # derivatives: finite differences inside a segment
    a, b, da, db = path.coefficients(t)
    a2, b2, _, _ = path.coefficients(t + 1e-8)
    assert torch.allclose((a2 - a) / 1e-8, da, rtol=1e-4) and torch.allclose((b2 - b) / 1e-8, db, rtol=1e-4)


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver2m", "unipc"])
def test_schedulers_call_the_network_at_their_integer_steps_and_match_diffusers_own_loop(tmp_path, scheduler):
    from flowrepro.models.pretrained import load_pretrained_models
    from flowrepro.samplers.nfe import NFECounter

    directory = _acquired_ddpm(tmp_path / "ddpm_cifar10_pretrained")
    info, models = load_pretrained_models(directory, "ddpm_cifar10", str(_data(tmp_path / "cifar10.npz")), [0, 1])
    assert info["dataset"] == "cifar10" and info["shape"] == [3, 8, 8] and models[0] is models[1]
    unet = models[0].network.unet
    seen = []
    original = unet.forward
    unet.forward = lambda x, t, **kw: (seen.append(t.double().reshape(-1)[0].item()), original(x, t, **kw))[1]
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    counter = NFECounter(models[0])
    ours = trained_diffusion.sample(counter, x0, scheduler, steps=5)
    unet.forward = original
    reference = diffusion.make_scheduler(scheduler)
    reference.set_timesteps(5)
    assert counter.calls == 5 and seen == pytest.approx([float(t) for t in reference.timesteps], abs=1e-6)
    x = x0 * reference.init_noise_sigma  # diffusers' own loop: the UNet at each integer timestep
    with torch.no_grad():
        for t in reference.timesteps:
            x = reference.step(unet(reference.scale_model_input(x, t), t).sample, t, x).prev_sample
    assert torch.allclose(ours, x, atol=1e-5), float((ours - x).abs().max())


def test_a_shape_or_schedule_the_samplers_do_not_share_is_refused_naming_the_file(tmp_path):
    from flowrepro.models.pretrained import load_pretrained_models

    directory = _acquired_ddpm(tmp_path / "a" / "ddpm_cifar10_pretrained")
    with pytest.raises(ValueError, match=r"takes images \(3, 8, 8\).*holds \(3, 16, 16\)"):
        load_pretrained_models(directory, "m", str(_data(tmp_path / "big.npz", size=16)), [0])
    cosine = _acquired_ddpm(tmp_path / "b" / "ddpm_cifar10_pretrained", schedule={"beta_schedule": "squaredcos_cap_v2"})
    with pytest.raises(ValueError, match="scheduler_config.json: beta_schedule = 'squaredcos_cap_v2'"):
        load_pretrained_models(cosine, "m", str(_data(tmp_path / "c.npz")), [0])


def test_pretrained_runs_are_planned_only_where_the_scale_acquires_them_with_known_sha256(tmp_path):
    experiment = load_experiment("config/experiments/fast_samplers_trained.yaml") | {"datasets": ["spirals", "digits"]}
    tiny = {"scale": "tiny"}
    unpinned = {"scale": "small", "downloads": {"weights": ["fid_inception", "ddpm_cifar10_pretrained"]}}
    pinned = {"scale": "small", "downloads": {"weights": ["ddpm_cifar10_pretrained"], "digests": {
        "config.json": "a" * 64, "scheduler_config.json": "b" * 64, "diffusion_pytorch_model.safetensors": "c" * 64}}}
    assert "does not acquire ddpm_cifar10_pretrained" in pretrained_skipped(experiment, tiny)["ddpm_cifar10"]
    assert "no sha256 is pinned" in pretrained_skipped(experiment, unpinned)["ddpm_cifar10"]
    assert pretrained_models(experiment, tiny) == pretrained_models(experiment, unpinned) == {}
    assert ("cifar10", "ddpm_cifar10") in flow_runs(experiment, pinned) and ("cifar10", "ddpm_cifar10") not in flow_runs(experiment, tiny)
    assert flow_datasets(experiment, pinned) == ["spirals", "digits", "cifar10"]


def test_bad_pretrained_entries_fail_when_the_experiment_loads(tmp_path):
    from flowrepro.config import ConfigError, load_yaml

    base = load_yaml("config/experiments/fast_samplers_trained.yaml")
    for change, message in (({"weights": "ddpm_celeba"}, "pretrained/ddpm_cifar10/weights: unknown weights set 'ddpm_celeba'"),
                            ({"dataset": "images"}, "not the role 'images'")):
        broken = base | {"pretrained": {"ddpm_cifar10": base["pretrained"]["ddpm_cifar10"] | change}}
        path = tmp_path / "fast_samplers_trained.yaml"
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message):
            load_experiment(path)
    clash = base | {"pretrained": {"vp_eps": base["pretrained"]["ddpm_cifar10"]}}
    path.write_text(json.dumps(clash))
    with pytest.raises(ConfigError, match="'vp_eps' is also under models"):
        load_experiment(path)
