"""SAM2-style losses at the model resolution: focal x20 + dice x1 + IoU-prediction MSE x1 + object-score BCE x1.

Focal: gamma 2; alpha (positive-class weight) 0.25 in SAM2, configurable (``loss.focal_alpha``, < 0 = unweighted,
our default: with alpha 0.25 short runs collapsed to all-background masks).

Logits (B, M, S/4, S/4) are bilinearly upsampled to (S, S); the padding area of the letterboxed input is excluded
from every pixel average. For a single click (M = 3 candidates) only the candidate with the lowest
``focal_w * focal + dice_w * dice`` gets the mask losses (multimask min-loss); the IoU head is supervised on all
candidates. With ``loss.multimask_all`` every other prompt (several clicks, a box) supervises token 0 and,
in addition, the min-loss candidate among tokens 1-3. With ``loss.iou_rank`` > 0 the IoU head also gets a pairwise
ranking term among the candidates of one prompt (the pick is the highest predicted IoU, which the MSE alone does
not train: it fits each candidate's IoU, not which candidate is best).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_ultratinysam.training.config import LossConfig


def upsample(logits: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def focal_per_mask(logits, gt, valid, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """(B, M, S, S) logits, (B, 1, S, S) float gt, (B, 1, S, S) float valid -> (B, M) mean focal over valid px."""
    gt = gt.expand_as(logits)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    p_t = p * gt + (1 - p) * (1 - gt)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * gt + (1 - alpha) * (1 - gt)) * loss
    return (loss * valid).sum((-1, -2)) / valid.sum((-1, -2)).clamp_min(1)


def dice_per_mask(logits, gt, valid, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits) * valid
    g = gt * valid
    inter = (p * g).sum((-1, -2))
    return 1 - (2 * inter + eps) / (p.sum((-1, -2)) + g.sum((-1, -2)) + eps)


def actual_iou(logits, gt, valid) -> torch.Tensor:
    """IoU of (logits > 0) with gt inside the valid area: (B, M), no gradient."""
    with torch.no_grad():
        pred = (logits > 0).float() * valid
        g = (gt * valid).expand_as(pred)
        inter = (pred * g).sum((-1, -2))
        union = pred.sum((-1, -2)) + g.sum((-1, -2)) - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


RANK_TAU = 0.05  # temperature of the ranking term: a wrong order by 0.05 predicted IoU costs softplus(1)


def rank_loss(iou_pred: torch.Tensor, act: torch.Tensor, tau: float = RANK_TAU) -> torch.Tensor:
    """Pairwise ranking loss of predicted IoUs (B, M) against actual IoUs (B, M) -> (B,).

    Every pair (i, j) with act_i > act_j costs (act_i - act_j) * softplus((pred_j - pred_i) / tau), averaged over
    the M (M - 1) / 2 pairs: a wrong order costs in proportion to the IoU a pick by predicted IoU would lose; ties
    cost nothing. Zero for M = 1.
    """
    m = iou_pred.shape[1]
    if m < 2:
        return iou_pred.new_zeros(iou_pred.shape[0])
    w = (act[:, :, None] - act[:, None, :]).clamp_min(0)
    cost = F.softplus((iou_pred[:, None, :] - iou_pred[:, :, None]) / tau)
    return (w * cost).sum((1, 2)) / (m * (m - 1) / 2)


def _candidate_terms(logits: torch.Tensor, iou_pred: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
                     cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Per-sample terms of one group of candidate masks (B, M, s, s): the min-loss candidate's focal and dice,
    the IoU head's squared error over the M candidates and its ranking term, the actual IoUs (B, M) and the
    upsampled logits."""
    lg = upsample(logits.float(), g.shape[-1])
    ip = iou_pred.float()
    foc = focal_per_mask(lg, g, v, cfg.focal_alpha, cfg.focal_gamma)
    dic = dice_per_mask(lg, g, v)
    act = actual_iou(lg, g, v)
    best = (cfg.focal * foc + cfg.dice * dic).argmin(1, keepdim=True)
    return {"focal": foc.gather(1, best)[:, 0], "dice": dic.gather(1, best)[:, 0],
            "iou_se": ((ip - act) ** 2).mean(1), "rank": rank_loss(ip, act), "act": act, "ip": ip, "lg": lg}


def sam_loss(logits: torch.Tensor, iou_pred: torch.Tensor, obj_logit: torch.Tensor | None, gt: torch.Tensor,
             valid: torch.Tensor, cfg: LossConfig, multimask: bool) -> dict[str, torch.Tensor]:
    """Loss of one decoder pass.

    logits (B, 4, s, s) all tokens; iou_pred (B, 4); obj_logit (B, 1) or None; gt, valid (B, S, S) bool.
    multimask: supervise tokens 1-3 (min-loss) for a single click, else token 0. With ``cfg.multimask_all`` a
    prompt that is not a single click supervises token 0 *and* tokens 1-3 (min-loss, IoU head on all 4), so that
    the three candidates stay usable for several clicks or a box (the paper's protocol picks among them for every
    prompt); what an interactive user gets (token 0 there) is unchanged.
    Returns dict with 'total', 'focal', 'dice', 'iou', 'obj', 'rank' (means over the batch), plus 'chosen' (B,)
    index into the 4 tokens of the mask an interactive user would get (highest predicted IoU among the supervised
    candidates), 'chosen_iou' (B,) its actual IoU and 'up' its upsampled logits; 'best' / 'up_best' the same for
    the candidate of highest actual IoU.
    """
    size = gt.shape[-1]
    cand = slice(1, 4) if multimask else slice(0, 1)
    g = gt[:, None].float()
    v = valid[:, None].float()
    main = _candidate_terms(logits[:, cand], iou_pred[:, cand], g, v, cfg)
    foc_b, dic_b, iou_se, rank = main["focal"], main["dice"], main["iou_se"], main["rank"]
    if cfg.multimask_all and not multimask:
        extra = _candidate_terms(logits[:, 1:4], iou_pred[:, 1:4], g, v, cfg)
        foc_b, dic_b = foc_b + extra["focal"], dic_b + extra["dice"]
        iou_se = (iou_se + 3 * extra["iou_se"]) / 4
        rank = extra["rank"]
    has_obj = (gt.flatten(1).any(1)).float()
    n = has_obj.sum().clamp_min(1)
    l_focal = (foc_b * has_obj).sum() / n
    l_dice = (dic_b * has_obj).sum() / n
    l_iou = (iou_se * has_obj).sum() / n
    l_rank = (rank * has_obj).sum() / n
    if obj_logit is not None:
        l_obj = F.binary_cross_entropy_with_logits(obj_logit[:, 0].float(), has_obj)
    else:
        l_obj = logits.new_zeros(())
    total = cfg.focal * l_focal + cfg.dice * l_dice + cfg.iou * l_iou + cfg.obj * l_obj + cfg.iou_rank * l_rank
    ip, act, lg = main["ip"], main["act"], main["lg"]
    pick = ip.argmax(1)
    best = act.argmax(1)
    return {"total": total, "focal": l_focal.detach(), "dice": l_dice.detach(), "iou": l_iou.detach(),
            "obj": l_obj.detach(), "rank": l_rank.detach(), "chosen": pick + cand.start,
            "chosen_iou": act.gather(1, pick[:, None])[:, 0],
            "up": lg.detach().gather(1, pick[:, None, None, None].expand(-1, 1, size, size))[:, 0],
            "best": best + cand.start,
            "up_best": lg.detach().gather(1, best[:, None, None, None].expand(-1, 1, size, size))[:, 0]}
