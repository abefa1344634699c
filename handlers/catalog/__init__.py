"""Catalogs (model zoo, presets): frozen data plus pure lookup functions, no torch."""
