"""Choosing what to rent on Vast.ai: the requirement, the search query, and the ranking (pure).

People describe the task, never the GPU model (ARIS F70). A Requirement carries what the task
needs (VRAM, GPU count, disk, CUDA, host reliability, a price cap, estimated hours) and becomes
one broad `search offers` query ordered by price. Offers are then ranked by estimated *total*
cost: $/h × the estimated hours (+30 % headroom), scaled by the GPU's relative FP16 speed, so a
faster card that costs more per hour can still be the cheaper run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

HEADROOM = 1.3  # ARIS: estimated hours + 30 %
DEFAULT_HOURS = 1.0  # a job without est_hours is priced as one hour
DEFAULT_VRAM_GB = 16.0  # ARIS: a 7B fp16 model; small vision models need less
BUDGET_PICK = 0.97  # ARIS: below this reliability an offer is a "budget pick"
# relative FP16 throughput, RTX 3090 = 1.0 (ARIS_SPEC §4.4 step 3)
SPEED = {"RTX 3060": 0.5, "RTX 3090": 1.0, "RTX 4090": 1.6, "RTX A5000": 0.9, "RTX A6000": 1.1,
         "L40S": 1.5, "A100 SXM4": 2.0, "A100 SXM": 2.0, "H100 SXM": 3.3}


@dataclass(frozen=True)
class Requirement:
    min_vram_gb: float = DEFAULT_VRAM_GB
    num_gpus: int = 1
    disk_gb: float = 50.0
    min_cuda: float = 12.1
    min_reliability: float = 0.95
    max_dph: float | None = None  # $/h cap, None = no cap
    est_hours: float = DEFAULT_HOURS
    min_inet_down: float = 100.0  # Mb/s: pulling a 10 GB image over less takes too long

    def query(self) -> str:
        """The `vastai search offers` query (the SDK parses it; gpu_ram is in GB here)."""
        parts = [f"gpu_ram>={_num(self.min_vram_gb)}", f"num_gpus>={self.num_gpus}",
                 f"reliability>{_num(self.min_reliability)}", f"cuda_vers>={_num(self.min_cuda)}",
                 f"disk_space>={_num(self.disk_gb)}", f"inet_down>{_num(self.min_inet_down)}"]
        if self.max_dph is not None:
            parts.append(f"dph_total<={_num(self.max_dph)}")
        return " ".join(parts)

    def with_hours(self, est_hours: float | None) -> "Requirement":
        hours = est_hours if est_hours and est_hours > 0 else self.est_hours
        return Requirement(self.min_vram_gb, self.num_gpus, self.disk_gb, self.min_cuda,
                           self.min_reliability, self.max_dph, hours, self.min_inet_down)


@dataclass(frozen=True)
class Offer:
    offer_id: int
    gpu_name: str
    num_gpus: int
    gpu_ram_gb: float
    dph: float  # dph_total: $/h including the storage asked for
    reliability: float
    cuda: float

    @staticmethod
    def from_api(raw: Mapping[str, Any]) -> "Offer | None":
        """An offer dict as the API returns it; None when it lacks the fields we rank on."""
        try:
            dph = float(raw["dph_total"])
            offer = Offer(int(raw["id"]), str(raw.get("gpu_name") or "?"), int(raw.get("num_gpus") or 1),
                          float(raw.get("gpu_ram") or 0) / 1000.0, dph,
                          float(raw.get("reliability2", raw.get("reliability", 0)) or 0),
                          float(raw.get("cuda_max_good") or 0))
        except (KeyError, TypeError, ValueError):
            return None
        return offer if math.isfinite(dph) and dph >= 0 else None

    @property
    def budget_pick(self) -> bool:
        return self.reliability < BUDGET_PICK


@dataclass(frozen=True)
class Option:
    offer: Offer
    hours: float  # estimated hours on this GPU, headroom included
    total_usd: float


def speed(gpu_name: str) -> float:
    return SPEED.get(gpu_name.replace("_", " "), 1.0)


def estimate(offer: Offer, req: Requirement) -> Option:
    hours = req.est_hours * HEADROOM / speed(offer.gpu_name)
    return Option(offer, hours, offer.dph * hours)


def rank(raw_offers: Iterable[Mapping[str, Any]], req: Requirement) -> list[Option]:
    """Offers that meet the requirement, cheapest estimated total first (ties: more reliable)."""
    options = []
    for raw in raw_offers:
        offer = Offer.from_api(raw)
        if offer is None or not meets(offer, req):
            continue
        options.append(estimate(offer, req))
    return sorted(options, key=lambda o: (o.total_usd, -o.offer.reliability, o.offer.offer_id))


def meets(offer: Offer, req: Requirement) -> bool:
    """Checked again here: the query is the server's filter, this is ours."""
    if req.max_dph is not None and offer.dph > req.max_dph:
        return False
    return offer.num_gpus >= req.num_gpus and offer.reliability >= req.min_reliability \
        and (offer.gpu_ram_gb == 0 or offer.gpu_ram_gb >= req.min_vram_gb)


def describe(options: list[Option], limit: int = 3) -> str:
    """The ARIS options table, for the log and `expbridge status`."""
    lines = ["# | GPU | VRAM | $/hr | Est. Hours | Est. Total | Reliability | Offer ID"]
    for i, o in enumerate(options[:limit], 1):
        flag = " (budget pick)" if o.offer.budget_pick else ""
        lines.append(f"{i} | {o.offer.gpu_name} x{o.offer.num_gpus} | {o.offer.gpu_ram_gb:.0f} GB | "
                     f"${o.offer.dph:.3f} | {o.hours:.2f} | ${o.total_usd:.2f} | "
                     f"{o.offer.reliability:.3f}{flag} | {o.offer.offer_id}")
    return "\n".join(lines)


def no_offer_reason(req: Requirement) -> str:
    hint = " or multi-GPU/quantization" if req.min_vram_gb > 80 else ""
    cap = f" at <= ${req.max_dph}/h" if req.max_dph is not None else ""
    return (f"no Vast.ai offer with {req.num_gpus}x >= {req.min_vram_gb:g} GB VRAM, CUDA >= "
            f"{req.min_cuda:g}, reliability > {req.min_reliability:g}{cap}; raise max_dph, lower "
            f"min_vram_gb{hint}, or wait for capacity")


def _num(x: float) -> str:
    return f"{x:g}"
