"""The update rules' losses as plain tensor functions (no model, no data handling).

DPO and KTO are ported from their papers, in the form TRL implements them
(``trl.DPOTrainer.dpo_loss`` with ``loss_type="sigmoid"``, ``trl.KTOTrainer.kto_loss``).
TRL itself is not a dependency: its trainers own the data pipeline and the
optimisation loop (a ``datasets.Dataset`` per call, a fresh ``Trainer``), which an
online update of a few steps per feedback batch cannot afford; the formulas are a
few lines, reproduced here with the references.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each label token and a mask of the scored positions.

    ``logits``: (B, T, V) from a forward on ``input_ids``; ``labels``: (B, T) with -100
    where no loss applies (prompt, padding). Returns (B, T-1) tensors, shifted so that
    position t scores token t+1.
    """
    shifted_logits = logits[:, :-1, :]
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != -100
    safe = shifted_labels.clamp(min=0)
    logps = torch.log_softmax(shifted_logits.float(), dim=-1)
    picked = logps.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(sum of the completion's token log-probs, number of completion tokens) per row."""
    picked, mask = token_logps(logits, labels)
    return picked.sum(-1), mask.sum(-1)


def sft_loss(logp_sums: Tensor, counts: Tensor) -> Tensor:
    """Token-mean negative log-likelihood over all rows' completion tokens."""
    return -logp_sums.sum() / counts.sum().clamp(min=1)


def choice_loss(target: Tensor, candidates: Tensor) -> Tensor:
    """Cross-entropy of one decision: -log softmax([target, *candidates])[0].

    ``target``: the summed log-prob of the chosen answer (a scalar); ``candidates``: those
    of the answers it was chosen over (K,). The decision, whatever the answers' lengths:
    a label of two tokens and an option line of six compete on their whole sequences.
    """
    scores = torch.cat([target.reshape(1), candidates])
    return -torch.log_softmax(scores, dim=0)[0]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float,
) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * (margin_policy - margin_ref)).

    Inputs are summed sequence log-probs per pair. Matches TRL's ``sigmoid`` loss with
    ``label_smoothing=0``.
    """
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return -F.logsigmoid(beta * logits).mean()


def kto_loss(
    policy: Tensor,
    reference: Tensor,
    desirable: Tensor,
    kl: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 8) for unpaired good/bad answers.

    ``policy``/``reference``: summed log-probs per answer; ``desirable``: bool per row;
    ``kl``: the detached, clamped-at-0 estimate of KL(policy || reference) (the
    reference point z0). As ``trl.KTOTrainer.kto_loss``:
    desirable -> 1 - sigmoid(beta (r - z0)), undesirable -> 1 - sigmoid(beta (z0 - r)).
    """
    rewards = policy - reference
    z0 = kl.detach().clamp(min=0)
    good = 1 - torch.sigmoid(beta * (rewards - z0))
    bad = 1 - torch.sigmoid(beta * (z0 - rewards))
    weights = torch.where(desirable, desirable_weight, undesirable_weight)
    losses = torch.where(desirable, good, bad) * weights
    return losses.sum() / weights.sum()


def kl_to_reference(logits: Tensor, reference_logps: Tensor, mask: Tensor) -> Tensor:
    """Token-mean KL(reference || policy) over the masked positions.

    ``logits``: (B, T-1, V) policy logits already aligned with ``reference_logps``
    (full log-softmax of the reference, same shape); ``mask``: (B, T-1) bool.
    """
    policy_logps = torch.log_softmax(logits.float(), dim=-1)
    per_token = (reference_logps.exp() * (reference_logps - policy_logps)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def l2_to(parameters: list[Tensor], anchors: list[Tensor]) -> Tensor:
    """Squared distance to anchor weights (a proximal term toward the previous version)."""
    total = parameters[0].new_zeros(())
    for parameter, anchor in zip(parameters, anchors, strict=True):
        total = total + (parameter - anchor).pow(2).sum()
    return total
