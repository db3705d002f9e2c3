"""Prices for the ledger: spot from the EC2 price history at launch, on-demand from a table.

The table is an offline default (Linux, us-east-1, $/hour, late 2026); prices differ by region, so
``on_demand_prices`` in the backend options overrides or extends it. The Pricing API is not used:
it lives in two regions only, needs its own permission and is slow, for a number that rarely changes.
"""

from __future__ import annotations

ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "t3.micro": 0.0104, "t3.small": 0.0208, "t3.medium": 0.0416, "t3.large": 0.0832,
    "m5.large": 0.096, "m5.xlarge": 0.192, "m5.2xlarge": 0.384, "m6i.large": 0.096, "m6i.xlarge": 0.192,
    "m7i.large": 0.1008, "m7i.xlarge": 0.2016, "c5.xlarge": 0.17, "c5.2xlarge": 0.34, "c6i.xlarge": 0.17,
    "c7i.xlarge": 0.1785, "r5.xlarge": 0.252, "g4dn.xlarge": 0.526, "g4dn.2xlarge": 0.752,
    "g5.xlarge": 1.006, "g5.2xlarge": 1.212, "g5.12xlarge": 5.672, "g6.xlarge": 0.8048, "g6.2xlarge": 0.9776,
    "g6e.xlarge": 1.861, "p3.2xlarge": 3.06, "p4d.24xlarge": 32.7726, "p5.48xlarge": 98.32,
}


def on_demand_price(instance_type: str, overrides: dict[str, float] | None = None) -> float | None:
    table = {**ON_DEMAND_USD_PER_HOUR, **(overrides or {})}
    return table.get(instance_type)
