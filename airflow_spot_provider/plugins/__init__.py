"""The provider's Airflow UI plugin: a JSON API over the ledgers and two React pages (see docs/ui.md)."""
