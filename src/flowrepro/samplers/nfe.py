"""An honest NFE counter: wrap the model, count the calls actually made."""
from __future__ import annotations


class NFECounter:
    """Callable wrapper around ``model(x, t)`` that counts every evaluation.

    A batched call counts once: NFE is the number of sequential network evaluations per
    sample, which is what a sampler's cost means in the papers.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)

    def epsilon(self, x, t):
        self.calls += 1
        return self.model.epsilon(x, t)

    def denoise(self, x, sigma):
        """EDM / PFGM++ denoiser D(x; sigma): one network call."""
        self.calls += 1
        return self.model.denoise(x, sigma)

    def velocity_and_epsilon(self, x, t):
        """One network call that gives both (the conversion costs no evaluation)."""
        self.calls += 1
        return self.model.velocity_and_epsilon(x, t)

    def initial_velocity(self, x, t=None):
        """CAF's v0 = v_phi(x, 0): one network call."""
        self.calls += 1
        return self.model.initial_velocity(x, t)

    def acceleration(self, x, t, v0):
        """CAF's a_theta(x, t, v0): one network call."""
        self.calls += 1
        return self.model.acceleration(x, t, v0)

    def reset(self) -> int:
        calls, self.calls = self.calls, 0
        return calls
