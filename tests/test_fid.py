"""FID: the Fréchet distance, the workflow's digits classifier and its cached statistics, and the
torchvision-free Inception FID (on a randomly initialised weights file made here)."""
import numpy as np
import pytest

from flowrepro import io
from flowrepro.metrics.fid import feature_statistics, fid_classifier, frechet_distance, load_reference_stats


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    """Acquire digits and run the classifier stage through the CLI, once for this module."""
    from flowrepro.cli import main
    from flowrepro.stages.acquire import make_dataset

    root = tmp_path_factory.mktemp("fid")
    data = root / "digits.npz"
    io.save_npz(data, **make_dataset("digits"))
    io.write_checksum(data)  # as acquire does: the classifier stage checks it
    out = root / "classifiers" / "digits.pt"
    assert main(["classifier", "--data", str(data), "--out", str(out), "--seed", "0"]) == 0
    return data, out, out.with_name("digits.stats.npz")


def test_frechet_distance_of_diagonal_gaussians_by_hand():
    # |mu1-mu2|^2 = 1 + 4; per axis (s1 + s2 - 2 sqrt(s1 s2)) = (sqrt s1 - sqrt s2)^2 = (1-3)^2 + (2-4)^2
    value = frechet_distance([0.0, 0.0], np.diag([1.0, 4.0]), [1.0, 2.0], np.diag([9.0, 16.0]))
    assert value == pytest.approx(13.0, rel=1e-12)


def test_frechet_distance_matches_sqrtm_and_handles_singular_covariances():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((20, 20)), rng.standard_normal((20, 20))
    s1, s2, m1, m2 = a @ a.T / 20, b @ b.T / 20, rng.standard_normal(20), rng.standard_normal(20)
    textbook = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(textbook, rel=1e-9)
    few = rng.standard_normal((5, 20))  # fewer samples than dimensions: rank-4 covariance
    mu, sigma = feature_statistics(few)
    assert frechet_distance(mu, sigma, mu, sigma) <= 1e-9 * np.trace(sigma)


