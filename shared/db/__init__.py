"""Data access shared by the services: models, the engine and its transactions, migrations."""
