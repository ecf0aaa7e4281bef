"""The joint objective's permutation: speaker labels follow the SI-SNR permutation."""

import torch

from sepid.joint import output_labels, pit_si_snr_loss


def test_pit_assignment_three_sources():
    torch.manual_seed(0)
    targets = torch.randn(1, 400, 3)
    estimates = targets[:, :, [2, 0, 1]]  # output 0 = target 2, output 1 = target 0, ...
    loss, assigned = pit_si_snr_loss(targets, estimates)
    assert assigned == [[1, 2, 0]]  # target i is carried by output assigned[i]
    assert loss.item() < -50  # perfect up to the order


def test_labels_follow_the_permutation_and_swapping_references():
    torch.manual_seed(1)
    targets = torch.randn(2, 400, 2)
    estimates = targets.clone()
    estimates[1] = estimates[1][:, [1, 0]]  # second example: outputs in the other order
    labels = torch.tensor([[7, 9], [3, 5]])
    _, assigned = pit_si_snr_loss(targets, estimates)
    out = output_labels(assigned, labels)
    assert out.tolist() == [[7, 9], [5, 3]]
    # swap the reference sources and their labels: every output keeps its speaker
    _, assigned_swapped = pit_si_snr_loss(targets[:, :, [1, 0]], estimates)
    assert output_labels(assigned_swapped, labels[:, [1, 0]]).tolist() == out.tolist()
