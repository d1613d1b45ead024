"""A validation part held out of the train split, and the best epoch by it: what keeps finetuning from hurting.

:func:`split_train` sets aside :data:`VALIDATION_FRACTION` of the train split (a shuffle seeded by the constant
:data:`VALIDATION_SEED`, so every finetuning seed and recipe is judged on the same images); finetuning learns from
the rest. :class:`BestEpoch` scores the model on the validation part at epoch 0 (the calibrated start, before any
step) and after every epoch, and keeps a copy of the weights and step sizes of the best one: the highest validation
top-1, ties to the lower validation loss, then to the earlier epoch. Restoring it can only return weights that score
at least as well on validation as the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from mpq_rl.errors import UserError
from mpq_rl.quantization.qat import LsqAttachment
from mpq_rl.search.metrics import top1
from mpq_rl.workloads.data import Batches, make_batches
from mpq_rl.workloads.model_io import model_outputs

VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 0
"""Seeds which train samples are held out; independent of the finetuning seed on purpose."""


def split_train(train: Dataset, fraction: float = VALIDATION_FRACTION) -> tuple[Subset, Subset]:
    """``(learn, validation)``: ``train`` less a seeded ``fraction`` of it, and that fraction."""
    size = len(train)
    held = round(size * fraction)
    if not 0 < held < size:
        raise UserError(
            f"finetuning holds out {fraction:.0%} of the train split for validation, which leaves no samples on "
            f"one side of {size}: use a larger train split"
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(VALIDATION_SEED)).tolist()
    return Subset(train, sorted(order[held:])), Subset(train, sorted(order[:held]))


@dataclass(frozen=True)
class EpochScore:
    """Validation top-1 and mean cross-entropy after ``epoch`` epochs (0: the calibrated start)."""

    epoch: int
    top1: float
    loss: float

    def better_than(self, other: EpochScore) -> bool:
        return (self.top1, -self.loss) > (other.top1, -other.loss)


def validation_score(model: nn.Module, batches: Batches, epoch: int) -> EpochScore:
    """The model's validation score as it runs now (eval mode: the quantizers compute what the simulator does)."""
    with torch.no_grad():
        outputs = model_outputs(model, batches)
    targets = batches.targets()
    loss = F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1).to(outputs.device))
    return EpochScore(epoch, top1(outputs, targets), float(loss))


class BestEpoch:
    """The validation score of every epoch offered, and a copy of the best one's weights and step sizes."""

    def __init__(self, model: nn.Module, attachment: LsqAttachment, validation: Dataset, batch_size: int) -> None:
        self.model, self.attachment = model, attachment
        self.batches = make_batches(validation, batch_size).to(next(model.parameters()).device)
        self.scores: list[EpochScore] = []
        self.best: EpochScore | None = None
        self._state: dict[str, torch.Tensor] = {}
        self._step_sizes: list[torch.Tensor] = []

    def offer(self, epoch: int) -> EpochScore:
        """Score the model now; keep a copy if it is the best so far."""
        score = validation_score(self.model, self.batches, epoch)
        self.scores.append(score)
        if self.best is None or score.better_than(self.best):
            self.best = score
            self._state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._step_sizes = [s.detach().clone() for s in self.attachment.step_sizes()]
        return score

    def restore(self) -> None:
        """Put the best epoch's weights and step sizes back into the model."""
        self.model.load_state_dict(self._state)
        with torch.no_grad():
            for size, kept in zip(self.attachment.step_sizes(), self._step_sizes, strict=True):
                size.copy_(kept)
