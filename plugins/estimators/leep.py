"""LEEP and NCE: transferability from the source classifier's predictions on target data.

Both need the classifier the weights were trained with (ImageNet's 1000 classes for the
packaged MobileNetV2, the source dataset's classes for ``source:DATASET`` weights). The
caller passes its softmax outputs ``theta(x_i)`` on the target images.
"""
from __future__ import annotations

import numpy as np


def empirical_joint(source_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``P^(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z``: the empirical joint of target label
    ``y`` and source ("dummy") label ``z`` (Nguyen et al. 2020, the second step of LEEP).

    Rows are target classes, columns source classes. Hard source labels (NCE) are the
    special case of one-hot ``theta``.
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    onehot = np.zeros((len(y), num_classes))
    onehot[np.arange(len(y)), y] = 1.0
    return onehot.T @ theta / len(y)


def leep(source_probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """LEEP, the log expected empirical prediction (Nguyen, Hassner, Seeger and Archambeau,
    "LEEP: A New Measure to Evaluate Transferability of Learned Representations", ICML
    2020; their definition of LEEP):

        T(theta, D) = 1/n sum_i log( sum_z P^(y_i | z) theta(x_i)_z ),

    with ``P^(y | z) = P^(y, z) / P^(z)`` from :func:`empirical_joint` and
    ``P^(z) = sum_y P^(y, z)``. A value <= 0; higher is better.

    Args:
        source_probs: ``(n, Z)`` source-classifier probabilities on the target images.
        labels: ``(n,)`` target labels in ``0 .. num_classes - 1``.
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    k = int(num_classes or (y.max() + 1))
    joint = empirical_joint(theta, y, k)
    pz = joint.sum(0)
    cond = np.divide(joint, pz[None, :], out=np.zeros_like(joint), where=pz[None, :] > 0)
    eep = np.einsum("iz,iz->i", theta, cond[y])  # sum_z P^(y_i|z) theta(x_i)_z
    return float(np.mean(np.log(eep)))


def nce(source_labels: np.ndarray, labels: np.ndarray, num_source: int | None = None,
        num_classes: int | None = None) -> float:
    """NCE, the negative conditional entropy ``-H(Y | Z)`` of the target labels given the
    source labels (Tran, Nguyen and Hassner, "Transferability and Hardness of Supervised
    Classification Tasks", ICCV 2019; their conditional entropy of the target labels given the source labels):

        H(Y | Z) = - sum_{y, z} P^(y, z) log P^(y | z),
        P^(y, z) = #{i : y_i = y, z_i = z} / n.

    Here, as in LEEP's comparison, ``z_i = argmax_z theta(x_i)_z``: the source classifier's
    hard prediction stands in for the source label. A value <= 0; higher is better.
    """
    z = np.asarray(source_labels).astype(int)
    y = np.asarray(labels).astype(int)
    nz = int(num_source or (z.max() + 1))
    k = int(num_classes or (y.max() + 1))
    joint = np.zeros((k, nz))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    pz = joint.sum(0)
    mask = joint > 0
    cond = np.divide(joint, pz[None, :], out=np.ones_like(joint), where=pz[None, :] > 0)
    return float(np.sum(joint[mask] * np.log(cond[mask])))
