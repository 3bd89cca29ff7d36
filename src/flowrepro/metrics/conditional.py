"""Metrics of class-conditional samples (classifier-free guidance, :mod:`flowrepro.generative.conditioning`).

    class_accuracy = (1 / n) #{ i : argmax_k classifier(x_i)_k = i mod K },

the fraction of samples the dataset's own classifier (the one whose features give ``fid_classifier``)
assigns to the class they were asked for; sample i of a run asks for class i mod K. It rises with the
guidance scale w while FID, which also sees diversity, falls and then rises again: the trade-off
classifier-free guidance is known for (Ho & Salimans 2022, Fig. 1-2).
"""
from __future__ import annotations

import numpy as np


def class_accuracy(samples: np.ndarray, classifier_file: str, classes: int, batch_size: int = 1000) -> float:
    """Fraction of ``samples`` whose predicted class is the one asked for (row i: class i mod ``classes``)."""
    import torch

    from flowrepro.models.classifier import load_classifier

    model, _ = load_classifier(classifier_file)
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])
    wanted = torch.arange(len(x)) % classes
    return float((predicted == wanted).double().mean())
