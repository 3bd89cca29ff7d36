"""The learned-coupling objective (Lee, Kim & Ye 2023) pinned to its definition."""
import pytest

torch = pytest.importorskip("torch")

from flowrepro.generative import learned_coupling as lc  # noqa: E402
from flowrepro.generative.losses import mse  # noqa: E402
from flowrepro.generative.objectives import build_objective, objective_piece, regression  # noqa: E402
from flowrepro.generative.paths import build_path  # noqa: E402
from flowrepro.stages import train  # noqa: E402

SPEC = {"path": "linear", "coupling": "independent", "objective": {"name": "learned_coupling", "beta": 10.0}}
VECTORS = {"width": 16, "depth": 2}
IMAGES = {"network": "unet_smoke"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_kl_equals_torch_distributions():
    from torch.distributions import Independent, Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=g), 2 * torch.randn(7, 5, generator=g)
    q = Independent(Normal(mu.double(), (0.5 * logvar.double()).exp()), 1)
    p = Independent(Normal(torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)), 1)
    expected = kl_divergence(q, p).mean()
    assert torch.allclose(lc.gaussian_kl(mu, logvar).double(), expected, rtol=1e-5)
    images = (mu.reshape(7, 5, 1, 1), logvar.reshape(7, 5, 1, 1))  # summed over every dimension of a sample
    assert torch.allclose(lc.gaussian_kl(*images).double(), expected, rtol=1e-5)


def test_network_hook_shapes_for_vectors_and_images():
    hook = objective_piece(SPEC).network
    for shape, settings in (((2,), VECTORS), ((1, 8, 8), IMAGES)):
        model = hook(shape, settings, SPEC, train.build_network)
        x, t = torch.randn(3, *shape), torch.rand(3)
        assert model(x, t).shape == x.shape
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == x.shape
        velocity, target, mu2, _ = model(x, t, noise=torch.randn_like(x), path=build_path(SPEC))
        assert velocity.shape == target.shape == x.shape and torch.equal(mu, mu2)
    image_model = hook((1, 8, 8), IMAGES, SPEC, train.build_network)
    # the encoder is the flow's UNet at a quarter width (at least 8 channels), with 2C output channels
    assert image_model.encoder.unet.conv_out.out_channels == 2
    assert sum(p.numel() for p in image_model.encoder.parameters()) < sum(p.numel() for p in image_model.flow.parameters())


def test_flow_part_is_regression_on_the_encoders_noise():
    """mu = 0, logvar = 0 (whatever x1): z = eps = the coupling's x0, and the KL is 0, so the loss
    is the plain regression objective on (x0, x1) with the same flow network."""
    model = objective_piece(SPEC).network((2,), VECTORS, SPEC, train.build_network)
    last = model.encoder.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    path = build_path(SPEC)
    g = torch.Generator().manual_seed(1)
    x0, x1, t = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g), torch.rand(32, generator=g)
    loss = build_objective(SPEC, path, mse)(model, x0, x1, t)
    plain = regression({}, path, mse, None)(model.flow, x0, x1, t)
    assert torch.allclose(loss, plain, atol=1e-6)
    by_hand = ((model.flow((1 - t[:, None]) * x0 + t[:, None] * x1, t) - (x1 - x0)) ** 2).sum(1).mean()
    assert torch.allclose(loss, by_hand, atol=1e-6)


def test_loss_adds_beta_times_kl_and_gradients_reach_encoder_and_flow():
    torch.manual_seed(0)
    model = objective_piece(SPEC).network((2,), VECTORS, SPEC, train.build_network)
    path = build_path(SPEC)
    x0, x1, t = torch.randn(16, 2), torch.randn(16, 2), torch.rand(16)
    loss = build_objective(SPEC, path, mse)(model, x0, x1, t)
    mu, logvar = model.encode(x1)
    z = mu + (0.5 * logvar).exp() * x0
    flow = ((model.flow((1 - t[:, None]) * z + t[:, None] * x1, t) - (x1 - z)) ** 2).sum(1).mean()
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()
    assert torch.allclose(loss, flow + 10.0 * kl, rtol=1e-5)
    loss.backward()
    for part in (model.encoder, model.flow):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_needs_an_independent_coupling():
    with pytest.raises(ValueError, match="coupling: independent"):
        build_objective({**SPEC, "coupling": "minibatch_ot"}, build_path(SPEC), mse)


def test_save_and_load_give_the_flow_network_as_field(tmp_path):
    from flowrepro import io

    torch.manual_seed(3)
    model = train.build_model((2,), VECTORS, SPEC)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "learned.pt"
    io.save_model_file(out, {"key": "k", "dataset": "moons", "model": "learned", "shape": (2,), "spec": SPEC,
                             "settings": VECTORS, "plugins": [], "steps": 1,
                             "seeds": {0: {"state_dict": state, "losses": [], "wall_s": 0.0}}, "data_var": 1.0})
    info, fields = train.load_models(str(out))
    x, t = torch.randn(9, 2), torch.rand(9)
    with torch.no_grad():
        assert torch.equal(fields[0](x, t), model.flow(x, t))
