"""Prices for the ledger on Compute Engine: spot and standard (on-demand) $/hour per machine type.

An offline table (Linux, us-central1, late 2026, machine only: attached GPUs on N1 and disks are
extra). GCE spot prices change at most about once a month and differ by region, so the backend options
``spot_prices`` / ``on_demand_prices`` override or extend it. The Cloud Billing Catalog API is not used:
it needs its own permission and paging through thousands of SKUs, for numbers that rarely change.
"""

from __future__ import annotations

#: machine type → (standard, spot) in USD per hour.
PRICES_USD_PER_HOUR: dict[str, tuple[float, float]] = {
    "e2-micro": (0.008376, 0.002513), "e2-small": (0.016751, 0.005025), "e2-medium": (0.033503, 0.010051),
    "e2-standard-2": (0.067006, 0.020102), "e2-standard-4": (0.134012, 0.040204),
    "e2-standard-8": (0.268024, 0.080407),
    "n1-standard-1": (0.0475, 0.01), "n1-standard-2": (0.095, 0.02), "n1-standard-4": (0.19, 0.04),
    "n1-standard-8": (0.38, 0.08), "n1-standard-16": (0.76, 0.16), "n1-highmem-8": (0.473212, 0.0976),
    "n2-standard-2": (0.097118, 0.0234), "n2-standard-4": (0.194236, 0.0468), "n2-standard-8": (0.388472, 0.0936),
    "n2d-standard-4": (0.168984, 0.0412), "c2-standard-4": (0.2088, 0.0503), "c3-standard-4": (0.201608, 0.0182),
    "g2-standard-4": (0.70683, 0.28273), "g2-standard-8": (0.85399, 0.3416), "g2-standard-12": (1.00115, 0.40046),
    "g2-standard-16": (1.14831, 0.45932), "g2-standard-24": (2.00229, 0.80092),
    "a2-highgpu-1g": (3.673385, 1.102016), "a2-highgpu-2g": (7.34677, 2.204031),
    "a2-ultragpu-1g": (5.0688, 1.5206), "a3-highgpu-8g": (88.25, 26.4),
}


def _price(machine_type: str, column: int, overrides: dict[str, float] | None) -> float | None:
    if overrides and machine_type in overrides:
        return float(overrides[machine_type])
    row = PRICES_USD_PER_HOUR.get(machine_type)
    return row[column] if row else None


def on_demand_price(machine_type: str, overrides: dict[str, float] | None = None) -> float | None:
    """Standard (on-demand) $/hour, or None for a machine type the table does not know."""
    return _price(machine_type, 0, overrides)


def spot_price(machine_type: str, overrides: dict[str, float] | None = None) -> float | None:
    """Spot $/hour, or None for a machine type the table does not know."""
    return _price(machine_type, 1, overrides)
