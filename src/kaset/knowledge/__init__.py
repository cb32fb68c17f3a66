"""Curated, source-backed crop health knowledge for Crop Guardian."""