def test_classifier_stage_accuracy_and_stats_round_trip(digits_classifier):
    import torch

    from flowrepro.metrics.fid import classifier_features
    from flowrepro.models.classifier import load_classifier

    data, out, stats_file = digits_classifier
    model, checkpoint = load_classifier(out)
    assert checkpoint["test_accuracy"] >= 0.9
    stats = io.load_npz(stats_file)
    test = io.load_npz(data)
    assert int(stats["n"]) == len(test["test"]) and float(stats["test_accuracy"]) == checkpoint["test_accuracy"]
    assert str(stats["classifier_sha256"]) == io.sha256_file(out)
    mu, sigma = feature_statistics(classifier_features(model, test["test"]))
    assert mu.shape == (model.arch["feature_dim"],) and sigma.shape == (mu.size, mu.size)
    np.testing.assert_allclose(stats["mu"], mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats["sigma"], sigma, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # flattened input gives the same features
        flat = model.features(torch.as_tensor(test["test"][:7].reshape(7, -1)))
        assert torch.equal(flat, model.features(torch.as_tensor(test["test"][:7])))


def test_fid_of_test_set_against_itself_is_zero_and_grows_with_noise(digits_classifier):
    data, out, stats_file = digits_classifier
    test = io.load_npz(data)["test"]
    scale = np.trace(load_reference_stats(stats_file)["sigma"])
    assert fid_classifier(test, out, stats_file) <= 1e-6 * scale
    assert fid_classifier(test.reshape(len(test), -1), out, stats_file) <= 1e-6 * scale
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(test.shape).astype(np.float32)
    values = [fid_classifier(test + std * noise, out, stats_file) for std in (0.05, 0.1, 0.2, 0.4, 0.8)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] > 1e-5 * scale  # far above the self-distance bound
    with pytest.raises(ValueError, match="NaN"):
        fid_classifier(np.full_like(test, np.nan), out, stats_file)


def test_classifier_checkpoint_round_trip(tmp_path):
    import torch

    from flowrepro.models.classifier import build_classifier, load_classifier, save_classifier

    torch.manual_seed(1)
    model = build_classifier(in_channels=1, image_size=(28, 28), num_classes=10).eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    path = tmp_path / "mnist.pt"
    save_classifier(path, model, test_accuracy=0.5)
    loaded, checkpoint = load_classifier(path)
    assert checkpoint["test_accuracy"] == 0.5 and checkpoint["arch"] == model.arch
    with torch.no_grad():
        assert torch.equal(model.features(x), loaded.features(x))
        assert torch.equal(model(x), loaded(x))


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A randomly initialised FID-Inception state dict (variance-preserving, so features are O(1))."""
    import torch

    from flowrepro.metrics.inception import build_fid_inception

    torch.manual_seed(0)
    network = build_fid_inception()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(network.state_dict(), path)
    return path


def test_fid_inception_from_a_local_weights_file(random_inception_weights):
    from flowrepro.metrics.inception import fid_inception

    rng = np.random.default_rng(0)
    images = np.tanh(rng.standard_normal((3, 1, 8, 8))).astype(np.float32)
    same = fid_inception(images, images, random_inception_weights)
    noisy = fid_inception(images + 0.5 * rng.standard_normal(images.shape).astype(np.float32), images,
                          random_inception_weights)
    assert noisy > 0 and same <= 1e-6 * noisy
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        fid_inception(images, images, random_inception_weights.with_name("missing.pth"))


def test_fid_from_features_low_rank_route_and_torchmetrics_agree():
    """The n < d route equals the d x d one, and both equal torchmetrics' FrechetInceptionDistance."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    from flowrepro.metrics.fid import fid_from_features

    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((12, 40)), 0.5 + 2 * rng.standard_normal((9, 40))
    full = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert fid_from_features(f1, f2) == pytest.approx(full, rel=1e-9)
    assert fid_from_features(f1, f1) <= 1e-9 * full

    flatten = torch.nn.Flatten()
    flatten.num_features = 40
    metric = FrechetInceptionDistance(feature=flatten)
    metric.update(torch.as_tensor(f2).reshape(9, 1, 40), real=True)
    metric.update(torch.as_tensor(f1).reshape(12, 1, 40), real=False)
    assert float(metric.compute()) == pytest.approx(full, rel=1e-6)


def test_fid_inception_network_matches_torch_fidelity(random_inception_weights):
    """Same weights file, same features as torch-fidelity's extractor (where it is importable)."""
    import torch

    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as error:  # not installed, or installed without torchvision (its __init__ needs it)
        pytest.skip(f"optional torch-fidelity not importable: {error}")
    from flowrepro.metrics.inception import load_fid_inception

    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(random_inception_weights))
    images = (torch.rand(2, 3, 28, 28) * 255).to(torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(load_fid_inception(random_inception_weights)(images), reference(images)[0])


def test_fid_command_scores_every_image_array_of_a_sample_file(digits_classifier, tmp_path, capsys):
    from flowrepro.cli import main

    data, classifier, _ = digits_classifier
    test = io.load_npz(data)["test"]
    rng = np.random.default_rng(0)
    samples = tmp_path / "samples.npz"
    io.save_npz(samples, **{"euler/uniform/steps=4/seed0": test, "euler/uniform/steps=1/seed0": test + rng.normal(0, 0.4, test.shape),
                            "trajectory_times": np.linspace(0, 1, 3)})
    assert main(["fid", "--samples", str(samples), "--classifier", str(classifier)]) == 0
    lines = dict(line.rsplit("\t", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert len(lines) == 2  # the 1-D array is not an image set
    clean, noisy = (float(lines[f"{samples}:euler/uniform/steps={k}/seed0"]) for k in (4, 1))
    assert clean < 1e-6 < 1.0 < noisy
